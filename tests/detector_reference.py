"""An independent reference for the real detectors in ../shared/models: each family's published
pre- and post-processing written out plainly here, with none of quantbench's functions, scored
with pycocotools. What each step follows (shared/models/README.md; read, not copied):

- Ultralytics YOLOv8 (``LetterBox``, ``non_max_suppression``, ``scale_boxes``): RGB, resize with
  bilinear interpolation (cv2 ``INTER_LINEAR``: half-pixel centres, no antialiasing) to fit 640
  keeping the aspect ratio, pad 114 centred (``round(d - 0.1)`` before, ``round(d + 0.1)``
  after), / 255; rows cx, cy, w, h normalised then class probabilities; every (box, class) with
  probability > 0.001 a candidate (multi-label), at most 30,000 by score, NMS per class at IoU
  0.7, at most 300; boxes back through ``gain`` and the rounded pad, clipped to the image.
- YOLOv5 (``val.py``): the same letterbox; candidates with objectness > 0.001 and obj x cls >
  0.001; NMS IoU 0.6, at most 300.
- full-integer exports: input quantized ``round(x / scale + zero_point)``, output dequantized
  ``(q - zero_point) * scale``, with each tensor's own parameters.
- SSD MobileNet (TFLite ``detect.tflite`` examples): RGB stretched to 300 x 300 (bilinear), raw
  uint8 pixels in; outputs of ``TFLite_Detection_PostProcess`` in its order boxes (ymin, xmin,
  ymax, xmax normalised), classes (0-based, category = class + 1), scores, count.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(..., INTER_LINEAR) semantics for uint8 RGB: half-pixel centres, edge clamp, rounding."""
    source_height, source_width = image.shape[:2]
    ys = np.clip((np.arange(height) + 0.5) * source_height / height - 0.5, 0, source_height - 1)
    xs = np.clip((np.arange(width) + 0.5) * source_width / width - 0.5, 0, source_width - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, source_height - 1), np.minimum(x0 + 1, source_width - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    image = image.astype(np.float64)
    top = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
    bottom = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
    return np.clip(np.round(top * (1 - wy) + bottom * wy), 0, 255).astype(np.uint8)


def ultralytics_letterbox(image: np.ndarray, size: int = 640) -> tuple[np.ndarray, float, tuple[int, int]]:
    height, width = image.shape[:2]
    gain = min(size / height, size / width)
    new_width, new_height = int(round(width * gain)), int(round(height * gain))
    if (new_width, new_height) != (width, height):
        image = bilinear(image, new_height, new_width)
    dw, dh = (size - new_width) / 2, (size - new_height) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    padded = np.pad(image, ((top, bottom), (left, right), (0, 0)), constant_values=114)
    return padded, gain, (left, top)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Indices kept by greedy NMS of one class (IoU > threshold suppresses), best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(best))
        if not rest.size:
            break
        inter = (np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
                 * np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None))
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = [int(i) for i in rest[iou <= threshold]]
    return keep


def per_class_nms(boxes, scores, classes, threshold: float, max_detections: int):
    order = np.argsort(-scores, kind="stable")[:30000]
    boxes, scores, classes = boxes[order], scores[order], classes[order]
    kept = []
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        kept += [members[i] for i in greedy_nms(boxes[members], scores[members], threshold)]
    kept = sorted(kept, key=lambda i: (-scores[i], i))[:max_detections]
    return boxes[kept], scores[kept], classes[kept]


def _interpreter(model: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model), num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def _run(interpreter, pixels: np.ndarray) -> list[np.ndarray]:
    [inp] = interpreter.get_input_details()
    value = pixels
    if inp["dtype"] != np.uint8 or inp["quantization"][0]:
        value = pixels.astype(np.float32) / 255.0 if inp["dtype"] != np.uint8 else pixels
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            value = np.clip(np.round(value / scale + zero), -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], value[None].astype(inp["dtype"]))
    interpreter.invoke()
    outputs = []
    for out in interpreter.get_output_details():
        raw = interpreter.get_tensor(out["index"])
        scale, zero = out["quantization"]
        outputs.append((raw.astype(np.float32) - zero) * scale if out["dtype"] == np.int8 and scale else raw)
    return outputs


