"""Which op of a quantized variant costs AP: the metric-linked sweep of the diagnosis (issue 19).

For each candidate op (the ones adding the most numeric error, :func:`tasks.model.diagnosis.rank_ops`)
the variant is built again with only that op kept float (:func:`tasks.model.diagnosis.float_ops_variant`,
cached in the store), run over the same images by the pipeline's own shard inference
(:func:`tasks.run.inference.infer_shard`, its outputs content-addressed and reused) and scored with
COCO AP (:func:`tasks.score.evaluation.evaluate`). An op's **AP recovered** is ``AP(op kept float)
− AP(variant)`` (AP@[.5:.95] in [0, 1]), with a paired bootstrap CI over the images
(:func:`tasks.score.significance.delta_interval`; the variant resampled once for every op).

Without annotations the reference is float32's own detections (score ≥ ``pseudo_min_score``, taken
as ground truth): **pseudo-AP**, which measures agreement with float32, not accuracy.

What it does not tell: interactions between ops (two ops that each recover little alone may
recover much together, and recoveries do not add up); and AP on N images is noisy — read the CI.
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.data.dataset import ImageRecord
from tasks.model.diagnosis import ConverterSource, OpError, float_ops_build
from tasks.model.variants import ModelArtifact, float32_model
from tasks.run.inference import ShardJob, ShardOutput, infer_shard
from tasks.score.evaluation import evaluate, ground_truth
from tasks.score.gather import checked_shard
from tasks.score.matching import PerImageEval
from tasks.score.significance import Resampled, delta_interval, resample
from tasks.store.errors import STORE_RETRIES, QuantbenchError
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


def detections_of(job: ShardJob, infer: Callable[[ShardJob], ShardOutput] = infer_shard) -> tuple[list[dict], list[int]]:
    """Run (or reuse) ``job``'s shard with ``infer`` (in this process, or a shard flow run on a
    work pool): its COCO detections and the ids of the images it processed."""
    output = infer(job)
    stored = json.loads(checked_shard(open_store(job.store_url), output))
    return stored["detections"], sorted(stored["done_image_ids"])


def store_name(variant: str) -> str:
    """``variant`` as it appears in store keys: ``+`` (which S3 may read as a space) becomes ``-``."""
    return variant.replace("+", "-")


def _job_for(job: ShardJob, artifact: ModelArtifact) -> ShardJob:
    """``job`` run with another model."""
    return replace(job, variant=store_name(artifact.variant), model_url=artifact.url, model_sha256=artifact.sha256)


def annotations_of(document: dict, image_ids: Sequence[int]) -> dict:
    """The part of a COCO annotations ``document`` about ``image_ids`` (all its categories): what
    scoring a subset needs, without indexing the whole dataset for every op."""
    wanted = set(image_ids)
    return {**{k: v for k, v in document.items() if k not in ("images", "annotations")},
            "images": [image for image in document["images"] if image["id"] in wanted],
            "annotations": [a for a in document.get("annotations", []) if a["image_id"] in wanted]}


# pycocotools prints; evaluation silences it with contextlib.redirect_stdout, which swaps the
# process-wide sys.stdout: two threads doing it at once would leave it pointing at the terminal.
_EVALUATION = threading.Lock()


def _scored(document: dict, detections: list[dict], image_ids: list[int], backend: str) -> tuple[float | None, PerImageEval]:
    with _EVALUATION:
        result = evaluate(ground_truth(document, backend), detections, image_ids, "bbox", per_image=True, backend=backend)
    return result["stats"]["AP"], result["per_image"]


@dataclass(frozen=True)
class Baseline:
    """What each op's score is compared with: float32 and the variant on the sweep's images.

    ``job`` is the sweep's shard (its model replaced by each kept-float one), ``document`` the
    ground truth the sweep scores against (the annotations of its images, or float32's detections
    for pseudo-AP), ``variant_resampled`` the variant's AP on each bootstrap resample (made once,
    paired with every op's),
    ``source`` what a converter variant is rebuilt from (None for a quantizer variant), ``backend``
    the COCO evaluation backend (``tasks.score.evaluation.EVAL_BACKENDS``: the same numbers)."""

    job: ShardJob
    float32: ModelArtifact
    variant: ModelArtifact
    reference: str
    document: dict
    image_ids: tuple[int, ...]
    float32_ap: float | None
    variant_ap: float | None
    variant_resampled: Resampled
    source: ConverterSource | None = None
    backend: str = "pycocotools"


def baseline(job: ShardJob, float32: ModelArtifact, variant: ModelArtifact, annotations: dict | None = None,
             infer: Callable[[ShardJob], ShardOutput] = infer_shard, source: ConverterSource | None = None,
             backend: str = "pycocotools", resamples: int = 200, seed: int = 0) -> Baseline:
    """Run float32 and ``variant`` on ``job``'s shard and score both: against ``annotations`` (a
    COCO document covering the shard's images; reduced to them here), or, with None, against
    float32's detections (pseudo-AP). Raises QuantbenchError when the variant processed no image."""
    reference_detections, _ = detections_of(_job_for(job, float32), infer)
    variant_detections, image_ids = detections_of(_job_for(job, variant), infer)
    if not image_ids:
        raise QuantbenchError(f"the diagnosis of {variant.variant} has no image to score: every image of its shard failed")
    document = (annotations_of(annotations, image_ids) if annotations is not None else
                pseudo_ground_truth(reference_detections, job.shard.images, job.category_ids))
    float32_ap, _ = _scored(document, reference_detections, image_ids, backend)
    variant_ap, variant_eval = _scored(document, variant_detections, image_ids, backend)
    return Baseline(job, float32, variant, "annotations" if annotations is not None else "pseudo-AP vs float32", document,
                    tuple(image_ids), float32_ap, variant_ap, resample(variant_eval, resamples, seed), source, backend)


def op_recovery(base: Baseline, error: OpError, infer: Callable[[ShardJob], ShardOutput] = infer_shard) -> OpRecovery:
    """Keep the op of ``error`` float in the variant (built, or fetched from the store), run it on
    the baseline's images and score it: its AP and the AP it recovers, with a paired bootstrap CI."""
    started = time.perf_counter()
    artifact, _ = float_ops_build(open_store(base.job.store_url), float32_model(base.float32), base.variant.variant, [error.index],
                                  base.source)
    built = time.perf_counter()
    detections, _ = detections_of(_job_for(base.job, artifact), infer)
    ap, evaluation = _scored(base.document, detections, list(base.image_ids), base.backend)
    resampled = base.variant_resampled
    delta = delta_interval(resampled, resample(evaluation, resampled.resamples, resampled.seed))
    return OpRecovery(error, artifact.variant, artifact.model_bytes, ap, delta["delta"], delta["ci"],
                      round(built - started, 3), round(time.perf_counter() - built, 3))


@task(name="diagnose-op", task_run_name="diagnose-op-{error.index}-{error.op_type}", cache_policy=NO_CACHE, **STORE_RETRIES)
def op_recovery_task(base: Baseline, error: OpError, infer: Callable[[ShardJob], ShardOutput] = infer_shard) -> OpRecovery:
    """:func:`op_recovery` as one Prefect task per swept op (safe to retry: builds and shard
    outputs are content-addressed in the store)."""
    return op_recovery(base, error, infer)


def ranked(base: Baseline, rows: Sequence[OpRecovery]) -> Sweep:
    """The sweep: ``rows`` most AP recovered first (those without a value last, in the given order)."""
    ordered = sorted(rows, key=lambda row: (row.recovered is None, -(row.recovered or 0.0)))
    return Sweep(base.variant.variant, base.reference, len(base.image_ids), base.float32_ap, base.variant_ap,
                 base.variant.model_bytes, tuple(ordered))


