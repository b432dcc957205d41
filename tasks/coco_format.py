"""The one place where TF Object Detection API outputs become COCO results.

TF OD API detection outputs (per image, batch dimension removed):

- ``detection_boxes``: float ``[N, 4]``, **normalised** ``[ymin, xmin, ymax, xmax]`` in [0, 1],
  relative to the image the model saw. Resizing the image to the model's input size (stretching,
  no padding) leaves normalised coordinates unchanged, so they are relative to the original image.
- ``detection_scores``: float ``[N]``, sorted or not.
- ``detection_classes``: float ``[N]``, label-map ids; for TF OD API models these *are* COCO
  category ids (1..90 with gaps).
- ``num_detections``: the number of valid leading rows (optional; all rows otherwise).

COCO results (what ``COCO.loadRes`` and ``COCOeval`` expect), one dict per detection:
``{"image_id": int, "category_id": int, "bbox": [x, y, width, height], "score": float}`` with
``x, y`` the top-left corner and all four in **pixels of the original image** (the frame of the
annotations' ``width``/``height``).

Getting this wrong (comparing normalised yxyx with pixel xywh) gives mAP ≈ 0.0004 for every model;
the oracle tests prove this conversion gives AP = 1.000 on ground truth.
"""
from __future__ import annotations

import numpy as np


def od_api_to_coco(
    image_id: int,
    image_width: int,
    image_height: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    num_detections: int | None = None,
    min_score: float = 0.0,
) -> list[dict]:
    """Convert one image's TF OD API outputs to COCO result dicts.

    Boxes are clipped to the image; boxes with no area after clipping, and detections scoring
    below ``min_score``, are dropped. Coordinates are rounded to 1/1000 pixel.
    """
    count = len(scores) if num_detections is None else int(num_detections)
    boxes = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:count], 0.0, 1.0)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)[:count]
    classes = np.asarray(classes).reshape(-1)[:count]
    ymin, xmin, ymax, xmax = boxes.T
    x, y = xmin * image_width, ymin * image_height
    width, height = (xmax - xmin) * image_width, (ymax - ymin) * image_height
    keep = (scores >= min_score) & (width > 0) & (height > 0)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(round(float(classes[i]))),
            "bbox": [round(float(x[i]), 3), round(float(y[i]), 3), round(float(width[i]), 3), round(float(height[i]), 3)],
            "score": round(float(scores[i]), 6),
        }
        for i in np.flatnonzero(keep)
    ]


def coco_to_od_api_boxes(bboxes_xywh: np.ndarray, image_width: int, image_height: int) -> np.ndarray:
    """Inverse of the box part of :func:`od_api_to_coco`: pixel ``[x, y, w, h]`` → normalised
    ``[ymin, xmin, ymax, xmax]``. Used to build oracle models and test fixtures."""
    b = np.asarray(bboxes_xywh, dtype=np.float64).reshape(-1, 4)
    return np.stack(
        [b[:, 1] / image_height, b[:, 0] / image_width, (b[:, 1] + b[:, 3]) / image_height, (b[:, 0] + b[:, 2]) / image_width],
        axis=1,
    )
