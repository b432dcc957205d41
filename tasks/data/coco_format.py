"""The one place where TF Object Detection API outputs become COCO results.

TF OD API detection outputs (per image, batch dimension removed):

- ``detection_boxes``: float ``[N, 4]``, **normalised** ``[ymin, xmin, ymax, xmax]`` in [0, 1],
  relative to the image the model saw. Resizing the image to the model's input size (stretching,
  no padding) leaves normalised coordinates unchanged, so they are relative to the original image.
- ``detection_scores``: float ``[N]``, sorted or not.
- ``detection_classes``: float ``[N]``, label-map ids; for TF OD API models these *are* COCO
  category ids (1..90 with gaps).
- ``num_detections``: the number of valid leading rows (optional; all rows otherwise).
- ``detection_masks`` (mask models only, e.g. Mask R-CNN): float ``[N, mh, mw]`` in [0, 1]
  (33x33 for the TF2 zoo), each **relative to its own box** in ``detection_boxes``: row 0 lies on
  the box's top edge, row ``mh - 1`` on its bottom edge. They become binary image masks exactly as
  the TF OD API's ``reframe_box_masks_to_image_masks`` + ``> 0.5`` does (see :mod:`tasks.data.masks`
  for the precise sampling), using the boxes as the model gave them (not clipped first).

COCO results (what ``COCO.loadRes`` and ``COCOeval`` expect), one dict per detection:
``{"image_id": int, "category_id": int, "bbox": [x, y, width, height], "score": float}`` with
``x, y`` the top-left corner and all four in **pixels of the original image** (the frame of the
annotations' ``width``/``height``). With masks, each dict also has
``"segmentation": {"size": [height, width], "counts": str}``: compressed RLE (not polygons: a
1024x1024 mask stays a few kB of JSON) of the original-size binary mask.

Getting this wrong (comparing normalised yxyx with pixel xywh) gives mAP ≈ 0.0004 for every model;
the oracle tests prove this conversion gives AP = 1.000 on ground truth (boxes:
tests/test_coco_mini.py; boxes and masks: tests/test_masks.py).
"""
from __future__ import annotations

import numpy as np

from tasks.data.masks import encode_box_masks_rle


def od_api_to_coco(
    image_id: int,
    image_width: int,
    image_height: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    num_detections: int | None = None,
    min_score: float = 0.0,
    masks: np.ndarray | None = None,
    *,
    mask_align_corners: bool = True,
) -> list[dict]:
    """Convert one image's TF OD API outputs to COCO result dicts.

    Boxes are clipped to the image; boxes with no area after clipping, and detections scoring
    below ``min_score``, are dropped. Coordinates are rounded to 1/1000 pixel.

    ``masks`` (``detection_masks``, box-relative ``[N, mh, mw]``, same rows as ``boxes``) adds a
    ``"segmentation"`` RLE to every returned detection: the mask reframed onto the
    ``image_height x image_width`` image with its unclipped box and thresholded at 0.5
    (:func:`tasks.data.masks.reframe_box_masks`; ``mask_align_corners=False`` selects the half-pixel
    convention instead of the TF OD API's).
    """
    count = len(scores) if num_detections is None else int(num_detections)
    raw_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:count]
    boxes = np.clip(raw_boxes, 0.0, 1.0)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)[:count]
    classes = np.asarray(classes).reshape(-1)[:count]
    ymin, xmin, ymax, xmax = boxes.T
    x, y = xmin * image_width, ymin * image_height
    width, height = (xmax - xmin) * image_width, (ymax - ymin) * image_height
    keep = (scores >= min_score) & (width > 0) & (height > 0)
    detections = [
        {
            "image_id": int(image_id),
            "category_id": int(round(float(classes[i]))),
            "bbox": [round(float(x[i]), 3), round(float(y[i]), 3), round(float(width[i]), 3), round(float(height[i]), 3)],
            "score": round(float(scores[i]), 6),
        }
        for i in np.flatnonzero(keep)
    ]
    if masks is not None:
        masks = np.asarray(masks)
        if len(masks) < len(raw_boxes):
            raise ValueError(f"{len(masks)} masks for {len(raw_boxes)} detections")
        kept = np.flatnonzero(keep)
        rles = encode_box_masks_rle(masks[:count][kept], raw_boxes[kept], image_height, image_width, align_corners=mask_align_corners)
        for detection, rle in zip(detections, rles):
            detection["segmentation"] = rle
    return detections


def coco_to_od_api_boxes(bboxes_xywh: np.ndarray, image_width: int, image_height: int) -> np.ndarray:
    """Inverse of the box part of :func:`od_api_to_coco`: pixel ``[x, y, w, h]`` → normalised
    ``[ymin, xmin, ymax, xmax]``. Used to build oracle models and test fixtures."""
    b = np.asarray(bboxes_xywh, dtype=np.float64).reshape(-1, 4)
    return np.stack(
        [b[:, 1] / image_height, b[:, 0] / image_width, (b[:, 1] + b[:, 3]) / image_height, (b[:, 0] + b[:, 2]) / image_width],
        axis=1,
    )
