"""What a piece of work cost the machine: wall time, CPU time and resident memory, measured.

``ResourceMeter`` wraps one unit of work (a shard) in the thread that runs it:

- wall: epoch seconds at start and end (``time.time()``), so intervals of different shards —
  in other threads, processes or containers of one machine — can be merged into a union;
- CPU: the running thread's own CPU time (``time.thread_time()``), plus the threads the work
  started and names: threads that appear during a :meth:`ResourceMeter.threads_started` block
  (an interpreter's worker threads when ``threads > 1``, created with it) are read from
  ``/proc/self/task/<tid>/stat`` at exit (utime + stime, clock ticks), and a thread that ends
  earlier reports its own ``time.thread_time()`` through :meth:`ResourceMeter.add_cpu` (the decode
  prefetch thread). Only named threads count, so shards running side by side in one process
  (local execution) do not count each other's threads or Prefect's; a thread is claimed by one
  meter only. TensorFlow (a SavedModel, Flex ops) computes on process-wide thread pools no
  meter can attribute: for such work ``cpu_s`` is None unless the meter is ``whole_process``
  (the work is alone in its process, as a shard flow run is): then it is the process's CPU time;
- memory: the process's resident set size (``VmRSS``) sampled every ``interval_s`` by a daemon
  thread; the peak of the samples (and of ``VmRSS`` at start and stop). It is the *process's*
  memory: in local execution every shard of the flow shares it.

``StageMeter`` wraps a run's whole inference stage (process CPU, RAPL energy, shared inputs) and
``StageClock`` times its stages; ``run_stages`` and ``inference_summary`` make report.json's
``stages`` and each variant's ``inference`` from them.
"""
from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from tasks.run.energy import rapl_delta_joules, read_rapl
from tasks.run.prefetch import SHARED

MB = 1_000_000
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_CLAIMED: set[int] = set()  # thread ids some meter already counts (thread ids are reused only after exit)
_CLAIM_LOCK = threading.Lock()


