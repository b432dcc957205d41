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
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.evaluation import IOU_TYPES, _results


class ImageResult(NamedTuple):
    """pycocotools' matching of one category in one image (area range ``all``, maxDets 100).

    Detections are in pycocotools' per-image order (score descending, at most 100)."""

    scores: np.ndarray  # (D,) float: detection confidences
    matched: np.ndarray  # (T, D) bool: matched to a ground truth at IoU threshold t (dtMatches != 0)
    ignored: np.ndarray  # (T, D) bool: dtIgnore (matched to a crowd/ignored ground truth)
    ground_truths: int  # non-ignored ground truths (gtIgnore == 0)


class _CategoryRanking(NamedTuple):
    """One category's detections over all images, in ``accumulate()``'s order (image order, then
    a stable sort by descending score); the order does not depend on the image weights."""

    image_index: np.ndarray  # (D,) int: position of the detection's image in PerImageEval.image_ids
    true_positive: np.ndarray  # (T, D) bool: matched and not ignored
    false_positive: np.ndarray  # (T, D) bool: unmatched and not ignored
    ground_truths: np.ndarray  # (I,) float: non-ignored ground truths per image


@dataclass(frozen=True, eq=False)
class PerImageEval:
    """pycocotools' per-image matching of one set of detections, ready for resampling.

    ``results[(k, i)]`` is the :class:`ImageResult` of ``category_ids[k]`` in ``image_ids[i]``;
    pairs where the image has neither ground truth nor detections of the category are absent.
    ``image_ids`` are sorted and unique, as pycocotools evaluates them."""

    image_ids: tuple[int, ...]
    category_ids: tuple[int, ...]
    recall_thresholds: np.ndarray  # (R,) ascending, pycocotools' params.recThrs (0:.01:1)
    iou_thresholds: np.ndarray  # (T,) pycocotools' params.iouThrs (.50:.05:.95)
    results: dict[tuple[int, int], ImageResult] = field(repr=False)

    @cached_property
    def _rankings(self) -> list[_CategoryRanking]:
        return [_category_ranking(self, k) for k in range(len(self.category_ids))]


