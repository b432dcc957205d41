"""Significance of an AP difference: a seeded paired bootstrap over images of COCO AP.

"Variant B has 0.4 AP less than the float model" is only worth reporting if a different draw of
evaluation images would not easily erase it. :func:`paired_bootstrap_delta_ap` resamples the
images with replacement, recomputes both variants' AP on the *same* resample (paired: the image
difficulty cancels out) and reports a percentile interval of the AP difference.

AP here is COCO's headline number, ``stats[0]`` of pycocotools: precision averaged over the IoU
thresholds .50:.05:.95, the 101 recall thresholds and the categories with ground truth, area range
``all``, at most 100 detections per image; values in [0, 1], ``-1.0`` where no category has ground
truth.

pycocotools' ``evaluate()`` drops duplicate image ids, so a resample cannot be evaluated by passing
it the drawn ids. Instead :func:`per_image_evaluation` runs ``evaluate()`` once and keeps its
per-(category, image) matching, and :func:`resampled_ap` re-runs pycocotools' ``accumulate()``
with each image weighted by how many times it was drawn.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.score.evaluation import IOU_TYPES, _results
from tasks.score.matching import CategoryRanking, PerImageEval, per_image_from_evaluator


def per_image_evaluation(gt: COCO, detections: list[dict], image_ids: list[int], iou_type: str = "bbox") -> PerImageEval:
    """Run pycocotools' ``evaluate()`` once on ``image_ids`` and keep its per-image matching.

    ``detections`` are COCO results (``image_id``, ``category_id``, ``score``, ``bbox`` and/or
    ``segmentation``), judged exactly as :func:`tasks.score.evaluation.evaluate` does for ``iou_type``
    (``"bbox"`` or ``"segm"``)."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, not {iou_type!r}")
    evaluator = COCOeval(gt, _results(gt, detections, iou_type), iou_type)
    evaluator.params.imgIds = sorted(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    return per_image_from_evaluator(evaluator)


def resampled_ap(per_image: PerImageEval, weights: np.ndarray) -> float:
    """COCO AP@[.5:.95] (area ``all``, maxDets 100) of a resample of the images.

    ``weights[i]`` is how many times ``per_image.image_ids[i]`` was drawn (0 allowed); all ones is
    the full set and gives pycocotools' own ``stats[0]``. This is ``accumulate()`` with the
    true/false positive counts and the number of ground truths summed with these multiplicities.

    That equals the AP pycocotools computes on literal copies of the drawn images: the copies of
    one detection have one score, so they form one run in the score order, and counting the run
    once with weight m leaves out only its inner points. Within a run of copies of a true positive
    the precision only rises, so the precision envelope from the right (and so every recall
    threshold's precision) is the same with or without the inner points; copies of a false
    positive add no recall, and their inner points have no more precision than the point before
    the run (0 when the run opens the ranking), so they change no envelope value either; copies of
    an ignored detection repeat the point before them. A weight of 0 makes a detection add nothing,
    as if it were absent. The one exception is a tie between equal scores of detections from
    different images, whose interleaving in pycocotools depends on the copies' image ids.

    Returns ``-1.0`` when no category has ground truth in the resample.
    """
    weights = np.asarray(weights, dtype=float)
    if weights.shape != (len(per_image.image_ids),):
        raise ValueError(f"weights must have shape ({len(per_image.image_ids)},), not {weights.shape}")
    return float(resampled_aps(per_image, weights[np.newaxis])[0])


# Elements of one (resamples x thresholds, detections) array in :func:`resampled_aps`: small enough
# to stay in the CPU's cache (int64/float64: 512 KB), large enough that numpy's per-call cost is small;
# and at most this many resamples at once (their [T, R, K] precision arrays: 0.65 MB each for COCO).
CHUNK_ELEMENTS = 65_536
CHUNK_RESAMPLES = 8


def resampled_aps(per_image: PerImageEval, weights: np.ndarray) -> np.ndarray:
    """:func:`resampled_ap` of every row of ``weights`` (resamples x images: counts), as one array.

    The same numbers as ``accumulate()`` with the counts as multiplicities, bit for bit, computed
    for blocks of resamples at once and only where they can matter (see :func:`_category_precision`)."""
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != len(per_image.image_ids):
        raise ValueError(f"weights must have shape (resamples, {len(per_image.image_ids)}), not {weights.shape}")
    if not np.array_equal(weights, np.round(weights)) or (weights < 0).any():
        raise ValueError("weights must be counts (non-negative integers): how many times each image was drawn")
    # One more image, never drawn: the padding of every ranking's lists (weight 0).
    weights = np.hstack([weights.astype(np.int64), np.zeros((len(weights), 1), np.int64)])
    thresholds = per_image.recall_thresholds
    n_thresholds, n_categories = len(per_image.iou_thresholds), len(per_image.category_ids)
    widest = max((max(r.always_false.size, n_thresholds * max(r.hits.shape[1], r.other_false.shape[1])) for r in per_image.rankings),
                 default=0)
    block = max(1, min(CHUNK_RESAMPLES, CHUNK_ELEMENTS // max(1, widest)))
    aps = np.empty(len(weights))
    for start in range(0, len(weights), block):
        rows = weights[start:start + block]
        precision = np.full((len(rows), n_thresholds, thresholds.size, n_categories), -1.0)  # pycocotools' [T, R, K] per resample
        for k, ranking in enumerate(per_image.rankings):
            _category_precision(ranking, rows, thresholds, precision[..., k])
        for r, values in enumerate(precision):
            defined = values[values > -1]  # the order and the mean of pycocotools' summarize()
            aps[start + r] = float(np.mean(defined)) if defined.size else -1.0
    return aps


def _category_precision(ranking: CategoryRanking, weights: np.ndarray, recall_thresholds: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` (resamples, T, R) with one category's interpolated precision at each recall
    threshold for each row of ``weights`` (resamples, images + 1: the last column 0); rows whose
    resample has no ground truth of it keep -1 (as pycocotools leaves them).

    ``accumulate()`` sums the true and false positives down the ranking, takes the precision
    envelope from the right and reads it where the recall first reaches each threshold. With
    counts every sum is an integer (int64, exact), so recall ``tp / n`` and precision
    ``tp / (fp + tp + eps)`` are the float64 numbers ``accumulate()`` computes. Evaluated only at
    the true positives: the recall first reaches a threshold at a true positive (or, at recall 0,
    at the top, before which precision is 0), and every other detection's precision is at most
    that of the true positive above it (same tp, more fp), so the envelope there is the maximum
    over the true positives below. The first reaching is found among the integer sums: the fewest
    true positives ``m`` with ``m / n >= threshold`` in float64 (:func:`_fewest_reaching`), then the
    first true positive whose sum is at least ``m`` (one ``searchsorted`` for every row)."""
    n_ground_truths = weights[:, :-1] @ ranking.ground_truths
    has_truth = n_ground_truths > 0
    if not has_truth.any():
        return
    out[has_truth] = 0.0
    n_thresholds, n_hits = ranking.hits.shape
    if n_hits == 0:  # no true positive at any threshold: precision 0 wherever recall is reached
        return
    rows = np.flatnonzero(has_truth)
    drawn = weights[rows]
    always_false = np.zeros((len(rows), ranking.always_false.size + 1), np.int64)
    np.cumsum(drawn[:, ranking.always_false], axis=1, out=always_false[:, 1:])
    other_false = np.zeros((len(rows) * n_thresholds, ranking.other_false.shape[1] + 1), np.int64)
    np.cumsum(drawn[:, ranking.other_false].reshape(len(other_false), -1), axis=1, out=other_false[:, 1:])
    fp = (always_false[:, ranking.always_false_before].reshape(-1, n_hits)
          + np.take_along_axis(other_false, np.tile(ranking.other_false_before, (len(rows), 1)), axis=1))
    tp = np.cumsum(drawn[:, ranking.hits].reshape(-1, n_hits), axis=1)  # (resamples x T, L)
    reversed_precision = np.ascontiguousarray((tp / (fp + tp + np.spacing(1)))[:, ::-1])
    envelope = np.maximum.accumulate(reversed_precision, axis=1)[:, ::-1]
    fewest = np.repeat(_fewest_reaching(n_ground_truths[rows], recall_thresholds), n_thresholds, axis=0)  # (resamples x T, R)
    spacing = int(n_ground_truths[rows].max()) + 1  # every sum and every m of a row lie in [0, spacing)
    offsets = np.arange(len(tp), dtype=np.int64)[:, np.newaxis] * spacing
    first_reaching = np.searchsorted((tp + offsets).ravel(), (fewest + offsets).ravel(), side="left").reshape(fewest.shape)
    first_reaching -= np.arange(len(tp))[:, np.newaxis] * n_hits
    reached = first_reaching < n_hits
    values = np.take_along_axis(envelope, np.minimum(first_reaching, n_hits - 1), axis=1)
    out[rows] = np.where(reached, values, 0.0).reshape(len(rows), n_thresholds, -1)


def _fewest_reaching(n_ground_truths: np.ndarray, recall_thresholds: np.ndarray) -> np.ndarray:
    """(resamples, R) int64: for each ground-truth count ``n`` (positive integers) the smallest
    integer ``m >= 0`` with ``m / n >= threshold`` computed in float64, as ``accumulate()`` compares
    a recall with a threshold. Starts from ``ceil(threshold * n)`` and corrects its rounding."""
    n = n_ground_truths.astype(float)[:, np.newaxis]
    fewest = np.ceil(recall_thresholds * n).astype(np.int64)
    for _ in range(4):
        lower = (fewest > 0) & ((fewest - 1) / n >= recall_thresholds)
        higher = fewest / n < recall_thresholds
        if not (lower.any() or higher.any()):
            return fewest
        fewest += higher.astype(np.int64) - lower.astype(np.int64)
    raise AssertionError("the fewest true positives reaching a recall threshold did not settle")


def _check_paired(evals: Sequence[PerImageEval]) -> None:
    first = evals[0]
    for other in evals[1:]:
        if other.image_ids != first.image_ids:
            raise ValueError(
                f"paired bootstrap needs every evaluation on the same image ids "
                f"({len(first.image_ids)} vs {len(other.image_ids)} images, {len(set(first.image_ids) ^ set(other.image_ids))} differ)"
            )
        if other.category_ids != first.category_ids:
            raise ValueError("paired bootstrap needs every evaluation against the same categories")


@dataclass(frozen=True, eq=False)
class Resampled:
    """One evaluation's AP on the full set (``value``) and on each of ``resamples`` seeded bootstrap
    resamples of its images (``values``; -1.0 where undefined): what a paired bootstrap combines.
    Two made with the same ``resamples`` and ``seed`` over the same images are paired (same draws),
    so one evaluation compared with many (a sweep's variant) is resampled once."""

    evaluation: PerImageEval
    value: float
    values: np.ndarray
    resamples: int
    seed: int


def resample(evaluation: PerImageEval, resamples: int = 200, seed: int = 0) -> Resampled:
    """AP of ``evaluation`` on the full set and on each resample: as many draws as images, with
    replacement, ``np.random.default_rng(seed)`` (the draws depend only on the image count and the seed)."""
    n_images = len(evaluation.image_ids)
    value = resampled_ap(evaluation, np.ones(n_images))
    if value == -1.0:  # no ground truth at all: undefined on every resample too (and no image may be left to draw)
        return Resampled(evaluation, value, np.full(resamples, -1.0), resamples, seed)
    draws = np.random.default_rng(seed).multinomial(n_images, np.full(n_images, 1 / n_images), size=resamples)
    return Resampled(evaluation, value, resampled_aps(evaluation, draws), resamples, seed)


def combined_interval(resampled: Sequence[Resampled], coefficients: Sequence[float], confidence: float = 0.95) -> dict:
    """:func:`paired_bootstrap` of evaluations already resampled (the same resamples and seed)."""
    _check_paired([r.evaluation for r in resampled])
    if len({(r.resamples, r.seed) for r in resampled}) != 1:
        raise ValueError("paired bootstrap needs every evaluation resampled with the same resamples and seed")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    result = {"value": None, "ci": None, "resamples": resampled[0].resamples, "seed": resampled[0].seed}
    if any(r.value == -1.0 for r in resampled):
        return result
    aps = np.array([r.values for r in resampled])
    values = np.where((aps == -1.0).any(axis=0), np.nan, sum(c * row for c, row in zip(coefficients, aps)))
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    value = float(sum(c * r.value for c, r in zip(coefficients, resampled)))
    return {**result, "value": value, "ci": [float(low), float(high)]}


def paired_bootstrap(evals: Sequence[PerImageEval], coefficients: Sequence[float], resamples: int = 200,
                     seed: int = 0, confidence: float = 0.95) -> dict:
    """Paired bootstrap over images of ``sum(c * AP(e))`` for ``e, c`` in ``evals, coefficients``.

    ``[-1, +1]`` is a difference of two APs (:func:`paired_bootstrap_delta_ap`); ``[+1, -1, -1, +1]``
    over (variant now, float32 now, variant before, float32 before) is the change of a ΔAP between
    two runs. Every evaluation must cover the same image ids and categories; each resample (as
    many draws as images, with replacement, ``np.random.default_rng(seed)``) weights all of them
    alike (:func:`resample`). Returns ``{"value": full-set value, "ci": [low, high], "resamples",
    "seed"}``, ``ci`` the percentile interval holding ``confidence`` of the resampled values;
    ``value`` and ``ci`` are None when some AP is undefined on the full set (no ground truth), and
    resamples where one is undefined are left out of the interval.
    """
    _check_paired(evals)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    return combined_interval([resample(e, resamples, seed) for e in evals], coefficients, confidence)


def paired_bootstrap_delta_ap(base: PerImageEval, other: PerImageEval, resamples: int = 200, seed: int = 0,
                              confidence: float = 0.95) -> dict:
    """Paired bootstrap of ``AP(other) - AP(base)`` (AP in [0, 1], not percent): both APs on the
    same resamples, so the images' difficulty cancels out. Returns ``{"delta", "ci", "resamples",
    "seed"}`` (see :func:`paired_bootstrap`)."""
    return delta_interval(resample(base, resamples, seed), resample(other, resamples, seed), confidence)


def delta_interval(base: Resampled, other: Resampled, confidence: float = 0.95) -> dict:
    """:func:`paired_bootstrap_delta_ap` of two evaluations already resampled alike."""
    result = combined_interval([base, other], [-1.0, 1.0], confidence)
    return {"delta": result.pop("value"), **result}