@dataclass(frozen=True)
class Usage:
    """One measured piece of work. ``started``/``ended``: epoch seconds; ``cpu_s``: CPU seconds
    (user + system) of its threads since the meter's last :meth:`ResourceMeter.restart_cpu` (None:
    not attributable); ``peak_rss_mb``: MB (10^6 bytes) of
    the process at its peak."""

    started: float
    ended: float
    cpu_s: float | None
    peak_rss_mb: float

    @property
    def wall_s(self) -> float:
        return self.ended - self.started


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of process ``pid`` (this one by default) now, bytes (0 where /proc is absent or it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _thread_ids() -> set[int]:
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _thread_cpu_s(tid: int) -> float:
    """CPU seconds of thread ``tid`` of this process (0 once it has exited)."""
    try:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # utime, stime: fields 14 and 15 of stat


class ResourceMeter:
    """Context manager measuring the work done inside it; ``usage`` holds the result after exit.

    Threads claimed with :meth:`threads_started` must still run at exit to be counted; a helper
    thread that ends before reports its own CPU time (``time.thread_time()`` at its end) with
    :meth:`add_cpu`.
    """

    def __init__(self, whole_process: bool = False, interval_s: float = 0.025):
        self.whole_process = whole_process
        self.attributable = True  # set False when the work ran on threads no meter can name
        self.interval_s = interval_s
        self.usage: Usage | None = None
        self._extra_cpu_s = 0.0
        self._threads: dict[int, float] = {}  # claimed thread id -> its CPU seconds when counting (re)started
        self._stop = threading.Event()

    def add_cpu(self, seconds: float) -> None:
        self._extra_cpu_s += seconds

    @contextlib.contextmanager
    def threads_started(self) -> Iterator[None]:
        """Claim, for this meter, the threads of this process that start during the block."""
        before = _thread_ids()
        try:
            yield
        finally:
            with _CLAIM_LOCK:
                current = _thread_ids()
                _CLAIMED.intersection_update(current)  # exited threads' ids may be reused
                new = current - before - _CLAIMED - {self._sampler.native_id}
                _CLAIMED.update(new)
            self._threads.update((tid, _thread_cpu_s(tid)) for tid in new)

    def restart_cpu(self) -> None:
        """Count CPU from now on (e.g. after loading the model: a once-per-process cost, such as
        importing TensorFlow, is not a cost per image); wall time and memory keep counting."""
        self._cpu_before = time.process_time() if self.whole_process else time.thread_time()
        self._threads = {tid: _thread_cpu_s(tid) for tid in self._threads}
        self._extra_cpu_s = 0.0

    def __enter__(self) -> Self:
        self.started = time.time()
        self._cpu_before = time.process_time() if self.whole_process else time.thread_time()
        self._peak = rss_bytes()
        self._sampler = threading.Thread(target=self._sample, name="quantbench-rss-sampler", daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sampler.join()
        if self.whole_process:
            cpu_s = time.process_time() - self._cpu_before
        elif self.attributable:
            cpu_s = (time.thread_time() - self._cpu_before + self._extra_cpu_s
                     + sum(_thread_cpu_s(tid) - start for tid, start in self._threads.items()))
        else:
            cpu_s = None
        self.usage = Usage(self.started, time.time(), None if cpu_s is None else round(cpu_s, 4),
                           round(max(self._peak, rss_bytes()) / MB, 1))


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``[start, end]`` intervals (seconds): overlapping time counts once."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def process_started() -> float | None:
    """When this process started, epoch seconds (Linux /proc; None elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot + ticks / _TICKS_PER_S


class StageClock:
    """Wall seconds per named stage of a run; a stage entered several times accumulates."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)


class StageMeter:
    """Context manager over a run's inference stage: the process's CPU seconds (every shard thread
    in local execution, plus Prefect's own), the CPU packages' energy by RAPL when ``rapl`` and the
    counters are readable here (J, else None), and the images prepared for shards in this process
    (``decoded``) or taken from another variant's task of the same shard (``shared``)."""

    def __init__(self, rapl: bool = True):
        self.rapl = rapl
        self.process_cpu_s = 0.0
        self.package_joules: float | None = None
        self.decoded = self.shared = 0

    def __enter__(self) -> Self:
        self._cpu, self._rapl, self._counts = time.process_time(), read_rapl() if self.rapl else None, (SHARED.misses, SHARED.hits)
        return self

    def __exit__(self, *exc) -> None:
        self.process_cpu_s = time.process_time() - self._cpu
        after = read_rapl() if self._rapl else None
        self.package_joules = rapl_delta_joules(self._rapl, after) if after else None
        self.decoded, self.shared = SHARED.misses - self._counts[0], SHARED.hits - self._counts[1]


def run_stages(clock: StageClock, flow_started: float, outputs: list, inference: StageMeter, scoring: dict | None = None) -> dict:
    """report.json's ``stages``: wall seconds by stage (``startup``: process start → the flow's
    first line — imports and, from the CLI, Prefect's ephemeral server; the process's age when the
    flow is called in a long-lived one), the first computed shard's start after process start, the
    process CPU seconds while shards ran (local execution: every shard thread plus Prefect's own;
    deployment: Prefect's own only, shards ran elsewhere) and ``decoded_images`` (see
    :class:`StageMeter`), ``scoring``: each variant's scoring process (``wall_s``, ``peak_rss_mb``:
    :mod:`tasks.score.scoring`) and ``flow_peak_rss_mb``: this process's own largest resident set so
    far (MB). Publishing the report (write, artifacts, page) comes after."""
    started = process_started()
    computed = [o.usage["started"] for o in outputs if o.usage and not o.reused]
    return {
        "wall_s": {"startup": round(flow_started - started, 3) if started else None, **clock.seconds},
        "first_shard_after_process_start_s": round(min(computed) - started, 3) if started and computed else None,
        "inference_process_cpu_s": round(inference.process_cpu_s, 3),
        "decoded_images": {"shared": inference.shared, "decoded": inference.decoded},
        "scoring": scoring or {},
        "flow_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
    }


def inference_summary(outputs: list) -> dict:
    """How fast one variant's shards ran (``tasks.run.inference.ShardOutput`` with their stored usage).

    ``wall_s``: the union of the shards' [start, end] intervals, seconds — time during which at
    least one of this variant's shards ran; other variants' shards may have run in the same
    seconds on the same cores, so variants' ``images_per_s`` are not additive. ``images_per_s``:
    images inferred over ``wall_s``. ``cpu_s``: the shards' CPU seconds (``Usage.cpu_s``; None when
    one shard's is unknown: TensorFlow's threads in a shared process).
    ``peak_rss_mb``: the largest resident set of a process while running one of its shards.
    ``load_s``: mean model load per shard. Reused shards count with the usage stored by the run
    that computed them (``shards_reused`` says how many); outputs stored without usage are left out.
    """
    measured = [o for o in outputs if o.usage]
    summary = {"shards": len(outputs), "shards_reused": sum(o.reused for o in outputs), "shards_measured": len(measured)}
    if not measured:
        return {**summary, "images": 0, "wall_s": None, "images_per_s": None, "cpu_s": None, "cpu_s_per_image": None,
                "peak_rss_mb": None, "load_s": None}
    images = sum(o.images_done for o in measured)
    wall_s = union_seconds([(o.usage["started"], o.usage["ended"]) for o in measured])
    cpu_s = None if any(o.usage["cpu_s"] is None for o in measured) else sum(o.usage["cpu_s"] for o in measured)
    return {
        **summary,
        "images": images,
        "wall_s": round(wall_s, 3),
        "images_per_s": round(images / wall_s, 3) if wall_s > 0 else None,
        "cpu_s": None if cpu_s is None else round(cpu_s, 3),
        "cpu_s_per_image": round(cpu_s / images, 5) if cpu_s is not None and images else None,
        "peak_rss_mb": max(o.usage["peak_rss_mb"] for o in measured),
        "load_s": round(sum(o.usage["load_s"] for o in measured) / len(measured), 4),
    }