def per_image_evaluation(gt: COCO, detections: list[dict], image_ids: list[int], iou_type: str = "bbox") -> PerImageEval:
    """Run pycocotools' ``evaluate()`` once on ``image_ids`` and keep its per-image matching.

    ``detections`` are COCO results (``image_id``, ``category_id``, ``score``, ``bbox`` and/or
    ``segmentation``), judged exactly as :func:`tasks.evaluation.evaluate` does for ``iou_type``
    (``"bbox"`` or ``"segm"``)."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, not {iou_type!r}")
    evaluator = COCOeval(gt, _results(gt, detections, iou_type), iou_type)
    evaluator.params.imgIds = sorted(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    return per_image_from_evaluator(evaluator)


def per_image_from_evaluator(evaluator: COCOeval) -> PerImageEval:
    """The per-image matching of a COCOeval whose ``evaluate()`` has run (no second evaluation)."""
    return _per_image(evaluator.params, evaluator.evalImgs.__getitem__)


def per_image_from_faster_evaluator(evaluator) -> PerImageEval:
    """:func:`per_image_from_evaluator` for a faster-coco-eval ``COCOeval_faster`` made with
    ``separate_eval=True`` whose ``evaluate()`` has run: the same matching, read from its C++
    per-image results (``_evalImgs_cpp``, in ``evalImgs``' order).

    Each one's pickle state is ``(detection_matches, ground_truth_matches, detection_scores,
    ground_truth_ignores, detection_ignores, matched pairs)``, the (T, D) arrays flattened row by
    row, a match being the matched annotation's id or 0. A pair with neither ground truth nor
    detections is an empty result there, where pycocotools has None."""
    n_thresholds = len(evaluator.params.iouThrs)

    def entry(n: int) -> dict | None:
        matches, _, scores, gt_ignores, dt_ignores, _ = evaluator._evalImgs_cpp[n].__getstate__()
        if not scores and not gt_ignores:
            return None
        shape = (n_thresholds, len(scores))
        return {"dtScores": scores, "dtMatches": np.reshape(matches, shape), "dtIgnore": np.reshape(dt_ignores, shape), "gtIgnore": gt_ignores}

    return _per_image(evaluator.params, entry)


def _per_image(params, entry) -> PerImageEval:
    """The matching at area range ``all`` from ``entry(n)``: ``evalImgs[n]`` as pycocotools has it
    (a dict, or None), ordered by category, area range, image."""
    n_images, n_areas = len(params.imgIds), len(params.areaRng)
    area = params.areaRngLbl.index("all")
    results = {}
    for k in range(len(params.catIds)):
        for i in range(n_images):
            found = entry((k * n_areas + area) * n_images + i)
            if found is not None:
                results[k, i] = _image_result(found, params.maxDets[-1])
    return PerImageEval(
        image_ids=tuple(int(i) for i in params.imgIds),
        category_ids=tuple(int(c) for c in params.catIds),
        recall_thresholds=np.asarray(params.recThrs, dtype=float),
        iou_thresholds=np.asarray(params.iouThrs, dtype=float),
        results=results,
    )


def _image_result(entry: dict, max_detections: int) -> ImageResult:
    return ImageResult(
        scores=np.asarray(entry["dtScores"][:max_detections], dtype=float),
        matched=np.asarray(entry["dtMatches"][:, :max_detections]) != 0,
        ignored=np.asarray(entry["dtIgnore"][:, :max_detections], dtype=bool),
        ground_truths=int(np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0)),
    )


def _category_ranking(per_image: PerImageEval, k: int) -> _CategoryRanking:
    """Concatenate category ``k``'s detections over the images in image order and sort them by
    descending score with a stable mergesort, as ``accumulate()`` does."""
    n_thresholds = len(per_image.iou_thresholds)
    ground_truths = np.zeros(len(per_image.image_ids))
    parts = []
    for i in range(len(per_image.image_ids)):
        result = per_image.results.get((k, i))
        if result is not None:
            ground_truths[i] = result.ground_truths
            parts.append((i, result))
    if not parts:
        none = np.zeros((n_thresholds, 0), bool)
        return _CategoryRanking(np.zeros(0, int), none, none, ground_truths)
    order = np.argsort(-np.concatenate([r.scores for _, r in parts]), kind="mergesort")
    image_index = np.concatenate([np.full(r.scores.size, i) for i, r in parts])
    matched = np.concatenate([r.matched for _, r in parts], axis=1)[:, order]
    ignored = np.concatenate([r.ignored for _, r in parts], axis=1)[:, order]
    return _CategoryRanking(
        image_index=image_index[order],
        true_positive=matched & ~ignored,
        false_positive=~matched & ~ignored,
        ground_truths=ground_truths,
    )


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
    thresholds = per_image.recall_thresholds
    precision = -np.ones((len(per_image.iou_thresholds), len(thresholds), len(per_image.category_ids)))
    for k, ranking in enumerate(per_image._rankings):
        category_precision = _category_precision(ranking, weights, thresholds)
        if category_precision is not None:
            precision[:, :, k] = category_precision
    defined = precision[precision > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _category_precision(ranking: _CategoryRanking, weights: np.ndarray, recall_thresholds: np.ndarray) -> np.ndarray | None:
    """(T, R) interpolated precision of one category at each recall threshold, or None when the
    resample has no ground truth of it (pycocotools then leaves -1)."""
    n_ground_truths = float(weights @ ranking.ground_truths)
    if n_ground_truths == 0:
        return None
    n_detections = ranking.image_index.size
    precision = np.zeros((ranking.true_positive.shape[0], recall_thresholds.size))
    if n_detections == 0:
        return precision
    detection_weights = weights[ranking.image_index]
    tp = np.cumsum(ranking.true_positive * detection_weights, axis=1)
    fp = np.cumsum(ranking.false_positive * detection_weights, axis=1)
    recall = tp / n_ground_truths
    envelope = np.maximum.accumulate((tp / (fp + tp + np.spacing(1)))[:, ::-1], axis=1)[:, ::-1]
    first_reaching = np.array([np.searchsorted(row, recall_thresholds, side="left") for row in recall])
    reached = first_reaching < n_detections
    values = np.take_along_axis(envelope, np.minimum(first_reaching, n_detections - 1), axis=1)
    precision[reached] = values[reached]
    return precision


def paired_bootstrap(evals: Sequence[PerImageEval], coefficients: Sequence[float], resamples: int = 200,
                     seed: int = 0, confidence: float = 0.95) -> dict:
    """Paired bootstrap over images of ``sum(c * AP(e))`` for ``e, c`` in ``evals, coefficients``.

    ``[-1, +1]`` is a difference of two APs (:func:`paired_bootstrap_delta_ap`); ``[+1, -1, -1, +1]``
    over (variant now, float32 now, variant before, float32 before) is the change of a ΔAP between
    two runs. Every evaluation must cover the same image ids and categories; each resample (as
    many draws as images, with replacement, ``np.random.default_rng(seed)``) weights all of them
    alike. Returns ``{"value": full-set value, "ci": [low, high], "resamples", "seed"}``, ``ci`` the
    percentile interval holding ``confidence`` of the resampled values; ``value`` and ``ci`` are
    None when some AP is undefined on the full set (no ground truth), and resamples where one is
    undefined are left out of the interval.
    """
    first = evals[0]
    for other in evals[1:]:
        if other.image_ids != first.image_ids:
            raise ValueError(
                f"paired bootstrap needs every evaluation on the same image ids "
                f"({len(first.image_ids)} vs {len(other.image_ids)} images, {len(set(first.image_ids) ^ set(other.image_ids))} differ)"
            )
        if other.category_ids != first.category_ids:
            raise ValueError("paired bootstrap needs every evaluation against the same categories")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    n_images = len(first.image_ids)
    result = {"value": None, "ci": None, "resamples": resamples, "seed": seed}
    value = _combination(evals, coefficients, np.ones(n_images))
    if np.isnan(value):
        return result
    draws = np.random.default_rng(seed).multinomial(n_images, np.full(n_images, 1 / n_images), size=resamples)
    values = np.array([_combination(evals, coefficients, weights) for weights in draws])
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return {**result, "value": float(value), "ci": [float(low), float(high)]}


def paired_bootstrap_delta_ap(base: PerImageEval, other: PerImageEval, resamples: int = 200, seed: int = 0,
                              confidence: float = 0.95) -> dict:
    """Paired bootstrap of ``AP(other) - AP(base)`` (AP in [0, 1], not percent): both APs on the
    same resamples, so the images' difficulty cancels out. Returns ``{"delta", "ci", "resamples",
    "seed"}`` (see :func:`paired_bootstrap`)."""
    result = paired_bootstrap([base, other], [-1.0, 1.0], resamples, seed, confidence)
    return {"delta": result.pop("value"), **result}


def _combination(evals: Sequence[PerImageEval], coefficients: Sequence[float], weights: np.ndarray) -> float:
    """``sum(c * AP)`` on one resample; NaN when some AP is undefined (no ground truth in it)."""
    aps = [resampled_ap(e, weights) for e in evals]
    return np.nan if -1.0 in aps else float(sum(c * ap for c, ap in zip(coefficients, aps)))


@task(name="significance", cache_policy=NO_CACHE)
def significance_task(per_image: dict[str, dict[str, PerImageEval | None]], resamples: int, seed: int = 0) -> dict[str, dict[str, dict]]:
    """Paired bootstrap of ΔAP vs float32 for every other variant and IoU type.

    ``per_image[variant][iou_type]`` are the per-image evaluations of one run. Returns
    ``{variant: {iou_type: {"delta", "ci", "resamples", "seed"}}}``; a pair evaluated on different
    images (different failures) gets no entry rather than an unpaired interval."""
    base = per_image.get("float32") or {}
    significance: dict[str, dict[str, dict]] = {}
    for variant, evaluations in per_image.items():
        if variant == "float32":
            continue
        for iou_type, evaluation in evaluations.items():
            reference = base.get(iou_type)
            if evaluation is not None and reference is not None and evaluation.image_ids == reference.image_ids:
                significance.setdefault(variant, {})[iou_type] = paired_bootstrap_delta_ap(reference, evaluation, resamples, seed)
    return significance
