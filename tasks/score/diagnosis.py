"""Which op of a quantized variant costs AP: the metric-linked sweep of the diagnosis (issue 19).

For each candidate op (the ones adding the most numeric error, :func:`tasks.model.diagnosis.rank_ops`)
the variant is built again with only that op kept float (:func:`tasks.model.diagnosis.float_ops_variant`,
cached in the store), run over the same images by the pipeline's own shard inference
(:func:`tasks.run.inference.infer_shard`, its outputs content-addressed and reused) and scored with
COCO AP (:func:`tasks.score.evaluation.evaluate`). An op's **AP recovered** is ``AP(op kept float)
− AP(variant)`` (AP@[.5:.95] in [0, 1]), with a paired bootstrap CI over the images
(:func:`tasks.score.significance.paired_bootstrap_delta_ap`).

Without annotations the reference is float32's own detections (score ≥ ``pseudo_min_score``, taken
as ground truth): **pseudo-AP**, which measures agreement with float32, not accuracy.

What it does not tell: interactions between ops (two ops that each recover little alone may
recover much together, and recoveries do not add up); and AP on N images is noisy — read the CI.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from tasks.data.dataset import ImageRecord
from tasks.model.diagnosis import OpError, float_ops_variant
from tasks.model.variants import ModelArtifact, float32_model
from tasks.run.inference import ShardJob, infer_shard
from tasks.score.evaluation import evaluate, ground_truth
from tasks.score.gather import checked_shard
from tasks.score.matching import PerImageEval
from tasks.score.significance import paired_bootstrap_delta_ap
from tasks.store.errors import QuantbenchError
from tasks.store.object_store import open_store

PSEUDO_MIN_SCORE = 0.5


@dataclass(frozen=True)
class OpRecovery:
    """One candidate op kept float: its numeric error (``error``), the kept-float model's name and
    size in bytes, its AP, and the AP it recovers over the variant with the paired bootstrap CI
    (``[low, high]``; None when AP is undefined, e.g. no ground truth). ``build_s`` and
    ``score_s``: wall seconds to build (or fetch) the model and to run and score it (~0 when reused)."""

    error: OpError
    variant: str
    model_bytes: int
    ap: float | None
    recovered: float | None
    ci: list[float] | None
    build_s: float = 0.0
    score_s: float = 0.0


@dataclass(frozen=True)
class Sweep:
    """The sweep of one variant: the reference (``"annotations"`` or ``"pseudo-AP vs float32"``),
    the images scored, float32's and the variant's AP and size, and the ops, most AP recovered
    first (those without a value last, in numeric-error order)."""

    variant: str
    reference: str
    images: int
    float32_ap: float | None
    variant_ap: float | None
    variant_bytes: int
    rows: tuple[OpRecovery, ...]


def pseudo_ground_truth(detections: list[dict], images: Sequence[ImageRecord], category_ids: Sequence[int],
                        min_score: float = PSEUDO_MIN_SCORE) -> dict:
    """A COCO annotations document whose ground truth is ``detections`` (COCO results, pixels)
    with score ≥ ``min_score``: to score a variant by its agreement with float32 without labels."""
    categories = sorted(set(category_ids) | {d["category_id"] for d in detections})
    kept = [d for d in detections if d["score"] >= min_score]
    return {
        "images": [{"id": r.id, "file_name": r.file_name, "width": r.width, "height": r.height} for r in images],
        "categories": [{"id": c, "name": str(c)} for c in categories],
        "annotations": [{"id": n + 1, "image_id": d["image_id"], "category_id": d["category_id"], "bbox": d["bbox"],
                         "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0} for n, d in enumerate(kept)],
    }


def detections_of(job: ShardJob) -> tuple[list[dict], list[int]]:
    """Run (or reuse) ``job``'s shard: its COCO detections and the ids of the images it processed."""
    output = infer_shard(job)
    stored = json.loads(checked_shard(open_store(job.store_url), output))
    return stored["detections"], sorted(stored["done_image_ids"])


def _job_for(job: ShardJob, artifact: ModelArtifact) -> ShardJob:
    """``job`` run with another model; ``+`` is kept out of its store keys (S3 reads it as a space)."""
    return replace(job, variant=artifact.variant.replace("+", "-"), model_url=artifact.url, model_sha256=artifact.sha256)


# pycocotools prints; evaluation silences it with contextlib.redirect_stdout, which swaps the
# process-wide sys.stdout: two threads doing it at once would leave it pointing at the terminal.
_EVALUATION = threading.Lock()


def _scored(document: dict, detections: list[dict], image_ids: list[int]) -> tuple[float | None, PerImageEval]:
    with _EVALUATION:
        result = evaluate(ground_truth(document), detections, image_ids, "bbox", per_image=True)
    return result["stats"]["AP"], result["per_image"]


def sweep(job: ShardJob, float32: ModelArtifact, variant: ModelArtifact, candidates: Sequence[OpError],
          annotations: dict | None = None, resamples: int = 200, seed: int = 0, workers: int = 1) -> Sweep:
    """AP recovered by keeping each of ``candidates`` float in ``variant`` (an ai-edge-quantizer
    variant of ``float32``), on ``job``'s shard (its images, store and settings; its model is
    replaced by each one in turn).

    ``annotations`` (a COCO document covering the shard's images) gives AP; None gives pseudo-AP
    against float32's detections. ``workers`` kept-float models are built and scored at a time
    (threads). Raises QuantbenchError when the variant processed no image."""
    store = open_store(job.store_url)
    reference_detections, _ = detections_of(_job_for(job, float32))
    variant_detections, image_ids = detections_of(_job_for(job, variant))
    if not image_ids:
        raise QuantbenchError(f"the diagnosis of {variant.variant} has no image to score: every image of its shard failed")
    document = annotations if annotations is not None else pseudo_ground_truth(reference_detections, job.shard.images, job.category_ids)
    float32_ap, _ = _scored(document, reference_detections, image_ids)
    variant_ap, variant_eval = _scored(document, variant_detections, image_ids)
    float32_bytes = float32_model(float32)

    def recovery(error: OpError) -> OpRecovery:
        started = time.perf_counter()
        artifact, _ = float_ops_variant(store, float32_bytes, variant.variant, [error.index])
        built = time.perf_counter()
        detections, _ = detections_of(_job_for(job, artifact))
        ap, evaluation = _scored(document, detections, image_ids)
        delta = paired_bootstrap_delta_ap(variant_eval, evaluation, resamples, seed)
        return OpRecovery(error, artifact.variant, artifact.model_bytes, ap, delta["delta"], delta["ci"],
                          round(built - started, 3), round(time.perf_counter() - built, 3))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        rows = list(pool.map(recovery, candidates))
    ranked = sorted(rows, key=lambda row: (row.recovered is None, -(row.recovered or 0.0)))
    return Sweep(variant.variant, "annotations" if annotations is not None else "pseudo-AP vs float32", len(image_ids),
                 float32_ap, variant_ap, variant.model_bytes, tuple(ranked))
