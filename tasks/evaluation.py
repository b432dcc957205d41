"""Evaluation: COCO mAP of a variant's detections with pycocotools ``COCOeval`` (bbox, and segm
when the detections carry ``segmentation`` RLEs from a mask model).

Only the images the variant actually processed are evaluated (``params.imgIds``); images that
failed to decode are listed in the report instead of counting as misses. An empty detection list
is evaluated as such (AP 0 where there is ground truth) instead of crashing ``loadRes``.

Each IoU type sees only its own geometry: ``COCO.loadRes`` takes a result's ``area`` (which decides
small/medium/large and so which unmatched detections are ignored per area range) from ``bbox``
whenever a result has one, even when evaluating masks. So for ``segm`` the results are passed
without ``bbox`` (area = mask area, box = the mask's bounding box, as detectron2 does), and for
``bbox`` without ``segmentation`` (same numbers as before, minus copying the RLEs).
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.errors import STORE_RETRIES
from tasks.store import split_url

# COCOeval.stats, in order (maxDets 100 unless named otherwise).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def ground_truth(document: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(document)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


IOU_TYPES = ("bbox", "segm")


def has_segmentation(detections: list[dict]) -> bool:
    """Whether the detections carry ``segmentation`` (all of them, or none: mixed lists are refused)."""
    with_masks = sum("segmentation" in d for d in detections)
    if 0 < with_masks < len(detections):
        raise ValueError(f"only {with_masks} of {len(detections)} detections have a segmentation")
    return with_masks > 0


def _results(gt: COCO, detections: list[dict], iou_type: str = "bbox") -> COCO:
    if detections:
        if iou_type == "segm":
            if not has_segmentation(detections):
                raise ValueError("segm evaluation needs detections with a 'segmentation' (RLE)")
            own = [{k: v for k, v in d.items() if k != "bbox"} for d in detections]
        else:
            own = [{k: v for k, v in d.items() if k != "segmentation"} if "bbox" in d else d for d in detections]
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(copy.deepcopy(own))
    empty = COCO()
    empty.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def defined(value: float) -> float | None:
    """A COCOeval number, or None where COCO defines none (its -1 sentinel): never compute with -1."""
    return float(value) if value > -1 else None


def evaluate(gt: COCO, detections: list[dict], image_ids: list[int], iou_type: str = "bbox", per_image: bool = False) -> dict:
    """The 12 COCO summary stats and per-category AP (IoU .5:.95, all areas, 100 dets).

    ``iou_type`` is ``"bbox"`` or ``"segm"`` (the detections' ``segmentation`` RLEs, judged with
    mask areas). Returns ``{"stats": {name: value}, "per_category_AP": {category name: AP},
    "images": n}``; a value is None where COCO defines none (pycocotools' -1: no ground truth in
    that area range or category), and every stat is None when no image was evaluated. With
    ``per_image``, also ``"per_image"``: the same evaluation's per-image matching
    (:class:`tasks.significance.PerImageEval`, None without images), for bootstrap CIs.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, not {iou_type!r}")
    if not image_ids:
        return {"stats": dict.fromkeys(STAT_NAMES), "per_category_AP": {c["name"]: None for c in gt.dataset["categories"]}, "images": 0,
                **({"per_image": None} if per_image else {})}
    evaluator = COCOeval(gt, _results(gt, detections, iou_type), iou_type)
    evaluator.params.imgIds = sorted(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [IoU, recall, category, area, maxDets]
    per_category = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_category[gt.cats[category_id]["name"]] = float(np.mean(values)) if values.size else None
    result = {
        "stats": {name: defined(value) for name, value in zip(STAT_NAMES, evaluator.stats)},
        "per_category_AP": per_category,
        "images": len(image_ids),
    }
    if per_image:
        from tasks.significance import per_image_from_evaluator

        result["per_image"] = per_image_from_evaluator(evaluator)
    return result


def evaluate_all(gt: COCO, detections: list[dict], image_ids: list[int], segm: bool | None = None, per_image: bool = False) -> dict:
    """``{"bbox": evaluate(..., "bbox"), "segm": evaluate(..., "segm")}``; ``"segm"`` is there when
    ``segm`` is true, or (``segm=None``) when the detections carry segmentations. Pass ``segm=True``
    for a mask model so that a run with no detections at all still reports (zero) mask AP."""
    if segm is None:
        segm = has_segmentation(detections)
    results = {"bbox": evaluate(gt, detections, image_ids, "bbox", per_image)}
    if segm:
        results["segm"] = evaluate(gt, detections, image_ids, "segm", per_image)
    return results


@task(name="evaluate", cache_policy=NO_CACHE, **STORE_RETRIES)
def evaluate_task(annotations_url: str, detections_url: str, image_ids: list[int]) -> dict:
    """Evaluate stored detections against the annotations (a local path or store URL).

    Returns :func:`evaluate`'s bbox result; when the detections carry segmentations it also has a
    ``"segm"`` key holding the same structure for masks (bbox-only detections: unchanged). Its
    ``"per_image"`` holds each IoU type's per-image matching: ``{"bbox": PerImageEval, "segm": …}``."""
    from tasks.dataset import read_annotations

    store, key = split_url(detections_url)
    results = evaluate_all(ground_truth(read_annotations(annotations_url)), store.read_json(key), image_ids, per_image=True)
    per_image = {iou_type: result.pop("per_image") for iou_type, result in results.items()}
    return {**results["bbox"], **({"segm": results["segm"]} if "segm" in results else {}), "per_image": per_image}
