"""Evaluation: COCO mAP of a variant's detections with pycocotools ``COCOeval`` (bbox).

Only the images the variant actually processed are evaluated (``params.imgIds``); images that
failed to decode are listed in the report instead of counting as misses. An empty detection list
is evaluated as such (AP 0 where there is ground truth) instead of crashing ``loadRes``.
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

from tasks.store import split_url

# COCOeval.stats, in order (maxDets 100 unless named otherwise).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def ground_truth(document: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(document)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results(gt: COCO, detections: list[dict]) -> COCO:
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(copy.deepcopy(detections))
    empty = COCO()
    empty.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def evaluate(gt: COCO, detections: list[dict], image_ids: list[int], iou_type: str = "bbox") -> dict:
    """The 12 COCO summary stats and per-category AP (IoU .5:.95, all areas, 100 dets).

    Returns ``{"stats": {name: value}, "per_category_AP": {category name: AP}, "images": n}``;
    a stat is -1 where COCO defines none (no ground truth in that area range).
    """
    evaluator = COCOeval(gt, _results(gt, detections), iou_type)
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
        per_category[gt.cats[category_id]["name"]] = float(np.mean(values)) if values.size else -1.0
    return {
        "stats": {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)},
        "per_category_AP": per_category,
        "images": len(image_ids),
    }


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(annotations_url: str, detections_url: str, image_ids: list[int]) -> dict:
    """Evaluate stored detections against the annotations (a local path or store URL)."""
    from tasks.dataset import read_annotations

    store, key = split_url(detections_url)
    return evaluate(ground_truth(read_annotations(annotations_url)), store.read_json(key), image_ids)
