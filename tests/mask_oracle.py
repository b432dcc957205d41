"""Mask oracle: COCO ground truth expressed as TF OD API mask-model outputs (normalised yxyx boxes,
float classes, scores, and box-relative ``detection_masks``), such that
:func:`tasks.data.masks.reframe_box_masks` (half-pixel convention, ``align_corners=False``) gives back
the ground-truth masks **pixel for pixel**, so the COCO conversion must score AP = 1 exactly.

Why the round trip is exact (see tasks/data/masks.py for the sampling):

1. Which pixels are sampled. The box is the annotation's ``bbox`` normalised by ``W, H``
   (float64, :func:`tasks.data.coco_format.coco_to_od_api_boxes`). In the half-pixel convention pixel
   ``i`` is inside iff ``y / H <= (i + 0.5) / H <= (y + h) / H``, which (division by the same
   ``H`` is correctly rounded, hence monotone) holds iff its centre ``i + 0.5`` lies in
   ``[y, y + h]``. pycocotools rasterises polygons to pixels whose centres lie in the polygon's
   bbox (all 1,430 non-crowd coco-mini annotations; 18 touch the bbox edge exactly, which is why
   the comparison must be exact and the boxes float64), and an RLE's own bbox (``toBbox``) is its
   pixel extent (crowd rows use it: COCO's crowd ``bbox`` fields are 1 px short): every
   ground-truth pixel is sampled, and pixels outside the box are 0 on both sides.
2. What each sampled pixel reads. The box mask has at least 2 cells per pixel along each axis
   (``mh >= 2 h + 1`` for a box ``h`` pixels tall). Pixel ``i`` samples the fractional cell
   ``m_i``, the next pixel ``m_i + s`` with ``s >= 2``, so the two cells ``floor(m_i)``,
   ``floor(m_i) + 1`` that pixel ``i`` interpolates between are closer to ``m_i`` than to any other
   pixel's sample point. The oracle fills every cell with the ground-truth value of the pixel whose
   sample point is nearest (the pixel whose square contains the cell centre): every 2x2
   interpolation stencil is constant, the interpolated value is exactly 0.0 or 1.0, and ``> 0.5``
   returns the ground truth. (Float rounding can only matter for a cell at distance ~1 from a
   sample point, whose bilinear weight is then ~0.)

Hence the RLE equals the ground truth's, mask IoU = 1, the boxes are the ground-truth boxes,
and both segm and bbox AP are 1.0.

The TF OD API convention (``align_corners=True``) cannot be inverted like this: it samples pixel
``i`` at ``i / (H - 1)``, up to half a pixel away from its centre, so pixels at a box edge can
fall outside the box they belong to (584 of the 1,430 non-crowd coco-mini instances lose pixels).
"""
from __future__ import annotations

import math

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tasks.data.coco_format import coco_to_od_api_boxes, od_api_to_coco

CELLS_PER_PIXEL = 2  # the minimum for an exact bilinear round trip (see the module docstring)
PADDING_ROWS = 2  # like a real model's fixed-size outputs: rows past num_detections are garbage


