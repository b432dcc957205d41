"""Deterministic synthetic COCO-format detection dataset: coloured shapes on noisy backgrounds.

Each split is a folder ``<root>/<split>/`` holding JPEG images and ``instances_<split>.json`` in
COCO instances format. Boxes are COCO ``[x, y, width, height]`` in pixels of the image; every
annotation has ``segmentation`` (one polygon, absolute pixel coordinates), ``area`` (polygon
area, pixels²) and ``iscrowd`` = 0. Image sizes vary and are not square, so a model with a fixed
input size must resize (and the box conversion must undo it correctly).

Category ids are deliberately non-contiguous (1, 3, 7), as COCO's are (1..90 with gaps), so a
pipeline that confuses class indices with category ids fails visibly.

The same (split, count, seed) always produces byte-identical annotations and pixel-identical
images.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
]
MIN_SIDE, MAX_SIDE = 128, 224  # image width/height range, pixels
MIN_OBJECT, MAX_OBJECT = 18, 72  # object size range, pixels
MAX_OBJECTS = 4
MAX_OVERLAP_IOU = 0.1


@dataclass(frozen=True)
class Split:
    """A named split of the demo dataset: how many images, from which seed."""

    name: str
    count: int
    seed: int


TRAIN = Split("train", 2000, seed=0)
VAL = Split("val", 200, seed=1)  # held out: never used for training
CALIBRATION = Split("calib", 100, seed=2)  # disjoint from both, for calibration data


def _polygon(category: str, cx: float, cy: float, size: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    r = size / 2
    if category == "circle":
        return [(cx + r * math.cos(2 * math.pi * k / 32), cy + r * math.sin(2 * math.pi * k / 32)) for k in range(32)]
    if category == "square":
        angle = rng.uniform(0, math.pi / 2)
        return [(cx + r * math.cos(angle + k * math.pi / 2), cy + r * math.sin(angle + k * math.pi / 2)) for k in range(4)]
    angle = rng.uniform(0, 2 * math.pi)
    return [(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]


def _polygon_area(points: list[tuple[float, float]]) -> float:
    xs, ys = np.array(points).T
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def _iou(a: list[float], b: list[float]) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    base = rng.integers(0, 256, size=3)
    gradient = np.linspace(0, 1, width)[None, :, None] * rng.integers(-60, 61, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(base + gradient + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _contrasting_colour(background: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).sum() > 150:
            break
    return tuple(int(c) for c in colour)


def render_image(image_id: int, rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """Draw one image; return it and its annotations (without ``id``)."""
    width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    image = _background(width, height, rng)
    mean_background = np.asarray(image).reshape(-1, 3).mean(axis=0)
    draw = ImageDraw.Draw(image)
    annotations: list[dict] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        size = float(rng.uniform(MIN_OBJECT, min(MAX_OBJECT, width * 0.6, height * 0.6)))
        cx = float(rng.uniform(size / 2, width - size / 2))
        cy = float(rng.uniform(size / 2, height - size / 2))
        points = _polygon(category["name"], cx, cy, size, rng)
        xs, ys = zip(*points)
        x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
        bbox = [x0, y0, min(float(width), max(xs)) - x0, min(float(height), max(ys)) - y0]
        if any(_iou(bbox, other["bbox"]) > MAX_OVERLAP_IOU for other in annotations):
            continue
        draw.polygon(points, fill=_contrasting_colour(mean_background, rng))
        annotations.append(
            {
                "image_id": image_id,
                "category_id": category["id"],
                "bbox": [round(v, 2) for v in bbox],
                "area": round(_polygon_area(points), 2),
                "segmentation": [[round(c, 2) for point in points for c in point]],
                "iscrowd": 0,
            }
        )
    return image, annotations


def generate(root: Path, split: Split = VAL) -> Path:
    """Write ``split`` under ``root/<split.name>/`` and return the path of its annotations JSON.

    Idempotent: if the annotations file already exists the split is assumed complete (it is
    written last, atomically).
    """
    folder = Path(root) / split.name
    annotations_path = folder / f"instances_{split.name}.json"
    if annotations_path.exists():
        return annotations_path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(split.seed)
    images, annotations = [], []
    first_id = {"train": 1, "val": 100_001, "calib": 200_001}.get(split.name, 1)
    for image_id in range(first_id, first_id + split.count):
        image, image_annotations = render_image(image_id, rng)
        file_name = f"{image_id:012d}.jpg"
        image.save(folder / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        annotations.extend(image_annotations)
    for annotation_id, annotation in enumerate(annotations, start=1):
        annotation["id"] = annotation_id
    document = {
        "info": {"description": f"quantbench synthetic shapes, split {split.name}, seed {split.seed}"},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    partial = annotations_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document))
    partial.replace(annotations_path)
    return annotations_path
