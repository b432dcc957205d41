"""The benchmark flow: convert → fan out one inference task per (variant, shard) → gather →
latency (one variant at a time) → evaluate → report.

Composition only; each stage lives in ``tasks``. Shards run in parallel threads (LiteRT's
``invoke()`` releases the GIL). With no Prefect server configured the flow runs in Prefect's
ephemeral mode.
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, model_validator

from tasks.dataset import Dataset, load_dataset, make_shards
from tasks.evaluation import evaluate_task
from tasks.gather import gather_variant_task
from tasks.inference import ShardJob, cache_dir, infer_shard_task
from tasks.latency import host_info, latency_task
from tasks.models import LITERT_VARIANTS, VARIANTS, check_saved_model, convert_variant, directory_digest, saved_model_artifact
from tasks.report import VariantResult, report_task

Variant = Literal["saved_model", "float32", "float16", "int8"]


def default_store() -> str:
    """``QUANTBENCH_STORE`` if set, else the folder ``quantbench-results`` in the working directory."""
    return os.environ.get("QUANTBENCH_STORE") or Path("quantbench-results").resolve().as_uri()


class BenchmarkConfig(BaseModel):
    """What to benchmark and how. Empty model/dataset fields mean the embedded demo."""

    model: str | None = Field(None, description="TensorFlow SavedModel directory whose 'serving_default' signature follows the TF Object Detection API. Empty: the embedded demo detector.")
    annotations: str | None = Field(None, description="COCO instances JSON (local path or s3:// URL). Empty: the embedded synthetic demo dataset.")
    images: str | None = Field(None, description="Folder (local path or s3:// prefix) holding the images named by the annotations' file_name.")
    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS), description="Variants to benchmark: saved_model (TensorFlow baseline), float32, float16 (fp16 weights), int8 (dynamic range).")
    shard_size: int = Field(50, ge=1, description="Images per inference task.")
    workers: int = Field(2, ge=1, description="Inference tasks run in parallel on this machine.")
    threads: int = Field(1, ge=1, description="CPU threads per interpreter (inference and latency).")
    limit: int | None = Field(None, ge=1, description="Use only the first N images (by image id).")
    store: str = Field(default_factory=default_store, description="Where results go: a local folder, file:///path or s3://bucket/prefix.")
    latency_images: int = Field(50, ge=1, description="Timed invoke() calls per variant, after warm-up.")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="Drop detections scoring below this.")

    @model_validator(mode="after")
    def _dataset_given_whole(self) -> "BenchmarkConfig":
        if (self.annotations is None) != (self.images is None):
            raise ValueError("give both annotations and images, or neither (for the demo dataset)")
        return self


def resolve_inputs(config: BenchmarkConfig) -> tuple[Path, str, str]:
    """(model dir, annotations, images), generating the demo dataset when none is given."""
    from demo import DEMO_MODEL_DIR, synthetic

    model = Path(config.model) if config.model else DEMO_MODEL_DIR
    if config.annotations is None:
        annotations = synthetic.generate(cache_dir() / "demo-data", synthetic.VAL)
        return model, str(annotations), str(annotations.parent)
    return model, config.annotations, config.images


def run_identity(config: BenchmarkConfig, model_digest: str, dataset: Dataset) -> str:
    settings = config.model_dump(exclude={"store", "workers"})
    settings.update(model_digest=model_digest, dataset_digest=dataset.digest)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{digest}"


@flow(name="quantbench-benchmark")
def benchmark(config: BenchmarkConfig = BenchmarkConfig()) -> str:
    """Benchmark every requested variant of a detector on a COCO dataset; return report.json's URL."""
    logger = get_run_logger()
    model_dir, annotations, images = resolve_inputs(config)
    model_input = check_saved_model(model_dir)
    model_digest = directory_digest(model_dir)
    dataset = load_dataset(annotations, images, config.limit)
    shards = make_shards(dataset, config.shard_size)
    run_id = run_identity(config, model_digest, dataset)
    run_prefix = f"runs/{run_id}"
    variants = [v for v in VARIANTS if v in config.variants]
    logger.info("run %s: %d images in %d shards, variants %s", run_id, len(dataset.images), len(shards), ", ".join(variants))

    artifacts = {}
    if any(v in LITERT_VARIANTS for v in variants):
        # float32 is always converted: the quantized variants' size claims are checked against it.
        artifacts["float32"] = convert_variant(str(model_dir), model_digest, "float32", config.store, None)
        for variant in ("float16", "int8"):
            if variant in variants:
                artifacts[variant] = convert_variant(str(model_dir), model_digest, variant, config.store, artifacts["float32"].model_bytes)
    if "saved_model" in variants:
        artifacts["saved_model"] = saved_model_artifact(str(model_dir))

    jobs = [
        ShardJob(v, artifacts[v].url, model_digest, dataset.digest, dataset.images_url, shard, config.store, config.threads, config.min_score)
        for v in variants
        for shard in shards
    ]
    with ThreadPoolTaskRunner(max_workers=config.workers) as runner:
        outputs = runner.map(infer_shard_task, {"job": jobs}).result()

    expected_ids = [record.id for record in dataset.images]
    results = []
    for variant in variants:
        gathered = gather_variant_task(variant, [o for o in outputs if o.variant == variant], expected_ids, config.store, run_prefix)
        latency = latency_task(variant, artifacts[variant].url, dataset.images_url, list(dataset.images), config.threads, config.latency_images)
        metrics = evaluate_task(dataset.annotations_url, gathered.detections_url, list(gathered.done_image_ids))
        results.append(VariantResult(artifacts[variant], gathered, metrics, latency))

    run = {
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": str(model_dir), "digest": model_digest, "input": model_input},
        "dataset": {"annotations": dataset.annotations_url, "images_url": dataset.images_url, "digest": dataset.digest, "images": len(dataset.images)},
        "settings": config.model_dump(include={"shard_size", "workers", "threads", "limit", "latency_images", "min_score", "variants"}),
        "host": host_info(),
    }
    url = report_task(run, results, config.store, run_prefix)
    logger.info("report: %s", url)
    return url


def validate(config: BenchmarkConfig) -> None:
    """Fail fast, before any flow starts, on a bad model or dataset (one-line errors)."""
    model_dir, annotations, images = resolve_inputs(config)
    check_saved_model(model_dir)
    load_dataset(annotations, images, config.limit)

