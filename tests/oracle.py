"""Oracle fixtures: a dataset of flat-colour images and a SavedModel that returns each image's
ground-truth boxes in TF Object Detection API form.

The model reads the image's index from its pixel colour (index = R + 256·G) and looks up that
image's boxes (normalised ``[ymin, xmin, ymax, xmax]``), scores and category ids in integer
tables, so quantization cannot perturb them (only float tensors are quantized). A small conv
layer whose output is provably zero keeps real float weights in the graph, so the float16 and
int8 variants hold fp16 / int8 weights as they claim.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.data.coco_format import coco_to_od_api_boxes

SCALE = 16384  # table values are coordinates × 2^-14 (exact in float16 too)
CATEGORIES = [{"id": 2, "name": "bicycle"}, {"id": 5, "name": "airplane"}, {"id": 90, "name": "toothbrush"}]


def write_oracle_dataset(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> Path:
    """Flat-colour PNG images of the given (width, height) with 1-5 random boxes each; returns
    the annotations JSON path. Image k (0-based, in id order) has colour (k % 256, k // 256, 128)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k, (width, height) in enumerate(sizes):
        image_id = 1000 + 7 * k  # ids neither contiguous nor 0-based
        Image.new("RGB", (width, height), (k % 256, k // 256, 128)).save(folder / f"img{image_id}.png")
        images.append({"id": image_id, "file_name": f"img{image_id}.png", "width": width, "height": height})
        for _ in range(int(rng.integers(1, 6))):
            w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.choice([c["id"] for c in CATEGORIES])),
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "area": round(w * h, 2), "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def oracle_tables(annotations_path: Path, max_detections: int = 8, convention: str = "yxyx") -> dict[str, np.ndarray]:
    """Per image (in id order): int boxes [n, K, 4] (normalised yxyx × SCALE), int scores, ids, counts.

    ``convention="xywh"`` makes a model with the study's bug: it emits normalised COCO-style
    ``[x, y, width, height]`` where the TF OD API contract says ``[ymin, xmin, ymax, xmax]``."""
    document = json.loads(annotations_path.read_text())
    images = sorted(document["images"], key=lambda i: i["id"])
    n = len(images)
    boxes, scores = np.zeros((n, max_detections, 4), np.int32), np.zeros((n, max_detections), np.int32)
    classes, counts = np.zeros((n, max_detections), np.int32), np.zeros(n, np.int32)
    for k, image in enumerate(images):
        gt = [a for a in document["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]][:max_detections]
        counts[k] = len(gt)
        if gt:
            normalised = coco_to_od_api_boxes([a["bbox"] for a in gt], image["width"], image["height"])
            if convention == "xywh":
                xywh = np.asarray([a["bbox"] for a in gt], dtype=np.float64)
                normalised = xywh / [image["width"], image["height"], image["width"], image["height"]]
            boxes[k, : len(gt)] = np.round(normalised * SCALE)
            scores[k, : len(gt)] = SCALE - np.arange(len(gt))  # distinct, descending scores
            classes[k, : len(gt)] = [a["category_id"] for a in gt]
    return {"boxes": boxes, "scores": scores, "classes": classes, "counts": counts}


def build_oracle_model(folder: Path, tables: dict[str, np.ndarray], input_size: tuple[int, int] | None) -> Path:
    """SavedModel with a TF OD API ``serving_default``: uint8 [1, H, W, 3] (fixed if ``input_size``
    = (H, W) is given, else [1, None, None, 3]) → detection_boxes/scores/classes, num_detections."""
    import tensorflow as tf

    height, width = input_size or (None, None)

    class Oracle(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 64], seed=[1, 2]), name="kernel")
            self.tables = {name: tf.constant(value) for name, value in tables.items()}

        @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            pixels = tf.cast(input_tensor, tf.float32) / 255.0
            features = tf.nn.relu(tf.nn.conv2d(pixels, self.kernel, 1, "SAME"))
            zero = tf.minimum(tf.reduce_min(features), 0.0)  # exactly 0: keeps the weights in the graph
            colour = tf.cast(input_tensor[0, 0, 0], tf.int32)
            index = colour[0] + 256 * colour[1]
            scale = 1.0 / SCALE
            boxes = tf.cast(tf.gather(self.tables["boxes"], index), tf.float32) * scale + zero
            scores = tf.cast(tf.gather(self.tables["scores"], index), tf.float32) * scale
            classes = tf.cast(tf.gather(self.tables["classes"], index), tf.float32)
            count = tf.cast(tf.gather(self.tables["counts"], index), tf.float32)
            return {
                "detection_boxes": boxes[None],
                "detection_scores": scores[None],
                "detection_classes": classes[None],
                "num_detections": count[None],
            }

    module = Oracle()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder
