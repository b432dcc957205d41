"""Per-image matching of COCO detections: pycocotools' ``evaluate()`` result per (category, image)
(:func:`image_results`), kept as each category's ranking, so that AP can be re-accumulated with
images weighted (:mod:`tasks.score.significance`).

Read from a pycocotools ``COCOeval`` or a faster-coco-eval ``COCOeval_faster`` whose ``evaluate()``
has run (:func:`per_image_from_evaluator`), at area range
``all`` and at most ``maxDets[-1]`` (100) detections per image, in pycocotools' orders: detections
by descending score, categories and images by id.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
    """One category's detections over all images, in ``accumulate()``'s order (image order, then a
    stable sort by descending score; the order does not depend on image weights), kept as what a
    re-accumulation with image weights needs (:func:`tasks.score.significance.resampled_aps`).

    Only true positives can raise the precision envelope, so only they are listed per IoU threshold;
    a false positive counts through the false positives ranked before each true positive. Most
    false positives are false at every threshold (``always_false``, listed once); the rest are
    listed per threshold (``other_false``). Images are positions in ``PerImageEval.image_ids``; lists
    are padded with the image position ``I`` (one past the last: weight 0 when resampling) and with
    the counts of the last real entry, so padding never adds a count or a precision."""

    ground_truths: np.ndarray  # (I,) float: non-ignored ground truths per image
    detections: int  # D: the category's detections (ranked, at most 100 per image)
    always_false: np.ndarray  # (A,) int: image of each detection unmatched and not ignored at every threshold, in rank order
    hits: np.ndarray  # (T, L) int: image of each true positive (matched, not ignored) at threshold t, in rank order
    always_false_before: np.ndarray  # (T, L) int: always_false detections ranked before that true positive
    other_false: np.ndarray  # (T, E) int: image of each other false positive at threshold t, in rank order
    other_false_before: np.ndarray  # (T, L) int: other false positives at t ranked before that true positive


@dataclass(frozen=True, eq=False)
class PerImageEval:
    """pycocotools' per-image matching of one set of detections, ready for resampling: for each
    category (``category_ids`` order) its :class:`CategoryRanking` over ``image_ids`` (sorted and
    unique, as pycocotools evaluates them). Small (about 8 bytes per detection) and picklable:
    what an evaluation keeps, and sends back from a process of its own."""

    image_ids: tuple[int, ...]
    category_ids: tuple[int, ...]
    recall_thresholds: np.ndarray  # (R,) ascending, pycocotools' params.recThrs (0:.01:1)
    iou_thresholds: np.ndarray  # (T,) pycocotools' params.iouThrs (.50:.05:.95)
    rankings: tuple[CategoryRanking, ...] = field(repr=False)


def image_results(evaluator) -> dict[tuple[int, int], ImageResult]:
    """``{(k, i): ImageResult}``: the matching of category ``params.catIds[k]`` in image
    ``params.imgIds[i]`` of a pycocotools ``COCOeval`` or a faster-coco-eval ``COCOeval_faster``
    made with ``separate_eval=True``, whose ``evaluate()`` has run; pairs with neither ground truth
    nor detections are absent.

    faster-coco-eval's per-image results (``_evalImgs_cpp``, in ``evalImgs``' order) are read from
    each one's pickle state, ``(detection_matches, ground_truth_matches, detection_scores,
    ground_truth_ignores, detection_ignores, matched pairs)``, the (T, D) arrays flattened row by
    row, a match being the matched annotation's id or 0."""
    params = evaluator.params
    max_detections = params.maxDets[-1]
    if isinstance(evaluator, COCOeval):
        def result(n: int) -> ImageResult | None:
            found = evaluator.evalImgs[n]
            return None if found is None else _image_result(found, max_detections)
    else:
        n_thresholds, evaluated = len(params.iouThrs), evaluator._evalImgs_cpp

        def result(n: int) -> ImageResult | None:
            matches, _, scores, gt_ignores, dt_ignores, _ = evaluated[n].__getstate__()
            if not scores and not gt_ignores:
                return None
            shape = (n_thresholds, len(scores))
            return ImageResult(
                scores=np.array(scores[:max_detections], dtype=float),
                matched=(np.array(matches).reshape(shape) != 0)[:, :max_detections],
                ignored=np.array(dt_ignores, dtype=bool).reshape(shape)[:, :max_detections],
                ground_truths=len(gt_ignores) - sum(map(bool, gt_ignores)),
            )

    # Only the pairs with a ground truth or a detection are read: the others have no result.
    n_images, n_areas = len(params.imgIds), len(params.areaRng)
    area = params.areaRngLbl.index("all")
    image_index = {image_id: i for i, image_id in enumerate(params.imgIds)}
    category_index = {category_id: k for k, category_id in enumerate(params.catIds)}
    pairs = {(category_index[a["category_id"]], image_index[a["image_id"]])
             for coco in (evaluator.cocoGt, evaluator.cocoDt) for a in coco.anns.values()
             if a["image_id"] in image_index and a["category_id"] in category_index}
    results = {}
    for k, i in sorted(pairs):
        found = result((k * n_areas + area) * n_images + i)
        if found is not None:
            results[k, i] = found
    return results


