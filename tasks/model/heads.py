"""Heads: how each detector family's raw outputs become detections.

Every head turns one image's outputs (batch of 1, integer outputs already dequantized) into
:class:`Detections` in the TF OD API's convention — boxes normalised ``[ymin, xmin, ymax, xmax]``
of the **original** image, letterbox and padding undone through the image's
:class:`~tasks.model.preprocess.Frame` — so :func:`tasks.data.coco_format.od_api_to_coco` stays
the one place where detections become COCO results. Classes stay the model's own (what they mean
is ``postprocess.classes``).

- ``odapi``: ``detection_boxes/scores/classes`` (+ ``num_detections``, ``detection_masks``) by name.
- ``ssd_postprocess``: the four outputs of ``TFLite_Detection_PostProcess`` (boxes ``[1, N, 4]``
  yxyx normalised, classes, scores ``[1, N]``, count ``[1]``), whatever their order: taken from
  the op's own output order in the graph, else told apart by shape and content (classes are whole
  numbers, scores are sorted).
- ``yolov8``: one output ``[1, 4+nc, N]`` (or ``[1, N, 4+nc]``): cx, cy, w, h, then class
  probabilities (no objectness).
- ``yolov5``: ``[1, N, 5+nc]``: cx, cy, w, h, objectness, class probabilities; score = obj x cls.
- ``yolox``: ``[1, N, 5+nc]``, raw (per stride: (dx + grid x) * stride, exp(log w) * stride) or
  already decoded to input pixels; score = obj x best class.
- ``nanodet``: ``[1, N, nc + 4 * (reg_max + 1)]``: sigmoided class scores, then per side (left,
  top, right, bottom) the DFL logits; distance = softmax(logits) . [0..reg_max] x stride from the
  prior ``((x + offset) * stride, (y + offset) * stride)``.
Heads after the raw outputs (YOLO families, NanoDet) select candidates above ``score_threshold``
and run class-aware NMS (:mod:`tasks.model.nms`), keeping ``max_detections``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tasks.model.nms import nms
from tasks.model.preprocess import Frame
from tasks.model.spec import HEADS, ModelSpec
from tasks.model.tensors import ModelIO
from tasks.store.errors import QuantbenchError

ODAPI_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes")
POSTPROCESS_OP = "TFLite_Detection_PostProcess"
ANCHOR_FREE_STRIDES = (8, 16, 32)  # YOLOv8/YOLO11, YOLOX
NANODET_STRIDES = (8, 16, 32, 64)


@dataclass(frozen=True)
class Detections:
    """One image's detections: ``boxes`` ``[N, 4]`` normalised ``[ymin, xmin, ymax, xmax]`` of the
    original image, ``scores`` ``[N]``, ``classes`` ``[N]`` (the model's class values), ``masks``
    ``[N, mh, mw]`` box-relative (mask models only)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None = None


def grid_cells(size: tuple[int, int], strides: tuple[int, ...]) -> int:
    """Prior points over feature maps of ``strides`` for an input of ``size`` (height, width)."""
    return sum(math.ceil(size[0] / s) * math.ceil(size[1] / s) for s in strides)


def _single_output(io: ModelIO) -> tuple[int, int] | None:
    """(a, b) of a model's only output shaped ``[1, a, b]``, else None."""
    if len(io.outputs) != 1 or len(io.outputs[0].shape) != 3 or io.outputs[0].shape[0] != 1:
        return None
    return io.outputs[0].shape[1], io.outputs[0].shape[2]


def _ssd_shapes(io: ModelIO) -> bool:
    shapes = sorted((tuple(o.shape) for o in io.outputs), key=len)
    if len(shapes) != 4:
        return False
    count, first, second, boxes = shapes
    return (len(boxes) == 3 and boxes[2] == 4 and len(first) == len(second) == 2 and first[1] == second[1] == boxes[1]
            and int(np.prod(count)) == 1)


def fits(head: str, io: ModelIO, spec: ModelSpec | None = None) -> bool:
    """Whether ``head`` can read ``io``'s outputs (shapes and names; strides from ``spec`` when set)."""
    names = {o.name for o in io.outputs}
    single = _single_output(io)
    size = io.input_size
    post = spec.postprocess if spec is not None else None
    if head == "odapi":
        return set(ODAPI_OUTPUTS) <= names
    if head == "ssd_postprocess":
        return _ssd_shapes(io)
    if single is None:
        return False
    a, b = single
    if head == "yolov8":
        return min(a, b) >= 5
    if head == "yolov5":
        return b >= 6 and a > b
    strides = (post.strides if post is not None and post.strides else None)
    if head == "yolox":
        strides = strides or ANCHOR_FREE_STRIDES
        return b >= 6 and (size is None or a == grid_cells(size, strides))
    if head == "nanodet":
        strides = strides or NANODET_STRIDES
        reg_max = post.reg_max if post is not None and post.reg_max else 7
        return b > 4 * (reg_max + 1) and (size is None or a == grid_cells(size, strides))
    raise ValueError(f"unknown head {head!r}")


def choose_head(spec: ModelSpec, io: ModelIO, model: str) -> str:
    """The head for ``io``: ``spec.head`` if it fits, or (``auto``) the one its names, ops, export
    metadata and output shapes point to. Anything else is one :class:`QuantbenchError` line
    naming the outputs and the heads that would fit."""
    fitting = [head for head in HEADS if fits(head, io, spec)]
    if spec.head != "auto":
        if spec.head in fitting:
            return spec.head
        raise QuantbenchError(f"head {spec.head} does not fit {model}: its outputs are {io.shown()}; "
                              f"heads that fit: {', '.join(fitting) or 'none'} (pass --head NAME)")
    chosen = _auto_head(io)
    if isinstance(chosen, str):
        return chosen
    candidates = chosen or fitting
    raise QuantbenchError(f"cannot tell the head of {model} from its outputs {io.shown()}: it could be "
                          f"{' or '.join(candidates) if candidates else 'none of ' + ', '.join(HEADS)}; pass --head NAME")


def _auto_head(io: ModelIO) -> str | list[str]:
    """The one head ``io`` points to, or the candidates when it is ambiguous."""
    if fits("odapi", io):
        return "odapi"
    if (io.ops is not None and POSTPROCESS_OP in io.ops) or _ssd_shapes(io):
        return "ssd_postprocess" if _ssd_shapes(io) else []
    if io.metadata and io.metadata.get("task") == "detect" and fits("yolov8", io):
        return "yolov8"  # an Ultralytics export says what it is
    single, size = _single_output(io), io.input_size
    if single is None or size is None:
        return []
    a, b = single
    cells = grid_cells(size, ANCHOR_FREE_STRIDES)
    if b == cells and a < b:
        return "yolov8"
    if a == 3 * cells:
        return "yolov5"  # three anchors per cell
    if a == cells:
        return ["yolov8 (transposed)", "yolox"]
    if a == grid_cells(size, NANODET_STRIDES):
        return "nanodet"
    return []


class Head:
    """Turns one image's outputs into :class:`Detections`; made once per model (see :func:`make_head`)."""

    def __init__(self, spec: ModelSpec, io: ModelIO):
        self.spec, self.io = spec, io
        self.post = spec.postprocess

    def decode(self, outputs: dict[str, np.ndarray], frame: Frame) -> Detections:
        raise NotImplementedError

    def _input_size(self, frame: Frame) -> tuple[int, int]:
        """(height, width) of the input this image was fed at (a dynamic input: its own size)."""
        return self.io.input_size or (frame.source_height, frame.source_width)

    def _normalised_to_source(self, boxes: np.ndarray, frame: Frame) -> np.ndarray:
        """Normalised yxyx of the input → normalised yxyx of the original image."""
        height, width = self._input_size(frame)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return frame.to_source(np.stack([boxes[:, 1] * width, boxes[:, 0] * height, boxes[:, 3] * width, boxes[:, 2] * height], axis=1))

    def _select(self, xyxy: np.ndarray, class_scores: np.ndarray, frame: Frame, inclusive: bool = False) -> Detections:
        """Candidates above ``score_threshold`` (each class above it with ``multi_label``, else the
        best class), class-aware NMS, at most ``max_detections``; boxes mapped to the original image."""
        threshold = self.post.score_threshold
        if self.post.multi_label:
            above = class_scores >= threshold if inclusive else class_scores > threshold
            rows, classes = np.nonzero(above)
            scores = class_scores[rows, classes]
        else:
            classes = np.argmax(class_scores, axis=1)
            best = class_scores[np.arange(len(class_scores)), classes]
            rows = np.flatnonzero(best >= threshold if inclusive else best > threshold)
            classes, scores = classes[rows], best[rows]
        boxes = xyxy[rows]
        finite = np.isfinite(boxes).all(axis=1)  # an overflowing exp() is no box
        if not finite.all():
            boxes, scores, classes = boxes[finite], scores[finite], classes[finite]
        keep = nms(boxes, scores, classes, self.post.iou, self.post.max_detections) if self.post.iou else \
            np.argsort(-scores, kind="stable")[:self.post.max_detections]
        return Detections(frame.to_source(boxes[keep]), scores[keep].astype(np.float64), classes[keep].astype(np.float64))

    def _box_scale(self, boxes: np.ndarray, frame: Frame) -> np.ndarray:
        """cx, cy, w, h → x1, y1, x2, y2 in input pixels (normalised ones multiplied by the input size)."""
        height, width = self._input_size(frame)
        units = self.post.boxes
        if units == "normalised" or (units == "auto" and boxes.size and float(np.abs(boxes).max()) <= 2.0):
            boxes = boxes * np.array([width, height, width, height], dtype=boxes.dtype)
        cx, cy, w, h = boxes.T
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


class OdApiHead(Head):
    def decode(self, outputs: dict[str, np.ndarray], frame: Frame) -> Detections:
        count = None
        if "num_detections" in outputs:
            count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
        boxes = np.asarray(outputs["detection_boxes"]).reshape(-1, 4)[:count]
        scores = np.asarray(outputs["detection_scores"]).reshape(-1)[:count]
        classes = np.asarray(outputs["detection_classes"]).reshape(-1)[:count]
        masks = outputs.get("detection_masks")
        return Detections(self._normalised_to_source(boxes, frame), scores.astype(np.float64), classes.astype(np.float64),
                          None if masks is None else np.asarray(masks)[0][:count])


class SsdPostprocessHead(Head):
    def __init__(self, spec: ModelSpec, io: ModelIO):
        super().__init__(spec, io)
        by_tensor = {o.tensor: o.name for o in io.outputs}
        order = io.postprocess_outputs
        if order and len(order) == 4 and all(t in by_tensor for t in order):
            self.roles: dict[str, str] | None = dict(zip(("boxes", "classes", "scores", "count"), (by_tensor[t] for t in order)))
        else:
            self.roles = None  # told apart per image by shape and content

    def _roles(self, outputs: dict[str, np.ndarray]) -> dict[str, str]:
        if self.roles is not None:
            return self.roles
        by_rank = {name: np.asarray(value) for name, value in outputs.items()}
        boxes = next(n for n, v in by_rank.items() if v.ndim == 3 and v.shape[-1] == 4)
        count = next(n for n, v in by_rank.items() if v.ndim <= 1)  # [1]; classes and scores are [1, N]
        pair = [n for n in by_rank if n not in (boxes, count)]
        total = int(by_rank[count].reshape(-1)[0])

        def looks_like_classes(name: str) -> bool:
            valid = by_rank[name].reshape(-1)[:total]
            return bool(np.all(valid == np.round(valid)))

        def sorted_descending(name: str) -> bool:
            valid = by_rank[name].reshape(-1)[:total]
            return bool(np.all(np.diff(valid) <= 0))

        first, second = pair
        if looks_like_classes(first) != looks_like_classes(second):
            classes = first if looks_like_classes(first) else second
        elif sorted_descending(first) != sorted_descending(second):
            classes = second if sorted_descending(first) else first
        else:
            classes = first  # indistinguishable (e.g. no detections): either reading gives the same results
        scores = second if classes == first else first
        return {"boxes": boxes, "classes": classes, "scores": scores, "count": count}

    def decode(self, outputs: dict[str, np.ndarray], frame: Frame) -> Detections:
        roles = self._roles(outputs)
        count = int(np.asarray(outputs[roles["count"]]).reshape(-1)[0])
        boxes = np.asarray(outputs[roles["boxes"]]).reshape(-1, 4)[:count]
        scores = np.asarray(outputs[roles["scores"]]).reshape(-1)[:count].astype(np.float64)
        classes = np.asarray(outputs[roles["classes"]]).reshape(-1)[:count].astype(np.float64)
        keep = scores > self.post.score_threshold if self.post.score_threshold else np.ones(len(scores), bool)
        order = np.argsort(-scores[keep], kind="stable")[:self.post.max_detections]
        return Detections(self._normalised_to_source(boxes[keep][order], frame), scores[keep][order], classes[keep][order])


class Yolov8Head(Head):
    def decode(self, outputs: dict[str, np.ndarray], frame: Frame) -> Detections:
        raw = np.asarray(next(iter(outputs.values())))[0]
        rows = raw.T if raw.shape[0] < raw.shape[1] else raw  # [N, 4 + nc]
        return self._select(self._box_scale(rows[:, :4], frame), rows[:, 4:], frame)


class Yolov5Head(Head):
    def decode(self, outputs: dict[str, np.ndarray], frame: Frame) -> Detections:
        rows = np.asarray(next(iter(outputs.values())))[0]  # [N, 5 + nc]
        rows = rows[rows[:, 4] > self.post.score_threshold]  # obj x cls <= obj: no other row can pass
        return self._select(self._box_scale(rows[:, :4], frame), rows[:, 5:] * rows[:, 4:5], frame)


class YoloxHead(Head):
    def decode(self, outputs: dict[str, np.ndarray], frame: Frame) -> Detections:
        rows = np.asarray(next(iter(outputs.values())), dtype=np.float32)[0]  # [N, 5 + nc]
        boxes = rows[:, :4]
        if not self._decoded(boxes):
            grid, strides = self._grid(frame)
            boxes = np.concatenate([(boxes[:, :2] + grid) * strides, np.exp(boxes[:, 2:4]) * strides], axis=1)
        cx, cy, w, h = boxes.T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return self._select(xyxy, rows[:, 5:] * rows[:, 4:5], frame, inclusive=True)  # YOLOX keeps score >= conf

    def _decoded(self, boxes: np.ndarray) -> bool:
        if self.post.decoded is not None:
            return self.post.decoded
        # Raw outputs are grid offsets and log sizes (|value| of a few units); decoded ones are input pixels.
        return bool(boxes.size) and float(np.abs(boxes[:, 2:4]).max()) > 16.0

    def _grid(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        height, width = self._input_size(frame)
        grids, strides = [], []
        for stride in self.post.strides:
            rows, cols = height // stride, width // stride
            y, x = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            grids.append(np.stack([x.ravel(), y.ravel()], axis=1))
            strides.append(np.full((rows * cols, 1), stride))
        return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


class NanodetHead(Head):
    def decode(self, outputs: dict[str, np.ndarray], frame: Frame) -> Detections:
        rows = np.asarray(next(iter(outputs.values())), dtype=np.float32)[0]  # [N, nc + 4 (reg_max + 1)]
        bins = self.post.reg_max + 1
        classes = rows.shape[1] - 4 * bins
        logits = rows[:, classes:].reshape(-1, 4, bins)
        logits = logits - logits.max(axis=2, keepdims=True)
        weights = np.exp(logits)
        weights /= weights.sum(axis=2, keepdims=True)
        priors, strides = self._priors(frame)
        distances = (weights @ np.arange(bins, dtype=np.float32)) * strides  # [N, 4]: left, top, right, bottom
        height, width = self._input_size(frame)
        xyxy = np.stack([priors[:, 0] - distances[:, 0], priors[:, 1] - distances[:, 1],
                         priors[:, 0] + distances[:, 2], priors[:, 1] + distances[:, 3]], axis=1)
        xyxy = np.clip(xyxy, 0, [width, height, width, height])
        return self._select(xyxy, rows[:, :classes], frame)

    def _priors(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        height, width = self._input_size(frame)
        priors, strides = [], []
        for stride in self.post.strides:
            rows, cols = math.ceil(height / stride), math.ceil(width / stride)
            y, x = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            priors.append(np.stack([(x.ravel() + self.post.prior_offset) * stride, (y.ravel() + self.post.prior_offset) * stride], axis=1))
            strides.append(np.full((rows * cols, 1), stride))
        return np.concatenate(priors).astype(np.float32), np.concatenate(strides).astype(np.float32)


HEAD_CLASSES = {"odapi": OdApiHead, "ssd_postprocess": SsdPostprocessHead, "yolov8": Yolov8Head, "yolov5": Yolov5Head,
                "yolox": YoloxHead, "nanodet": NanodetHead}


def make_head(spec: ModelSpec, io: ModelIO) -> Head:
    """The head of a resolved ``spec`` (``spec.head`` decided, defaults filled in) for ``io``."""
    return HEAD_CLASSES[spec.head](spec, io)
