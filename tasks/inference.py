"""Inference of one (variant, shard): load the model once, run every image, store COCO results.

A shard's output is stored under a key derived from everything that decides its content (model
digest, variant and its model file, dataset digest, the shard's image ids, score threshold), so a
rerun finds and reuses it and outputs of different models or settings never mix.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import UnidentifiedImageError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.coco_format import od_api_to_coco
from tasks.dataset import ImageReader, Shard, decode_rgb
from tasks.errors import QuantbenchError
from tasks.runtimes import open_runtime, prepare_input
from tasks.store import open_store, split_url


def cache_dir() -> Path:
    """Local cache for objects fetched from remote stores (``QUANTBENCH_CACHE``, else ~/.cache/quantbench)."""
    return Path(os.environ.get("QUANTBENCH_CACHE", Path.home() / ".cache" / "quantbench"))


def local_model_path(url: str) -> Path:
    """A local path for a model URL: a SavedModel directory, or a ``.tflite`` object in a store."""
    if "://" not in url and Path(url).is_dir():
        return Path(url)
    store, key = split_url(url)
    return store.local_path(key, cache_dir())


@dataclass(frozen=True)
class ShardJob:
    """Everything one inference task needs; plain data, so it can be sent to another process."""

    variant: str
    model_url: str
    model_digest: str
    dataset_digest: str
    images_url: str
    shard: Shard
    store_url: str
    threads: int = 1
    min_score: float = 0.0

    def output_key(self) -> str:
        identity = {
            "model_digest": self.model_digest,
            "variant": self.variant,
            "model_file": self.model_url.rsplit("/", 1)[-1],
            "dataset_digest": self.dataset_digest,
            "image_ids": [record.id for record in self.shard.images],
            "min_score": self.min_score,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"shards/{self.variant}/{digest[:32]}.json"


@dataclass(frozen=True)
class ShardOutput:
    """Where a shard's results are stored, and what they hold."""

    variant: str
    shard_index: int
    key: str
    images_done: int
    images_failed: int
    detections: int
    seconds: float  # wall time of the whole shard: model load, decode, resize, invoke, store
    reused: bool


def infer_shard(job: ShardJob) -> ShardOutput:
    """Run ``job``'s model over its shard; store ``{"detections", "done_image_ids", "failed"}``.

    An image that cannot be read or decoded is recorded in ``failed`` with the reason and the
    shard goes on; a model failure stops the shard.
    """
    store = open_store(job.store_url)
    key = job.output_key()
    if store.exists(key):
        stored = store.read_json(key)
        return ShardOutput(job.variant, job.shard.index, key, len(stored["done_image_ids"]), len(stored["failed"]),
                           len(stored["detections"]), 0.0, reused=True)
    started = time.perf_counter()
    runtime = open_runtime(job.variant, local_model_path(job.model_url), job.threads)
    reader = ImageReader(job.images_url)
    detections, done, failed = [], [], []
    for record in job.shard.images:
        try:
            pixels = decode_rgb(reader.read(record))
        except (QuantbenchError, OSError, UnidentifiedImageError, ValueError) as error:
            failed.append({"image_id": record.id, "file_name": record.file_name, "reason": f"{type(error).__name__}: {error}"})
            continue
        runtime.set_input(prepare_input(pixels, runtime.fixed_size))
        runtime.invoke()
        out = runtime.outputs()
        count = out["num_detections"].reshape(-1)[0] if "num_detections" in out else None
        detections += od_api_to_coco(
            record.id, record.width, record.height,
            out["detection_boxes"][0], out["detection_scores"][0], out["detection_classes"][0],
            num_detections=count, min_score=job.min_score,
        )
        done.append(record.id)
    store.write_json(key, {"job": asdict(job), "detections": detections, "done_image_ids": done, "failed": failed})
    return ShardOutput(job.variant, job.shard.index, key, len(done), len(failed), len(detections),
                       round(time.perf_counter() - started, 3), reused=False)


@task(name="infer-shard", cache_policy=NO_CACHE, task_run_name="infer-{job.variant}-shard-{job.shard.index}")
def infer_shard_task(job: ShardJob) -> ShardOutput:
    output = infer_shard(job)
    get_run_logger().info(
        "%s shard %d: %d images, %d failed, %d detections%s",
        output.variant, output.shard_index, output.images_done, output.images_failed, output.detections,
        " (reused stored result)" if output.reused else f" in {output.seconds:.1f} s",
    )
    return output
