"""A "regressed checkpoint" of a detector: the same model with every box moved by a fixed amount,
so its AP is measurably lower while its signature, size and weights stay those of the original."""
from __future__ import annotations

from pathlib import Path

SIGNATURE = "serving_default"


def build_shifted_model(source_dir: Path, out_dir: Path, shift: float = 0.02) -> Path:
    """Save to ``out_dir`` a SavedModel whose ``serving_default`` has the signature of
    ``source_dir``'s (TF OD API: uint8 image → detection_boxes/scores/classes, num_detections),
    calls it, and adds ``shift`` to every normalised box coordinate ([ymin, xmin, ymax, xmax]:
    the box moves down and right by ``shift``), clipped to [0, 1]. Scores and classes are the
    source's. The source model is an attribute of the new module, so its variables are saved
    with it and the float16/int8 variants still carry quantizable weights."""
    import tensorflow as tf

    source = tf.saved_model.load(str(source_dir))
    [input_spec] = source.signatures[SIGNATURE].structured_input_signature[1].values()

    class Shifted(tf.Module):
        def __init__(self):
            super().__init__()
            self.source = source

        @tf.function(input_signature=[input_spec])
        def serve(self, input_tensor):
            outputs = self.source.signatures[SIGNATURE](**{input_spec.name: input_tensor})
            boxes = tf.clip_by_value(outputs["detection_boxes"] + shift, 0.0, 1.0)
            return {**outputs, "detection_boxes": boxes}

    module = Shifted()
    tf.saved_model.save(module, str(out_dir), signatures={SIGNATURE: module.serve})
    return out_dir
