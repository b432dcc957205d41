"""Class-aware non-maximum suppression, vectorised with numpy.

Greedy, as torchvision's ``batched_nms`` (which the YOLO families, YOLOX and NanoDet call): boxes
in descending score order (stable for ties); a box is kept unless it overlaps an already kept box
*of the same class* with IoU above the threshold (``batched_nms`` separates classes by shifting
their boxes apart; here each box is only compared with its own class). IoU = intersection / union of ``[x1, y1, x2, y2]`` boxes, areas without the
+1 pixel convention; a 0/0 IoU (degenerate boxes) suppresses nothing, as in torchvision.
"""
from __future__ import annotations

import numpy as np

MAX_CANDIDATES = 30_000  # Ultralytics' max_nms: at most this many top-scoring candidates enter NMS


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
        max_detections: int | None = None) -> np.ndarray:
    """Indices into ``boxes`` (``[N, 4]`` x1, y1, x2, y2) of the kept boxes, highest score first,
    at most ``max_detections``. ``classes``: ``[N]`` integer classes (NMS is per class).

    Each kept box is compared, in one vectorised step, with the later boxes of its own class that
    are still alive; boxes of other classes are never compared (they cannot overlap in
    ``batched_nms`` either), so the work per kept box is its class's size, not N."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:MAX_CANDIDATES]
    x1, y1, x2, y2 = np.asarray(boxes, dtype=np.float64)[order].T
    areas = (x2 - x1) * (y2 - y1)
    classes = np.asarray(classes)[order]
    by_class = {c: np.flatnonzero(classes == c) for c in np.unique(classes)}  # ascending: in score order
    alive = np.ones(len(order), dtype=bool)
    limit = len(order) if max_detections is None else max_detections
    kept = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for best in range(len(order)):
            if len(kept) == limit:
                break
            if not alive[best]:
                continue
            kept.append(best)
            members = by_class[classes[best]]
            later = members[np.searchsorted(members, best, side="right"):]
            later = later[alive[later]]
            if not later.size:
                continue
            width = np.minimum(x2[best], x2[later]) - np.maximum(x1[best], x1[later])
            height = np.minimum(y2[best], y2[later]) - np.maximum(y1[best], y1[later])
            intersection = np.maximum(width, 0.0) * np.maximum(height, 0.0)
            overlap = intersection / (areas[best] + areas[later] - intersection)
            alive[later[overlap > iou_threshold]] = False  # a 0/0 overlap (nan) suppresses nothing
    return order[np.asarray(kept, dtype=np.int64)]
