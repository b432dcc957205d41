"""Live progress of the inference stage: shards done / total per variant, images/s and ETA.

Shown three ways while shards finish, in local and deployment execution alike: a Prefect progress
artifact ``quantbench-progress`` (the UI's run page), a progress bar when the run's stderr is a
terminal (the CLI in local mode), else a plain log line at most every ``interval_s`` seconds and
at the end. Nothing is shown on the terminal when Prefect's logger is above INFO (``--quiet``).
"""
from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

from tasks.run.inference import ShardJob, ShardOutput
from tasks.store.errors import QuantbenchError

BAR_WIDTH = 24  # characters of the terminal progress bar


class ShardProgress:
    """Counts finished shards and the images they computed (reused shards cost no time)."""

    def __init__(self, jobs: list[ShardJob], logger: logging.Logger | logging.LoggerAdapter, interval_s: float = 10.0):
        self.logger, self.interval_s = logger, interval_s
        self.total = Counter(job.variant for job in jobs)
        self.images_left = sum(len(job.shard.images) for job in jobs)
        self.done: Counter[str] = Counter()
        self.images_computed = 0
        self.started = self.last_line = time.monotonic()
        self.artifact = create_progress_artifact(0.0, key="quantbench-progress", description=self.text())
        self.bar = self._on_terminal()

    @staticmethod
    def _on_terminal() -> bool:
        return sys.stderr.isatty() and logging.getLogger("prefect").isEnabledFor(logging.INFO)

    def _draw_bar(self, finished: bool) -> None:
        """``inference [#######·······] 12/40 shards (…)`` redrawn in place on the terminal."""
        fraction = sum(self.done.values()) / sum(self.total.values())
        width = BAR_WIDTH
        line = f"inference [{'#' * round(width * fraction):·<{width}}] {self.text()}"
        columns = shutil.get_terminal_size().columns  # 80 where the terminal reports no size
        sys.stderr.write(f"\r{line[: columns - 1]:<{columns - 1}}" + ("\n" if finished else ""))
        sys.stderr.flush()

    def text(self) -> str:
        """``12/40 shards (float32 4/10, int8 8/10), 9.8 images/s, ETA 3 min 10 s``."""
        per_variant = ", ".join(f"{v} {self.done[v]}/{n}" for v, n in self.total.items())
        elapsed = time.monotonic() - self.started
        rate = self.images_computed / elapsed if elapsed > 0 and self.images_computed else 0.0
        eta = f"ETA {_duration(self.images_left / rate)}" if rate and self.images_left else "ETA n/a" if self.images_left else "done"
        return f"{sum(self.done.values())}/{sum(self.total.values())} shards ({per_variant}), {rate:.1f} images/s, {eta}"

    def update(self, job: ShardJob, output: ShardOutput) -> None:
        self.done[job.variant] += 1
        self.images_left -= len(job.shard.images)
        if not output.reused:
            self.images_computed += len(job.shard.images)
        finished = sum(self.done.values()) == sum(self.total.values())
        update_progress_artifact(self.artifact, 100.0 * sum(self.done.values()) / sum(self.total.values()), self.text())
        if self.bar:
            self._draw_bar(finished)
        elif finished or time.monotonic() - self.last_line >= self.interval_s:
            self.last_line = time.monotonic()
            self.logger.info("progress: %s", self.text())


def follow(futures: Iterable[PrefectFuture], jobs: list[ShardJob], logger, stalled: Callable[[], str | None] | None = None,
           poll_s: float = 30.0) -> list[ShardOutput]:
    """Wait for every shard future (mapped from ``jobs`` in order), reporting progress as each
    finishes; returns the outputs in ``jobs`` order. The first failed shard raises, as ``.result()``.
    ``stalled`` is asked every ``poll_s`` seconds without a finished shard; a message from it fails
    the run (:class:`tasks.store.errors.QuantbenchError`) instead of waiting for shards nothing runs."""
    futures = list(futures)
    job_of = {id(future): job for future, job in zip(futures, jobs)}
    progress = ShardProgress(jobs, logger)
    pending = set(futures)
    while pending:
        try:
            for future in as_completed(list(pending), timeout=poll_s if stalled else None):
                pending.discard(future)
                progress.update(job_of[id(future)], future.result())
        except TimeoutError:
            reason = stalled()
            if reason:
                raise QuantbenchError(f"{len(pending)} of {len(futures)} shards never finished: {reason}") from None
    return [future.result() for future in futures]


class NoDaskWorkers:
    """``stalled`` for :func:`follow` on a Dask cluster: a message once the cluster has had no worker
    for ``grace_s`` seconds (its workers died, or every one that joined failed to start: e.g. an image
    without this code), so that the run fails loudly instead of waiting for ever (a shard's own
    timeout only starts when a worker runs it)."""

    def __init__(self, client, address: str, grace_s: float):
        self.client, self.address, self.grace_s = client, address, grace_s
        self.since: float | None = None

    def __call__(self) -> str | None:
        if self.client.nthreads():
            self.since = None
            return None
        self.since = self.since or time.monotonic()
        waited = time.monotonic() - self.since
        if waited < self.grace_s:
            return None
        return (f"the Dask cluster at {self.address} has had no worker for {waited:.0f} s (shard_timeout_s); start workers "
                f"that import this version of quantbench (their logs say why they stopped), then rerun: finished shards are reused")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
