"""A ~110-op MobileNet-like detector to time the diagnosis on: seeded random weights, TF OD API signature.

The issue-19 case is a real 0.9M-parameter COCO detector with depthwise convs. This builds one of
its shape offline, in seconds: a ``size`` x ``size`` uint8 input (default 320 px), a 3x3 stride-2
stem, MobileNetV2 inverted-residual blocks (1x1 expand, 3x3 depthwise, 1x1 project, a residual ADD
where shapes match; ReLU6) and the head of :mod:`bench.detector` (80 sigmoid class scores and 4
box sides per cell of the stride-16 grid, top-100 cells; ``class_ids="index0"``): 111 LiteRT ops
in float32, 0.27M parameters, ~0.2 GMAC per image at 320 px.

Random weights give AP ~0 against real annotations, so the diagnosis is timed in pseudo-AP mode
(agreement with float32's own detections of score >= 0.5). What makes that agreement meaningful,
and fragile under ``dynamic_wi8_afp32`` (weights int8, activations quantized on the fly per tensor):

* each depthwise conv's output channels carry a log-normal gain (``CHANNEL_GAIN_SIGMA``; far larger
  in block ``FRAGILE_BLOCK``, the culprit to find), undone by the next 1x1 conv's input weights, as
  a folded batch norm leaves a real MobileNet: the float function is unchanged, but one per-tensor
  int8 range must cover channels of very different size;
* residual branches are scaled down (``RESIDUAL_SCALE``), so that the random network does not
  amplify the quantization noise block after block (a trained one does not);
* an image's class logits are standardised over cells and classes, then scaled and shifted
  (``LOGIT_STD``, ``LOGIT_BIAS``): float32 scores 0 to ~40 detections per image >= 0.5, where and
  which depending on the image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.detector import CLASSES, SIGNATURE, detections

# (expansion, output channels, repeats, first stride) per stage: MobileNetV2 at width 0.5 down to stride 16.
STAGES = ((1, 8, 1, 1), (6, 16, 2, 2), (6, 16, 3, 2), (6, 32, 4, 2), (6, 48, 3, 1), (6, 48, 3, 1), (6, 64, 1, 1))
STEM = 16  # stem conv output channels
CHANNEL_GAIN_SIGMA = 0.5  # std of log(gain) of each depthwise output channel
FRAGILE_BLOCK, FRAGILE_GAIN_SIGMA = 4, 2.0  # one block whose depthwise channels differ far more: the culprit to find
RESIDUAL_SCALE = 0.3  # a residual branch's weights scaled down, as trained nets have them: noise is not amplified block after block
LOGIT_STD = 2.0  # the class logits of an image are standardised (over cells and classes), then scaled to this std
LOGIT_BIAS = -7.0  # and shifted by this: ~0-40 cells of an image (~18 on average) score >= 0.5


def build(out_dir: Path, size: int = 320, seed: int = 0) -> Path:
    """Write the SavedModel to ``out_dir`` (unless it is there already); return ``out_dir``."""
    import tensorflow as tf

    if (out_dir / "saved_model.pb").is_file():
        return out_dir
    rng = np.random.default_rng(seed)

    def he(*shape, fan_in: int | None = None) -> np.ndarray:
        fan_in = fan_in or int(np.prod(shape[:-1]))
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)

    def variable(value: np.ndarray) -> tf.Variable:
        return tf.Variable(value.astype(np.float32))

    class Detector(tf.Module):
        def __init__(self):
            super().__init__()
            self.stem = variable(he(3, 3, 3, STEM))
            self.blocks, channels = [], STEM
            for expansion, out, repeats, first_stride in STAGES:
                for repeat in range(repeats):
                    hidden = channels * expansion
                    sigma = FRAGILE_GAIN_SIGMA if len(self.blocks) == FRAGILE_BLOCK else CHANNEL_GAIN_SIGMA
                    gain = np.exp(rng.normal(0.0, sigma, hidden)).astype(np.float32)
                    expand = variable(he(1, 1, channels, hidden)) if expansion > 1 else None
                    depthwise = variable(he(3, 3, hidden, 1, fan_in=9) * gain[None, None, :, None])
                    residual = channels == out and repeat > 0
                    project = variable(he(1, 1, hidden, out) / gain[None, None, :, None] * (RESIDUAL_SCALE if residual else 1.0))
                    self.blocks.append((expand, depthwise, project, variable(np.zeros(out)), first_stride if repeat == 0 else 1, residual))
                    channels = out
            self.classes = variable(he(1, 1, channels, CLASSES))
            self.boxes = variable(he(1, 1, channels, 4))

        def features(self, x):
            x = tf.nn.relu6(tf.nn.conv2d(x, self.stem, 2, "SAME"))
            for expand, depthwise, project, bias, stride, residual in self.blocks:
                y = tf.nn.relu6(tf.nn.conv2d(x, expand, 1, "SAME")) if expand is not None else x
                y = tf.nn.relu6(tf.nn.depthwise_conv2d(y, depthwise, [1, stride, stride, 1], "SAME"))
                y = tf.nn.conv2d(y, project, 1, "SAME") + bias
                x = x + y if residual else y
            return x

        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            x = self.features(tf.cast(input_tensor, tf.float32) / 255.0)
            grid = x.shape[1]
            logits = tf.nn.conv2d(x, self.classes, 1, "SAME")
            mean, variance = tf.nn.moments(logits, axes=[0, 1, 2, 3])
            logits = (logits - mean) * tf.math.rsqrt(variance + 1e-6) * LOGIT_STD + LOGIT_BIAS
            scores = tf.reshape(tf.sigmoid(logits), [grid * grid, CLASSES])
            shape = tf.reshape(tf.sigmoid(tf.nn.conv2d(x, self.boxes, 1, "SAME")), [grid * grid, 4])
            return detections(tf, scores, shape, grid)

    detector = Detector()
    tf.saved_model.save(detector, str(out_dir), signatures={SIGNATURE: detector.serve})
    return out_dir
