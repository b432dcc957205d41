"""A small two-stage detector built in the tests, shaped like Mask R-CNN where it matters to
conversion: dynamic ``uint8 [1, None, None, 3]`` input, conv weights, proposals scored from the
features, ``combined_non_max_suppression``, and ``crop_and_resize`` of the features feeding a
mask head. The last two have no LiteRT builtin, so every variant needs Select TF ("Flex") ops.

Its weights are random: the point is the plumbing (conversion, Flex runtime, masks, segm), not AP.
Classes are 0-based indices (as ``combined_non_max_suppression`` returns them).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ANCHORS = np.array([[y, x, y + s, x + s] for s in (0.25, 0.5) for y in np.arange(0, 1 - s + 1e-6, 0.25) for x in np.arange(0, 1 - s + 1e-6, 0.25)], np.float32)
NUM_CLASSES = 3
MAX_DETECTIONS = 10
MASK_SIZE = 14


def build_two_stage_model(folder: Path) -> Path:
    import tensorflow as tf

    class TwoStage(tf.Module):
        def __init__(self):
            super().__init__()
            self.backbone = tf.Variable(tf.random.stateless_normal([3, 3, 3, 64], seed=[3, 4]) * 0.2)
            self.proposal_head = tf.Variable(tf.random.stateless_normal([64, len(ANCHORS) * NUM_CLASSES], seed=[5, 6]) * 0.2)
            self.mask_head = tf.Variable(tf.random.stateless_normal([3, 3, 64, 1], seed=[7, 8]) * 0.2)

        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            pixels = tf.image.resize(tf.cast(input_tensor, tf.float32) / 255.0, [64, 64])
            features = tf.nn.relu(tf.nn.conv2d(pixels, self.backbone, 1, "SAME"))
            pooled = tf.reduce_mean(features, axis=[1, 2])
            scores = tf.sigmoid(tf.reshape(pooled @ self.proposal_head, [1, len(ANCHORS), NUM_CLASSES]))
            boxes = tf.constant(ANCHORS)[None, :, None, :]
            nms = tf.image.combined_non_max_suppression(
                boxes, scores, max_output_size_per_class=MAX_DETECTIONS, max_total_size=MAX_DETECTIONS,
                iou_threshold=0.5, score_threshold=0.0,
            )
            crops = tf.image.crop_and_resize(features, nms.nmsed_boxes[0], tf.zeros([MAX_DETECTIONS], tf.int32), [MASK_SIZE, MASK_SIZE])
            masks = tf.sigmoid(tf.nn.conv2d(crops, self.mask_head, 1, "SAME"))[..., 0]
            return {
                "detection_boxes": nms.nmsed_boxes,
                "detection_scores": nms.nmsed_scores,
                "detection_classes": nms.nmsed_classes,
                "num_detections": tf.cast(nms.valid_detections, tf.float32),
                "detection_masks": masks[None],
            }

    module = TwoStage()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder
