"""The scoring stage's Prefect tasks: ``evaluate`` (one variant's evaluation and resampling, in a
process of its own: :mod:`tasks.score.scoring`) and ``significance`` (ΔAP vs float32 with its
bootstrap CI, from the variants' resampled APs).

They live apart from :mod:`tasks.score.evaluation` and :mod:`tasks.score.significance` so that
those, which the scoring processes import, do not import Prefect.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.score.scoring import score_in_process
from tasks.score.significance import Resampled, delta_interval
from tasks.store.errors import STORE_RETRIES


@task(name="evaluate", task_run_name="evaluate-{variant}", cache_policy=NO_CACHE, **STORE_RETRIES)
def evaluate_task(annotations_url: str, detections_url: str, image_ids: list[int], backend: str = "pycocotools",
                  resamples: int = 200, seed: int = 0, variant: str = "") -> dict:
    """Evaluate stored detections against the annotations with the evaluation ``backend`` and
    resample them (:func:`tasks.score.scoring.score_variant`), in a process of its own.
    ``variant`` only names the task run."""
    return score_in_process(annotations_url, detections_url, image_ids, backend, resamples, seed)


@task(name="significance", cache_policy=NO_CACHE)
def significance_task(resampled: dict[str, dict[str, Resampled]]) -> dict[str, dict[str, dict]]:
    """Paired bootstrap of ΔAP vs float32 for every other variant and IoU type.

    ``resampled[variant][iou_type]`` are the variants' resampled APs (``evaluate_task``'s
    ``"resampled"``: the same resamples and seed). Returns ``{variant: {iou_type: {"delta", "ci",
    "resamples", "seed"}}}``; a pair evaluated on different images (different failures) gets no
    entry rather than an unpaired interval."""
    base = resampled.get("float32") or {}
    significance: dict[str, dict[str, dict]] = {}
    for variant, by_type in resampled.items():
        if variant == "float32":
            continue
        for iou_type, other in by_type.items():
            reference = base.get(iou_type)
            if reference is not None and other.evaluation.image_ids == reference.evaluation.image_ids:
                significance.setdefault(variant, {})[iou_type] = delta_interval(reference, other)
    return significance