def sweep(job: ShardJob, float32: ModelArtifact, variant: ModelArtifact, candidates: Sequence[OpError],
          annotations: dict | None = None, resamples: int = 200, seed: int = 0, workers: int = 1) -> Sweep:
    """AP recovered by keeping each of ``candidates`` float in ``variant`` (an ai-edge-quantizer
    variant of ``float32``; :func:`baseline` and :func:`op_recovery` take converter variants too), on ``job``'s shard (its images, store and settings; its model is
    replaced by each one in turn), ``workers`` ops at a time (threads): :func:`baseline`, then
    :func:`op_recovery` per op. (Flows run the ops as :func:`op_recovery_task`.)"""
    base = baseline(job, float32, variant, annotations, resamples=resamples, seed=seed)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        rows = list(pool.map(lambda error: op_recovery(base, error), candidates))
    return ranked(base, rows)


RECOVERY_RULE = ("ops whose AP-recovered CI lies above 0, most AP recovered per added byte first, "
                 "until their recoveries add up to the loss")


def recovered_ops(result: Sweep) -> list[int]:
    """The ops to keep float in the recovered recipe (:data:`RECOVERY_RULE`), in that order; none
    when the variant lost no AP or no op's recovery is significant.

    Recoveries measured one op at a time need not add up when several ops are kept float together:
    the recovered variant is benchmarked in full, and its own AP is what the report shows."""
    if result.float32_ap is None or result.variant_ap is None or result.float32_ap <= result.variant_ap:
        return []
    lost = result.float32_ap - result.variant_ap
    significant = [row for row in result.rows if row.ci is not None and row.ci[0] > 0 and row.recovered]
    significant.sort(key=lambda row: -row.recovered / max(row.model_bytes - result.variant_bytes, 1))
    chosen, total = [], 0.0
    for row in significant:
        if total >= lost:
            break
        chosen.append(row.error.index)
        total += row.recovered
    return chosen


def _finite(value: float) -> float | None:
    """A dB or ratio for JSON: None stands for infinity (no error at all)."""
    return None if value is None or math.isinf(value) or math.isnan(value) else round(value, 4)


def _error_entry(error: OpError) -> dict:
    return {"index": error.index, "op_type": error.op_type, "tensor": error.tensor, "shape": list(error.shape),
            "sqnr_db": _finite(error.sqnr_db), "own_sqnr_db": _finite(error.own_sqnr_db), "nrmse": _finite(error.nrmse),
            "quantized": error.quantized}


def sweep_report(result: Sweep, errors: Sequence[OpError], recovered_variant: dict | None, cost_s: dict) -> dict:
    """report.json's ``diagnosis`` (its ``summary`` line is the publish stage's): the sweep's
    reference and images, float32's and the variant's AP and size, every op's numeric error in
    network order (``errors``), the swept ops most AP recovered first, the recovered variant
    (``{"variant", "ops", "rule"}``, or None) and the wall seconds spent (``cost_s``). SQNR and
    NRMSE are null where infinite (no error); AP values in [0, 1], sizes in bytes."""
    lost = None if result.float32_ap is None or result.variant_ap is None else round(result.float32_ap - result.variant_ap, 6)
    return {
        "variant": result.variant, "reference": result.reference, "images": result.images,
        "float32_ap": result.float32_ap, "variant_ap": result.variant_ap, "lost": lost, "variant_bytes": result.variant_bytes,
        "errors": [_error_entry(error) for error in sorted(errors, key=lambda e: e.index)],
        "ops": [{**_error_entry(row.error), "ap": row.ap, "recovered": row.recovered, "ci": row.ci, "model_bytes": row.model_bytes,
                 "added_bytes": row.model_bytes - result.variant_bytes, "build_s": row.build_s, "score_s": row.score_s}
                for row in result.rows],
        "recovered_variant": recovered_variant,
        "cost_s": cost_s,
    }
