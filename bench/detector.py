"""A detector heavy enough to time: a seeded random-weight conv net with the TF OD API signature.

The embedded demo detector runs ``invoke()`` in ~6 ms; the performance goals of issue 12 are for
a model of >= 20 ms per ``invoke()`` at one thread, where the pipeline's own costs (read, decode,
resize, COCO conversion) are a realistic share. This builds one offline, in seconds: a plain
stride-2 conv backbone on a ``size`` x ``size`` uint8 input (default 416 px), an 80-class head on
the stride-16 grid, top-100 cells by best class score. Boxes are normalised ``[ymin, xmin, ymax,
xmax]`` around each cell's centre, classes are 0-based indices (``class_ids="index0"``: into the
dataset's sorted category ids) — an 80-class COCO detector's outputs, without its accuracy (the
weights are random: AP is ~0 and beside the point here). Only builtin LiteRT ops (no Flex).

Random weights favour a few classes everywhere (~70 % of detections in one class, 11 classes in
all on coco-mini). With ``spread_classes`` each class's logits are standardised over the image's
cells first, so its 100 detections fall in many of the 80 classes, as many (category, image)
pairs as evaluation meets with a trained detector at min_score 0, or more: what ``bench/scale.py``
needs, where the reduce's cost grows with those pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SIGNATURE = "serving_default"
CLASSES = 80
DETECTIONS = 100
# (output channels, stride) per 3x3 conv layer; about 2.2 GFLOP at 416 px: ~25 ms per float32 invoke() at one thread here.
LAYERS = ((24, 2), (48, 2), (48, 1), (96, 2), (96, 1), (192, 2), (192, 1))


def build(out_dir: Path, size: int = 416, seed: int = 0, spread_classes: bool = False) -> Path:
    """Write the SavedModel to ``out_dir`` (unless it is there already); return ``out_dir``.
    ``spread_classes``: see the module docstring."""
    import tensorflow as tf

    if (out_dir / "saved_model.pb").is_file():
        return out_dir
    rng = np.random.default_rng(seed)

    def weight(*shape) -> tf.Variable:  # He-normal, so activations neither vanish nor explode
        fan_in = int(np.prod(shape[:-1]))
        return tf.Variable(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32))

    class Detector(tf.Module):
        def __init__(self):
            super().__init__()
            channels, self.convs = 3, []
            for out, stride in LAYERS:
                self.convs.append((weight(3, 3, channels, out), tf.Variable(np.zeros(out, np.float32)), stride))
                channels = out
            self.classes = weight(1, 1, channels, CLASSES)
            self.boxes = weight(1, 1, channels, 4)

        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            x = tf.cast(input_tensor, tf.float32) / 255.0
            for kernel, bias, stride in self.convs:
                x = tf.nn.relu(tf.nn.conv2d(x, kernel, stride, "SAME") + bias)
            grid = x.shape[1]
            logits = tf.nn.conv2d(x, self.classes, 1, "SAME")
            if spread_classes:  # each class standardised over the image's cells: no class favoured everywhere
                mean, variance = tf.nn.moments(logits, axes=[1, 2], keepdims=True)
                logits = (logits - mean) / tf.sqrt(variance + 1e-6) * 2.0 - 3.0
            scores = tf.reshape(tf.sigmoid(logits), [grid * grid, CLASSES])
            shape = tf.reshape(tf.sigmoid(tf.nn.conv2d(x, self.boxes, 1, "SAME")), [grid * grid, 4])
            return detections(tf, scores, shape, grid)

    detector = Detector()
    tf.saved_model.save(detector, str(out_dir), signatures={SIGNATURE: detector.serve})
    return out_dir


def detections(tf, scores, shape, grid: int) -> dict:
    """The TF OD API outputs of a grid head: the top-``DETECTIONS`` cells by best class score.
    ``scores`` is [grid², CLASSES] in [0, 1], ``shape`` [grid², 4] in [0, 1] (half extents up, left,
    down, right as fractions of a quarter of the image); boxes normalised [ymin, xmin, ymax, xmax]
    around each cell's centre, classes 0-based indices (float)."""
    best, cells = tf.math.top_k(tf.reduce_max(scores, axis=1), k=DETECTIONS)
    classes = tf.gather(tf.cast(tf.argmax(scores, axis=1), tf.float32), cells)
    rows, cols = tf.cast(cells // grid, tf.float32), tf.cast(cells % grid, tf.float32)
    centre_y, centre_x = (rows + 0.5) / grid, (cols + 0.5) / grid
    half = tf.gather(shape, cells) * 0.25  # half height/width up to a quarter of the image
    boxes = tf.clip_by_value(tf.stack([centre_y - half[:, 0], centre_x - half[:, 1],
                                       centre_y + half[:, 2], centre_x + half[:, 3]], axis=1), 0.0, 1.0)
    return {"detection_boxes": boxes[None], "detection_scores": best[None], "detection_classes": classes[None],
            "num_detections": tf.constant([float(DETECTIONS)])}
