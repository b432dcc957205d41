"""Live progress: the Prefect progress artifact, a bar on a terminal, plain lines elsewhere."""
from __future__ import annotations

import io
import logging

from prefect.artifacts import Artifact

from tasks.data.dataset import ImageRecord, Shard
from tasks.run.inference import ShardJob, ShardOutput
from tasks.run.progress import ShardProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _jobs() -> list[ShardJob]:
    shards = [Shard(k, tuple(ImageRecord(10 * k + i, f"{k}-{i}.jpg", 64, 48) for i in range(5))) for k in range(2)]
    return [ShardJob(v, f"m/{v}.tflite", "m", "a", "images", shard, "store") for v in ("float32", "int8") for shard in shards]


def _output(job: ShardJob, reused: bool) -> ShardOutput:
    return ShardOutput(job.variant, job.shard.index, "key", len(job.shard.images), 0, 3, {}, 0.1, reused)


def test_a_terminal_gets_a_bar_and_the_ui_a_progress_artifact(prefect_backend, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(logging.getLogger("prefect"), "level", logging.INFO)
    jobs = _jobs()
    progress = ShardProgress(jobs, logging.getLogger("test"))
    for n, job in enumerate(jobs):
        progress.update(job, _output(job, reused=n == 0))
    drawn = terminal.getvalue().split("\r")
    assert drawn[1].startswith("inference [######") and "1/4 shards (float32 1/2, int8 0/2)" in drawn[1]
    assert drawn[-1].startswith("inference [########################] 4/4 shards (float32 2/2, int8 2/2)") and drawn[-1].endswith("\n")
    artifact = Artifact.get("quantbench-progress")
    assert artifact.type == "progress" and float(artifact.data) == 100.0 and "4/4 shards" in artifact.description


def test_elsewhere_plain_lines_with_rate_and_eta(prefect_backend, caplog):
    jobs = _jobs()
    progress = ShardProgress(jobs, logging.getLogger("quantbench-test"), interval_s=0)
    with caplog.at_level(logging.INFO, logger="quantbench-test"):
        progress.update(jobs[0], _output(jobs[0], reused=False))
        progress.update(jobs[1], _output(jobs[1], reused=False))
    first, second = (r.getMessage() for r in caplog.records)
    assert first.startswith("progress: 1/4 shards (float32 1/2, int8 0/2), ") and "images/s, ETA " in first
    assert second.startswith("progress: 2/4 shards (float32 2/2, int8 0/2)")