def oracle_mask_shape(boxes: np.ndarray, image_height: int, image_width: int) -> tuple[int, int]:
    """(mh, mw) giving every box more than ``CELLS_PER_PIXEL`` cells per pixel on both axes."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return 1, 1
    height = float(np.max(boxes[:, 2] - boxes[:, 0])) * image_height
    width = float(np.max(boxes[:, 3] - boxes[:, 1])) * image_width
    return math.ceil(CELLS_PER_PIXEL * height) + 1, math.ceil(CELLS_PER_PIXEL * width) + 1


def box_relative_masks(image_masks: np.ndarray, boxes: np.ndarray, mask_shape: tuple[int, int]) -> np.ndarray:
    """The inverse of ``reframe_box_masks(..., align_corners=False)``: binary image masks
    ``[N, H, W]`` with normalised yxyx boxes → float32 box masks ``[N, mh, mw]``.

    Cell ``(k, l)`` of box ``[ymin, xmin, ymax, xmax]`` sits at box-relative
    ``((k + 0.5) / mh, (l + 0.5) / mw)``, i.e. at pixel coordinates
    ``(ymin + (k + 0.5) / mh (ymax - ymin)) H`` etc.; it takes the value of the pixel containing
    that point (nearest pixel centre), clamped into the image."""
    image_masks = np.asarray(image_masks)
    count, height, width = image_masks.shape
    mh, mw = mask_shape
    out = np.zeros((count, mh, mw), np.float32)
    for k, (ymin, xmin, ymax, xmax) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        ys = (ymin + (np.arange(mh) + 0.5) / mh * (ymax - ymin)) * height
        xs = (xmin + (np.arange(mw) + 0.5) / mw * (xmax - xmin)) * width
        rows = np.clip(np.floor(ys), 0, height - 1).astype(np.intp)
        cols = np.clip(np.floor(xs), 0, width - 1).astype(np.intp)
        out[k] = image_masks[k][np.ix_(rows, cols)]
    return out


def _oracle_bbox(coco: COCO, annotation: dict) -> list[float]:
    """The annotation's bbox; for crowd RLEs the RLE's own bbox, because COCO's crowd ``bbox``
    fields are one pixel short of their masks (``w, h`` = extent - 1: all 14 in coco-mini), so the
    last column and row of the crowd region would lie outside the box."""
    if annotation["iscrowd"]:
        return mask_utils.toBbox(coco.annToRLE(annotation)).tolist()
    return annotation["bbox"]


def ground_truth_as_mask_model_outputs(coco: COCO, image: dict, include_crowd: bool = False) -> dict:
    """One image's ground truth as a TF OD API mask model's outputs (batch dimension removed),
    plus ``PADDING_ROWS`` garbage rows past ``num_detections`` and the ground truth itself
    (``annotations``, ``image_masks``) for checking."""
    annotations = sorted(
        (a for a in coco.imgToAnns[image["id"]] if include_crowd or not a["iscrowd"]), key=lambda a: a["id"]
    )
    height, width, n = image["height"], image["width"], len(annotations)
    boxes = coco_to_od_api_boxes([_oracle_bbox(coco, a) for a in annotations], width, height)  # float64: see docstring
    # pycocotools decodes polygons and uncompressed crowd RLE (frPyObjects), compressed RLE as is.
    image_masks = np.stack([coco.annToMask(a) for a in annotations]) if n else np.zeros((0, height, width), np.uint8)
    masks = box_relative_masks(image_masks, boxes, oracle_mask_shape(boxes, height, width))
    rng = np.random.default_rng(image["id"])
    pad_boxes = rng.uniform(0, 1, (PADDING_ROWS, 4))
    return {
        "detection_boxes": np.concatenate([boxes, np.sort(pad_boxes, axis=1)]),
        "detection_scores": np.concatenate([np.linspace(1.0, 0.5, n), np.full(PADDING_ROWS, 0.9)]),
        "detection_classes": np.array([a["category_id"] for a in annotations] + [1] * PADDING_ROWS, np.float32),
        "detection_masks": np.concatenate([masks, rng.uniform(0, 1, (PADDING_ROWS, *masks.shape[1:])).astype(np.float32)]),
        "num_detections": n,
        "annotations": annotations,
        "image_masks": image_masks,
    }


def ground_truth_mask_detections(coco: COCO, mask_transform=None) -> list[dict]:
    """Every non-crowd ground-truth instance of every image, through the model-outputs form and
    back by :func:`tasks.data.coco_format.od_api_to_coco` (``masks=``, half-pixel convention).
    ``mask_transform`` (box masks → box masks) lets a test corrupt the masks on the way."""
    detections = []
    for image_id in sorted(coco.imgs):
        image = coco.imgs[image_id]
        out = ground_truth_as_mask_model_outputs(coco, image)
        masks = out["detection_masks"] if mask_transform is None else mask_transform(out["detection_masks"])
        detections += od_api_to_coco(
            image_id, image["width"], image["height"], out["detection_boxes"], out["detection_scores"],
            out["detection_classes"], num_detections=out["num_detections"], masks=masks, mask_align_corners=False,
        )
    return detections
