"""The two evaluation backends side by side: pycocotools vs faster-coco-eval on a COCO-sized set.

A synthetic, seeded set shaped like COCO val2017 (5,000 images of 640x480, 480x640 or 640x427
pixels; 80 categories; Poisson(7.3) instances per image, 1% of them crowd; box sides log-uniform
from 8 to 400 pixels, giving 41/28/31% small/medium/large mask areas, COCO val2017 41/34/24%)
and detections shaped like a detector's: each non-crowd object found with probability 0.85
(box and mask jittered by ~8% of its size, score ~ Beta(4, 2)), the rest of the image's fixed
100 detections false positives (random objects, a third of them in a category the image has,
score ~ Beta(1, 6)). Scores are rounded to 6 decimals and boxes to 1/1000 pixel, as
:func:`tasks.data.coco_format.od_api_to_coco` stores them. Ground-truth objects are 16-vertex
polygons (ellipses with jittered radii); mask detections are compressed RLEs of the jittered
polygons.

Times are ``evaluate()`` + ``accumulate()`` + ``summarize()`` in seconds of wall time, for the
evaluator as :func:`tasks.score.evaluation.evaluate_task` builds it (``per_image=True``); building the
ground truth and ``loadRes`` are not timed. Each row checks that the 12 ``COCOeval.stats`` are
bit-identical between the backends (``identical``); where they are not, the run fails unless the
difference is pycocotools' precision epsilon (see :func:`compare_backends`).

    .venv/bin/python bench/evaluation.py [--images 5000] [--seed 0]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time

import numpy as np
from pycocotools import mask as mask_utils
from tabulate import tabulate

from tasks.score.evaluation import (
    backend_ground_truth,
    ground_truth,
    make_evaluator,
    run_evaluator,
)

IMAGE_SIZES = ((640, 480), (480, 640), (640, 427))  # (width, height), pixels
CATEGORY_IDS = tuple(range(1, 81))
INSTANCES_PER_IMAGE = 7.3  # mean of COCO val2017 (36,781 instances in 5,000 images)
CROWD_FRACTION = 0.01
OBJECT_SIDE = (8.0, 400.0)  # pixels, log-uniform: sqrt of the box area
POLYGON_VERTICES = 16
RECALL = 0.85  # probability that a non-crowd object is detected
JITTER = 0.08  # standard deviation of a detection's shift and scale, in object sizes
# Detections per image, as quantbench keeps them (min_score 0): a TF OD API detector's fixed 100
# outputs, boxes or (Mask R-CNN) boxes with masks.
DETECTIONS_PER_IMAGE = {"bbox": 100, "segm": 100}


def _polygons(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
    """``count`` random objects in a ``width`` x ``height`` image: closed polygons, one per row
    ``[x0, y0, x1, y1, ...]`` in pixels (float, 1/100 pixel)."""
    side = np.exp(rng.uniform(*np.log(OBJECT_SIDE), count))
    aspect = np.exp(rng.normal(0, 0.5, count))
    half_w, half_h = np.minimum(side * aspect**0.5, width) / 2, np.minimum(side / aspect**0.5, height) / 2
    cx, cy = rng.uniform(half_w, width - half_w), rng.uniform(half_h, height - half_h)
    angles = np.linspace(0, 2 * np.pi, POLYGON_VERTICES, endpoint=False)
    radii = rng.uniform(0.8, 1.0, (count, POLYGON_VERTICES))
    xs = np.clip(cx[:, None] + half_w[:, None] * radii * np.cos(angles), 0, width)
    ys = np.clip(cy[:, None] + half_h[:, None] * radii * np.sin(angles), 0, height)
    return np.round(np.stack([xs, ys], axis=2).reshape(count, 2 * POLYGON_VERTICES), 2)


def _boxes(polygons: np.ndarray) -> np.ndarray:
    """Each polygon's extent ``[x, y, width, height]`` in pixels, one per row."""
    xs, ys = polygons[:, 0::2], polygons[:, 1::2]
    low = np.column_stack([xs.min(axis=1), ys.min(axis=1)])
    return np.column_stack([low, np.column_stack([xs.max(axis=1), ys.max(axis=1)]) - low])


def synthetic_ground_truth(images: int, rng: np.random.Generator) -> dict:
    """A COCO instances document of ``images`` images (ids from 1); ``area`` is the mask area."""
    document = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]}
    for image_id in range(1, images + 1):
        width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
        document["images"].append({"id": image_id, "width": width, "height": height})
        polygons = _polygons(rng, rng.poisson(INSTANCES_PER_IMAGE), width, height)
        areas = mask_utils.area(mask_utils.frPyObjects(polygons.tolist(), height, width)) if len(polygons) else []
        categories, crowd = rng.choice(CATEGORY_IDS, len(polygons)), rng.random(len(polygons)) < CROWD_FRACTION
        for polygon, box, area, category_id, iscrowd in zip(polygons.tolist(), _boxes(polygons).tolist(), areas, categories, crowd):
            document["annotations"].append({"id": len(document["annotations"]) + 1, "image_id": image_id, "category_id": int(category_id),
                                            "segmentation": [polygon], "area": float(area), "bbox": box, "iscrowd": int(iscrowd)})
    return document


def _jittered(polygons: np.ndarray, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """``polygons`` (one per row) shifted and scaled about their centres by ~``JITTER`` of their
    size, kept in the image."""
    points = polygons.reshape(len(polygons), POLYGON_VERTICES, 2)
    centres, sizes = points.mean(axis=1, keepdims=True), np.ptp(points, axis=1, keepdims=True)
    shifts, scales = rng.normal(0, JITTER, (2, len(polygons), 1, 2))
    moved = centres + sizes * shifts + (points - centres) * np.exp(scales)
    return np.clip(moved, 0, [width, height]).reshape(polygons.shape)


def _image_detections(image: dict, objects: list[dict], count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` detections of one image: (category ids, polygons one per row, scores)."""
    width, height = image["width"], image["height"]
    found = [o for o in objects if not o["iscrowd"] and rng.random() < RECALL][:count]
    false = count - len(found)
    present = [o["category_id"] for o in objects] or list(CATEGORY_IDS)
    in_present = rng.random(false) < 1 / 3
    categories = np.concatenate([[o["category_id"] for o in found],
                                 np.where(in_present, rng.choice(present, false), rng.choice(CATEGORY_IDS, false))]).astype(int)
    found_polygons = np.reshape([o["segmentation"][0] for o in found], (len(found), 2 * POLYGON_VERTICES))
    polygons = np.concatenate([_jittered(found_polygons, rng, width, height), _polygons(rng, false, width, height)])
    scores = np.concatenate([rng.beta(4, 2, len(found)), rng.beta(1, 6, false)])
    return categories, polygons, scores


def synthetic_detections(document: dict, iou_type: str, rng: np.random.Generator) -> list[dict]:
    """COCO results for ``document``: ``DETECTIONS_PER_IMAGE[iou_type]`` per image, with a ``bbox``
    (``"bbox"``) or a compressed RLE ``segmentation`` (``"segm"``)."""
    objects: dict[int, list[dict]] = {image["id"]: [] for image in document["images"]}
    for annotation in document["annotations"]:
        objects[annotation["image_id"]].append(annotation)
    detections = []
    for image in document["images"]:
        categories, polygons, scores = _image_detections(image, objects[image["id"]], DETECTIONS_PER_IMAGE[iou_type], rng)
        if iou_type == "segm":
            masks = mask_utils.frPyObjects(polygons.tolist(), image["height"], image["width"])
            geometry = [{"segmentation": {"size": m["size"], "counts": m["counts"].decode()}} for m in masks]
        else:
            geometry = [{"bbox": box} for box in np.round(_boxes(polygons), 3).tolist()]
        detections += [{"image_id": image["id"], "category_id": category_id, "score": score, **shape}
                       for category_id, score, shape in zip(categories.tolist(), np.round(scores, 6).tolist(), geometry)]
    return detections


def _timed_run(gt, detections: list[dict], image_ids: list[int], iou_type: str, backend: str) -> tuple[float, object]:
    """(seconds of evaluate + accumulate + summarize, the evaluator) of one backend."""
    evaluator = make_evaluator(gt, detections, image_ids, iou_type, backend, per_image=True)
    started = time.perf_counter()
    run_evaluator(evaluator)
    return time.perf_counter() - started, evaluator


def _without_epsilon(evaluator) -> np.ndarray:
    """A run pycocotools evaluator's stats with its precision epsilon taken out: its
    ``tp / (tp + fp + np.spacing(1))`` is 1 - 2**-52 (instead of 1.0) for one true positive out
    of one detection, the only precision where faster-coco-eval's ``tp / (tp + fp)`` differs."""
    precision = evaluator.eval["precision"]
    precision[precision == 1 / (1 + np.spacing(1))] = 1.0
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return evaluator.stats


def compare_backends(images: int = 5000, seed: int = 0) -> list[dict]:
    """One row per IoU type (bbox, segm): ``{"iou_type", "images", "detections", "pycocotools_s",
    "faster_coco_eval_s", "speedup", "identical"}`` (seconds; speedup = pycocotools_s /
    faster_coco_eval_s; identical: the 12 stats are equal bit for bit). Raises AssertionError
    when they differ by more than pycocotools' precision epsilon explains (a last-bit AP
    difference, see tasks/score/evaluation.py), i.e. unless faster-coco-eval's stats are bit for bit
    pycocotools' with that epsilon taken out."""
    rng = np.random.default_rng(seed)
    document = synthetic_ground_truth(images, rng)
    image_ids = [image["id"] for image in document["images"]]
    rows = []
    for iou_type in ("bbox", "segm"):
        detections = synthetic_detections(document, iou_type, rng)
        slow_s, slow = _timed_run(ground_truth(document), detections, image_ids, iou_type, "pycocotools")
        slow_stats = slow.stats.copy()
        explained = _without_epsilon(slow)
        del slow  # its 1.6 million per-image dicts (5000 images), before the other backend runs
        fast_s, fast = _timed_run(backend_ground_truth(ground_truth(document), "faster-coco-eval"), detections, image_ids,
                                  iou_type, "faster-coco-eval")
        identical = bool(np.array_equal(slow_stats, fast.stats))
        assert identical or np.array_equal(explained, fast.stats), \
            f"{iou_type}: pycocotools {slow_stats.tolist()} != faster-coco-eval {fast.stats.tolist()}"
        rows.append({"iou_type": iou_type, "images": images, "detections": len(detections), "pycocotools_s": round(slow_s, 2),
                     "faster_coco_eval_s": round(fast_s, 2), "speedup": round(slow_s / fast_s, 1), "identical": identical})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="synthetic images (COCO val2017 has 5000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(tabulate(compare_backends(args.images, args.seed), headers="keys", tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