def yolo_detections(model: Path, coco: dict, images: Path, family: str) -> list[dict]:
    """COCO results of a YOLOv8 ([1, 84, 8400]) or YOLOv5 ([1, 25200, 85]) export on ``coco``'s images."""
    interpreter = _interpreter(model)
    category_ids = sorted(c["id"] for c in coco["categories"])
    iou, results = (0.7 if family == "yolov8" else 0.6), []
    for info in sorted(coco["images"], key=lambda i: i["id"]):
        image = np.asarray(Image.open(images / info["file_name"]).convert("RGB"))
        padded, gain, (left, top) = ultralytics_letterbox(image)
        [out] = _run(interpreter, padded)
        if family == "yolov8":
            rows = out[0].T
            xywh, probabilities = rows[:, :4] * 640, rows[:, 4:]
        else:
            rows = out[0]
            rows = rows[rows[:, 4] > 0.001]
            xywh, probabilities = rows[:, :4] * 640, rows[:, 5:] * rows[:, 4:5]
        xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        row, cls = np.nonzero(probabilities > 0.001)
        boxes, scores, classes = per_class_nms(xyxy[row], probabilities[row, cls], cls, iou, 300)
        boxes = (boxes - [left, top, left, top]) / gain
        boxes = np.clip(boxes, 0, [info["width"], info["height"], info["width"], info["height"]])
        for (x1, y1, x2, y2), score, c in zip(boxes, scores, classes):
            if x2 > x1 and y2 > y1:
                results.append({"image_id": info["id"], "category_id": category_ids[int(c)], "score": float(score),
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    return results


def ssd_detections(model: Path, coco: dict, images: Path) -> list[dict]:
    """COCO results of an SSD with TFLite_Detection_PostProcess (outputs in the op's order)."""
    interpreter = _interpreter(model)
    by_name = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    order = ["TFLite_Detection_PostProcess", "TFLite_Detection_PostProcess:1", "TFLite_Detection_PostProcess:2", "TFLite_Detection_PostProcess:3"]
    [inp] = interpreter.get_input_details()
    results = []
    for info in sorted(coco["images"], key=lambda i: i["id"]):
        image = np.asarray(Image.open(images / info["file_name"]).convert("RGB"))
        interpreter.set_tensor(inp["index"], bilinear(image, 300, 300)[None])
        interpreter.invoke()
        boxes, classes, scores, count = (interpreter.get_tensor(by_name[name]) for name in order)
        for k in range(int(count[0])):
            ymin, xmin, ymax, xmax = np.clip(boxes[0, k], 0, 1)
            w, h = (xmax - xmin) * info["width"], (ymax - ymin) * info["height"]
            if w > 0 and h > 0:
                results.append({"image_id": info["id"], "category_id": int(classes[0, k]) + 1, "score": float(scores[0, k]),
                                "bbox": [float(xmin * info["width"]), float(ymin * info["height"]), float(w), float(h)]})
    return results


def coco_ap(annotations: Path, results: list[dict]) -> float:
    """pycocotools' bbox AP@[.5:.95] of ``results`` on every image of ``annotations``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        known = set(gt.getCatIds())
        evaluator = COCOeval(gt, gt.loadRes([r for r in results if r["category_id"] in known]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def reference_ap(model: Path, annotations: Path, images: Path) -> float:
    coco = json.loads(annotations.read_text())
    name = model.name
    if name.startswith("ssd"):
        return coco_ap(annotations, ssd_detections(model, coco, images))
    return coco_ap(annotations, yolo_detections(model, coco, images, "yolov5" if name.startswith("yolov5") else "yolov8"))
