"""Latency, measured honestly: one variant at a time, nothing else running in this flow.

Per-image times taken while shards run in parallel are contaminated by each other, so latency is
a separate step, run after inference, one variant after another. It times ``invoke()`` alone
(decode, resize and copying the input in are done before the clock starts), after ``warmup``
untimed invocations, over ``images`` images of the dataset (cycled if the dataset is smaller).
Then, apart, what turning one image's outputs into detections costs (``postprocess_ms``: reading
and dequantizing the outputs, the head's decode and NMS), on the same runs' outputs.
"""
from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.data.dataset import ImageRecord, load_inputs
from tasks.store.errors import STORE_RETRIES
from tasks.model.heads import make_head
from tasks.model.preprocess import Preparation, prepare_input
from tasks.model.runtimes import local_model_path, open_runtime
from tasks.model.spec import ModelSpec, odapi_spec


ROUNDS = 5  # the timed runs are split into this many consecutive rounds, each with its own p50


def measure_latency(variant: str, model_path: Path, inputs: list[np.ndarray], threads: int, runs: int, warmup: int = 5,
                    spec: ModelSpec | None = None) -> dict:
    """Time ``runs`` invocations over ``inputs`` (RGB uint8 images, prepared as the resolved
    ``spec`` says; None: the TF OD API head). Milliseconds.

    Returns ``{"mean", "p50", "p90", "p99", "min", "max"}`` in ms, ``times_ms`` (every timed run, in
    order), ``p50_rounds`` (the p50 of each
    of up to 5 consecutive rounds of the runs: how much the machine itself drifted while timing),
    ``images_per_s`` (1000/mean: pure compute throughput of one interpreter), ``runs``, ``warmup``,
    ``threads``, ``runtime``; ``postprocess_ms`` ``{"mean", "p50", "p90"}``: per image, reading the
    outputs and the head's decode and NMS, timed after each invocation, outside ``invoke()``'s time.
    """
    spec = spec or odapi_spec()
    runtime = open_runtime(variant, model_path, threads)
    head, preparation = make_head(spec, runtime.io), Preparation.of(spec, runtime.io.input, runtime.fixed_size)
    prepared = [prepare_input(pixels, preparation) for pixels in inputs]
    for n in range(warmup):
        runtime.set_input(prepared[n % len(prepared)][0])
        runtime.invoke()
        head.decode(runtime.outputs(), prepared[n % len(prepared)][1])
    times_ms, postprocess_ms = np.empty(runs), np.empty(runs)
    for n in range(runs):
        batch, frame = prepared[n % len(prepared)]
        runtime.set_input(batch)
        started = time.perf_counter()
        runtime.invoke()
        invoked = time.perf_counter()
        head.decode(runtime.outputs(), frame)
        times_ms[n] = (invoked - started) * 1000
        postprocess_ms[n] = (time.perf_counter() - invoked) * 1000
    mean = float(times_ms.mean())
    return {
        "mean": mean,
        **{f"p{q}": float(np.percentile(times_ms, q)) for q in (50, 90, 99)},
        "p50_rounds": [float(np.median(part)) for part in np.array_split(times_ms, min(ROUNDS, runs))],
        "times_ms": [round(float(t), 4) for t in times_ms],
        "min": float(times_ms.min()),
        "max": float(times_ms.max()),
        "images_per_s": 1000.0 / mean,
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "runtime": "tensorflow" if variant == "saved_model" else "ai-edge-litert",
        "delegate": runtime.delegate,
        "input_size": list(runtime.fixed_size) if runtime.fixed_size else "original image size (dynamic input)",
        "postprocess_ms": {"mean": float(postprocess_ms.mean()), "p50": float(np.percentile(postprocess_ms, 50)),
                           "p90": float(np.percentile(postprocess_ms, 90))},
    }


def host_info() -> dict:
    """The machine and software the numbers were measured with."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("tensorflow-cpu", "ai-edge-litert", "prefect", "pycocotools", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


@task(name="latency", task_run_name="latency-{variant}", cache_policy=NO_CACHE, **STORE_RETRIES)
def latency_task(variant: str, model_url: str, images_url: str, records: list[ImageRecord], threads: int, runs: int,
                 spec: ModelSpec | None = None, model_sha256: str = "") -> dict:
    """``model_sha256``: the digest the model file must have (``tasks.model.runtimes.local_model_path``)."""
    inputs = load_inputs(images_url, records, min(runs, len(records)))
    return measure_latency(variant, local_model_path(model_url, model_sha256), inputs, threads, runs, spec=spec)
