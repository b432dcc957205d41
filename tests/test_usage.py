"""What a shard cost, measured (tasks.run.usage): wall intervals, CPU of the shard's own threads only,
the process's peak resident memory."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tasks.run.usage import ResourceMeter, StageClock, inference_summary, union_seconds


def burn(seconds: float) -> None:
    """Keep one CPU busy for about ``seconds`` of CPU time (not wall time)."""
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        sum(range(10_000))


def test_union_counts_overlapping_time_once():
    assert union_seconds([]) == 0
    assert union_seconds([(0, 2), (1, 3), (5, 6)]) == 4
    assert union_seconds([(5, 6), (0, 10), (2, 3)]) == 10
    assert union_seconds([(0, 1), (1, 2)]) == 2


def test_cpu_counts_the_work_and_the_threads_it_started_not_its_neighbours():
    stop, burnt = threading.Event(), threading.Semaphore(0)

    def helper_loop():
        burn(0.3)
        burnt.release()
        stop.wait()  # still alive at the meter's exit, as an interpreter's worker threads are

    neighbour = threading.Thread(target=helper_loop)  # started outside the meter's claim: another shard's
    with ResourceMeter() as meter:
        neighbour.start()
        with meter.threads_started():
            own_helper = threading.Thread(target=helper_loop)
            own_helper.start()
        burn(0.3)
        assert burnt.acquire(timeout=60) and burnt.acquire(timeout=60)  # both helpers have burnt their 0.3 s
    stop.set()
    own_helper.join()
    neighbour.join()
    usage = meter.usage
    assert 0.55 <= usage.cpu_s <= 0.8, usage  # own 0.3 + own helper 0.3, not the neighbour's 0.3
    assert usage.wall_s >= 0.3 and usage.ended > usage.started


def test_a_helper_thread_reports_its_own_cpu_and_work_on_unnamed_pools_is_unknown():
    with ResourceMeter() as meter:
        meter.add_cpu(1.5)
    assert 1.5 <= meter.usage.cpu_s < 1.6
    with ResourceMeter() as meter:
        burn(0.1)
        meter.attributable = False  # e.g. TensorFlow's process-wide pools did the work
    assert meter.usage.cpu_s is None


def test_cpu_restarted_after_the_model_load_leaves_the_load_out():
    with ResourceMeter() as meter:
        burn(0.4)  # "loading the model"
        meter.restart_cpu()
        burn(0.2)
    assert 0.19 <= meter.usage.cpu_s < 0.35 and meter.usage.wall_s >= 0.6


def test_whole_process_counts_every_thread():
    with ResourceMeter(whole_process=True) as meter:
        other = threading.Thread(target=burn, args=(0.3,))
        other.start()
        burn(0.2)
        other.join()
    assert meter.usage.cpu_s >= 0.45


def test_peak_rss_sees_memory_held_only_for_a_moment():
    with ResourceMeter(interval_s=0.01) as meter:
        block = np.ones(300_000_000, dtype=np.uint8)  # 300 MB, touched
        time.sleep(0.1)
        del block
    with ResourceMeter() as quiet:
        time.sleep(0.05)
    assert meter.usage.peak_rss_mb >= quiet.usage.peak_rss_mb + 250


def test_stage_clock_accumulates_a_stage_entered_twice():
    clock = StageClock()
    for _ in range(2):
        with clock("latency"):
            time.sleep(0.05)
    with pytest.raises(RuntimeError), clock("evaluation"):
        raise RuntimeError
    assert clock.seconds["latency"] >= 0.1 and set(clock.seconds) == {"latency", "evaluation"}


class Output:
    def __init__(self, images: int, started: float, ended: float, cpu_s: float | None, reused: bool = False, usage: bool = True):
        self.images_done, self.reused = images, reused
        self.usage = {"started": started, "ended": ended, "cpu_s": cpu_s, "peak_rss_mb": 100.0 + images, "load_s": 0.5} if usage else None


def test_summary_images_over_the_union_of_shard_intervals():
    summary = inference_summary([Output(10, 100.0, 102.0, 1.0), Output(20, 101.0, 105.0, 3.0), Output(5, 0.0, 1.0, 0.5, reused=True)])
    assert summary["shards"] == 3 and summary["shards_reused"] == 1 and summary["images"] == 35
    assert summary["wall_s"] == 6.0 and summary["images_per_s"] == pytest.approx(35 / 6, abs=1e-3)
    assert summary["cpu_s"] == 4.5 and summary["cpu_s_per_image"] == pytest.approx(4.5 / 35, abs=1e-5)
    assert summary["peak_rss_mb"] == 120.0 and summary["load_s"] == 0.5
    assert inference_summary([Output(10, 0, 1, None), Output(10, 1, 2, 1.0)])["cpu_s_per_image"] is None
    old = inference_summary([Output(10, 0, 1, 1.0, reused=True, usage=False)])
    assert old["shards_measured"] == 0 and old["images_per_s"] is None
