"""Per-image matching of COCO detections: pycocotools' ``evaluate()`` result kept per (category,
image), so AP can be re-accumulated with images weighted (:mod:`tasks.score.significance`).

Read from a pycocotools ``COCOeval`` or a faster-coco-eval ``COCOeval_faster`` whose ``evaluate()``
has run (:func:`per_image_from_evaluator`, :func:`per_image_from_faster_evaluator`), at area range
``all`` and at most ``maxDets[-1]`` (100) detections per image, in pycocotools' orders: detections
by descending score, categories and images by id.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
from pycocotools.cocoeval import COCOeval


class ImageResult(NamedTuple):
    """pycocotools' matching of one category in one image (area range ``all``, maxDets 100).

    Detections are in pycocotools' per-image order (score descending, at most 100)."""

    scores: np.ndarray  # (D,) float: detection confidences
    matched: np.ndarray  # (T, D) bool: matched to a ground truth at IoU threshold t (dtMatches != 0)
    ignored: np.ndarray  # (T, D) bool: dtIgnore (matched to a crowd/ignored ground truth)
    ground_truths: int  # non-ignored ground truths (gtIgnore == 0)


class CategoryRanking(NamedTuple):
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
    def _rankings(self) -> list[CategoryRanking]:
        return [_category_ranking(self, k) for k in range(len(self.category_ids))]


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


def _category_ranking(per_image: PerImageEval, k: int) -> CategoryRanking:
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
        return CategoryRanking(np.zeros(0, int), none, none, ground_truths)
    order = np.argsort(-np.concatenate([r.scores for _, r in parts]), kind="mergesort")
    image_index = np.concatenate([np.full(r.scores.size, i) for i, r in parts])
    matched = np.concatenate([r.matched for _, r in parts], axis=1)[:, order]
    ignored = np.concatenate([r.ignored for _, r in parts], axis=1)[:, order]
    return CategoryRanking(
        image_index=image_index[order],
        true_positive=matched & ~ignored,
        false_positive=~matched & ~ignored,
        ground_truths=ground_truths,
    )