def per_image_from_evaluator(evaluator) -> PerImageEval:
    """The per-image matching of a pycocotools ``COCOeval`` or a faster-coco-eval
    ``COCOeval_faster`` (``separate_eval=True``) whose ``evaluate()`` has run (no second evaluation)."""
    params = evaluator.params
    n_images, n_thresholds = len(params.imgIds), len(params.iouThrs)
    by_category: dict[int, list[tuple[int, ImageResult]]] = {}
    for (k, i), result in image_results(evaluator).items():
        by_category.setdefault(k, []).append((i, result))
    return PerImageEval(
        image_ids=tuple(int(i) for i in params.imgIds),
        category_ids=tuple(int(c) for c in params.catIds),
        recall_thresholds=np.asarray(params.recThrs, dtype=float),
        iou_thresholds=np.asarray(params.iouThrs, dtype=float),
        rankings=tuple(_category_ranking(by_category.get(k, []), n_images, n_thresholds) for k in range(len(params.catIds))),
    )


def _image_result(entry: dict, max_detections: int) -> ImageResult:
    return ImageResult(
        scores=np.asarray(entry["dtScores"][:max_detections], dtype=float),
        matched=np.asarray(entry["dtMatches"][:, :max_detections]) != 0,
        ignored=np.asarray(entry["dtIgnore"][:, :max_detections], dtype=bool),
        ground_truths=int(np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0)),
    )


def _category_ranking(parts: list[tuple[int, ImageResult]], n_images: int, n_thresholds: int) -> CategoryRanking:
    """One category's results ``(image position, ImageResult)`` in image order, concatenated and
    sorted by descending score with a stable mergesort, as ``accumulate()`` does, and listed as
    :class:`CategoryRanking` keeps them."""
    ground_truths = np.zeros(n_images)
    for i, result in parts:
        ground_truths[i] = result.ground_truths
    if not parts:
        empty = np.zeros((n_thresholds, 0), np.int64)
        return CategoryRanking(ground_truths, 0, np.zeros(0, np.int64), empty, empty, empty, empty)
    order = np.argsort(-np.concatenate([r.scores for _, r in parts]), kind="mergesort")
    image_index = np.concatenate([np.full(r.scores.size, i) for i, r in parts])[order]
    matched = np.concatenate([r.matched for _, r in parts], axis=1)[:, order]
    ignored = np.concatenate([r.ignored for _, r in parts], axis=1)[:, order]
    true_positive, false_positive = matched & ~ignored, ~matched & ~ignored
    always = false_positive.all(axis=0)
    always_positions = np.flatnonzero(always)
    hit_positions = [np.flatnonzero(row) for row in true_positive]
    other_positions = [np.flatnonzero(row & ~always) for row in false_positive]
    return CategoryRanking(
        ground_truths=ground_truths,
        detections=int(order.size),
        always_false=image_index[always_positions],
        hits=_padded([image_index[h] for h in hit_positions], n_images),
        always_false_before=_padded([np.searchsorted(always_positions, h) for h in hit_positions], always_positions.size),
        other_false=_padded([image_index[o] for o in other_positions], n_images),
        other_false_before=_padded([np.searchsorted(o, h) for o, h in zip(other_positions, hit_positions)],
                                   [o.size for o in other_positions]),
    )


def _padded(rows: list[np.ndarray], pad) -> np.ndarray:
    """``rows`` as one (len(rows), longest) int array, each row padded with ``pad`` (one value, or one per row)."""
    pads = np.broadcast_to(pad, (len(rows),))
    out = np.empty((len(rows), max(row.size for row in rows)), dtype=np.int64)
    for row, values, fill in zip(out, rows, pads):
        row[:values.size], row[values.size:] = values, fill
    return out
