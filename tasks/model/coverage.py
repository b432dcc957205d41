"""Quantization coverage: how far a variant's raw outputs move from float32's on the same inputs.

Reported per output name as the maximum absolute difference over a small batch. For outputs after
non-maximum suppression / top-k (boxes, classes) a tiny score change can reorder rows, so a large
difference there says "the ranking changed", not "the boxes moved"; ``detection_scores`` and the
mAP columns are the ones to read for accuracy.
"""
from __future__ import annotations

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.model.variants import Calibration, ModelArtifact
from tasks.model.runtimes import local_model_path, open_runtime

COMPARED_BATCHES = 4


def _outputs(variant: str, model_url: str, model_sha256: str, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    runtime = open_runtime(variant, local_model_path(model_url, model_sha256), threads=1)
    results = []
    for batch in batches:
        runtime.set_input(batch)
        runtime.invoke()
        results.append({name: np.array(value, dtype=np.float64) for name, value in runtime.outputs().items()})
    return results


def max_abs_diff_vs_float32(variant: ModelArtifact, float32: ModelArtifact, calibration: Calibration) -> dict[str, float]:
    """Per output: max |variant − float32| over the first batches of ``calibration``."""
    batches = list(calibration.batches[:COMPARED_BATCHES])
    reference = _outputs("float32", float32.url, float32.sha256, batches)
    candidate = _outputs(variant.variant, variant.url, variant.sha256, batches)
    diffs: dict[str, float] = {}
    for ref, out in zip(reference, candidate):
        for name in sorted(ref):
            if name in out and ref[name].shape == out[name].shape:
                diffs[name] = max(diffs.get(name, 0.0), float(np.max(np.abs(ref[name] - out[name]), initial=0.0)))
    return diffs


@task(name="compare-with-float32", task_run_name="compare-{variant.variant}", cache_policy=NO_CACHE)
def compare_task(variant: ModelArtifact, float32: ModelArtifact, calibration: Calibration) -> dict[str, float]:
    return max_abs_diff_vs_float32(variant, float32, calibration)
