"""The op diagnosis (issue 19) on a model built here with one fragile op: a 1x1 convolution whose
input has one channel 1000x larger than the others. ``dynamic_wi8_afp32`` quantizes that input to
int8 per image on the fly, which rounds the small channels away, and the op's weights ignore the
large channel: its output is mostly lost. The convolutions before and after it quantize well."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.model.conversion import quantize
from tasks.model.diagnosis import float_ops_name, float_ops_variant, numeric_errors, rank_ops
from tasks.model.tflite_inspect import main_graph
from tasks.store.object_store import open_store

SIZE, CHANNELS = 32, 8


def fragile_model() -> bytes:
    """float32 ``.tflite``: [1, 32, 32, 3] in [0, 1] → conv 3x3 (3→8, ReLU; channel 0 biased to
    ~1000) → the fragile conv 1x1 (8→8, ignores channel 0) → conv 3x3 (8→4) → [1, 32, 32, 4]."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(19)
    first_bias = np.full(CHANNELS, 0.1, np.float32)
    first_bias[0] = 1000.0
    fragile_weights = rng.normal(0, 1, (1, 1, CHANNELS, CHANNELS)).astype(np.float32)
    fragile_weights[:, :, 0, :] = 1e-4

    class Fragile(tf.Module):
        def __init__(self):
            super().__init__()
            self.first = tf.constant(rng.normal(0, 0.5, (3, 3, 3, CHANNELS)).astype(np.float32))
            self.first_bias = tf.constant(first_bias)
            self.fragile = tf.constant(fragile_weights)
            self.last = tf.constant(rng.normal(0, 0.5, (3, 3, CHANNELS, 4)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)])
        def __call__(self, images):
            x = tf.nn.relu(tf.nn.conv2d(images, self.first, 1, "SAME") + self.first_bias)
            x = tf.nn.relu(tf.nn.conv2d(x, self.fragile, 1, "SAME"))
            return tf.nn.conv2d(x, self.last, 1, "SAME")

    module = Fragile()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    return converter.convert()


@pytest.fixture(scope="module")
def models() -> tuple[bytes, bytes]:
    float32 = fragile_model()
    return float32, quantize(float32, "dynamic_wi8_afp32")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.uniform(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32) for _ in range(3)]


def output_noise(rows) -> float:
    """Relative error power of the model's last op (its output), from its SQNR."""
    return 10 ** (-rows[-1].sqnr_db / 10)


def test_the_numeric_diagnosis_ranks_the_fragile_op_first_and_keeping_it_float_recovers_the_loss(models, images, tmp_path):
    float32, variant = models
    rows = numeric_errors(float32, variant, images)
    convolutions = [row for row in rows if row.op_type == "CONV_2D"]
    assert [row.quantized for row in convolutions] == [True, True, True]
    first, fragile, last = convolutions
    assert [row.index for row in rows] == sorted(row.index for row in rows)  # network order
    assert fragile.shape == (1, SIZE, SIZE, CHANNELS)
    assert rank_ops(rows)[0] == fragile
    assert fragile.sqnr_db < 10 < 30 < first.sqnr_db  # the loss appears at the fragile op
    assert last.sqnr_db < 10 and last.own_sqnr_db > fragile.own_sqnr_db  # after it, inherited, not added

    artifact, kept_float = float_ops_variant(open_store(str(tmp_path / "store")), float32, "dynamic_wi8_afp32", [fragile.index])
    assert artifact.variant == f"dynamic_wi8_afp32+float_op{fragile.index}"
    recovered = numeric_errors(float32, kept_float, images)
    assert [row.quantized for row in recovered if row.op_type == "CONV_2D"] == [True, False, True]
    assert 1 - output_noise(recovered) / output_noise(rows) >= 0.9


def test_a_kept_float_build_is_stored_and_reused_unless_it_changed(models, tmp_path, caplog):
    float32, _ = models
    store = open_store(str(tmp_path / "store"))
    index = next(op.index for op in main_graph(float32)[0] if op.op_type == "CONV_2D")
    built, model = float_ops_variant(store, float32, "dynamic_wi8_afp32", [index])
    path, = (tmp_path / "store" / "models" / "diagnosis").rglob("*.tflite")
    written = path.stat().st_mtime_ns
    again, same = float_ops_variant(store, float32, "dynamic_wi8_afp32", [index])
    assert same == model and again == built and path.stat().st_mtime_ns == written  # reused, not rebuilt
    path.write_bytes(b"not the model")
    rebuilt, fresh = float_ops_variant(store, float32, "dynamic_wi8_afp32", [index])
    assert fresh == model and path.read_bytes() == model
    assert "does not match its recorded digest" in caplog.text


def test_kept_float_names_and_scopes():
    assert float_ops_name("dynamic_wi8_afp32", [40]) == "dynamic_wi8_afp32+float_op40"
    assert float_ops_name("dynamic_wi8_afp32", [40, 12, 40]) == "dynamic_wi8_afp32+float_ops12.40"
