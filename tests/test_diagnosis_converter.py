"""The op diagnosis (issue 19) of a converter variant, ``int8_full``, on a SavedModel built here
with one fragile op: its first convolution reads a model input whose channel 0 spans [0, 1000]
(a raw measurement beside two [0, 1] channels) and ignores that channel. Full-integer quantization
quantizes the input per tensor for that op, which rounds the two small channels away; kept float,
the op reads the float input, and its output, of an ordinary range, quantizes well."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tasks.model.conversion import convert, quantize
from tasks.model.diagnosis import ConverterSource, float_ops_build, float_ops_converter_variant, numeric_errors, rank_ops
from tasks.model.variants import directory_digest
from tasks.store.errors import QuantbenchError
from tasks.store.object_store import open_store

SIZE, CHANNELS = 16, 8


def fragile_saved_model(folder: Path) -> Path:
    """SavedModel: float32 [1, 16, 16, 3] ``input_tensor`` → conv 3x3 (3→8, ReLU; weights of input
    channel 0 at 1e-4) → conv 3x3 (8→4) → ``out`` [1, 16, 16, 4]."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(19)
    first = rng.normal(0, 0.5, (3, 3, 3, CHANNELS)).astype(np.float32)
    first[:, :, 0, :] = 1e-4

    class Fragile(tf.Module):
        def __init__(self):
            super().__init__()
            self.first = tf.Variable(first)
            self.bias = tf.Variable(np.full(CHANNELS, 0.1, np.float32))
            self.last = tf.Variable(rng.normal(0, 0.5, (3, 3, CHANNELS, 4)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="input_tensor")])
        def serve(self, input_tensor):
            features = tf.nn.relu(tf.nn.conv2d(input_tensor, self.first, 1, "SAME") + self.bias)
            return {"out": tf.nn.conv2d(features, self.last, 1, "SAME")}

    module = Fragile()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def batches(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    made = [rng.uniform(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32) for _ in range(count)]
    for batch in made:
        batch[..., 0] *= 1000
    return made


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The SavedModel, its calibration batches, and its float32 and int8_full conversions."""
    folder = fragile_saved_model(tmp_path_factory.mktemp("fragile") / "model")
    calibration = batches(1, 8)
    return folder, calibration, convert(folder, "float32"), convert(folder, "int8_full", calibration)


def output_sqnr(rows) -> float:
    return rows[-1].sqnr_db


def test_keeping_the_top_ranked_op_float_in_int8_full_recovers_the_loss(converted, tmp_path):
    folder, calibration, float32, int8_full = converted
    compared = batches(2, 3)  # not the calibration batches
    rows = numeric_errors(float32, int8_full, compared)
    assert [(row.op_type, row.quantized) for row in rows] == [("CONV_2D", True), ("CONV_2D", True)]  # matched by name
    fragile = rank_ops(rows)[0]
    assert fragile == rows[0] and fragile.sqnr_db < 10

    store = open_store(str(tmp_path / "store"))
    source = ConverterSource(folder, directory_digest(folder), tuple(calibration))
    artifact, kept_float = float_ops_build(store, float32, "int8_full", [fragile.index], source)
    assert artifact.variant == f"int8_full+float_op{fragile.index}"
    recovered = numeric_errors(float32, kept_float, compared)
    assert [row.quantized for row in recovered] == [False, True]
    assert output_sqnr(recovered) - output_sqnr(rows) >= 20  # dB
    assert artifact.weights_by_dtype["int8"] > 0 and len(int8_full) < artifact.model_bytes < len(float32)

    path, = (tmp_path / "store" / "models" / "diagnosis" / source.digest[:20]).glob("int8_full-float-*.tflite")
    written = path.stat().st_mtime_ns
    again, same = float_ops_converter_variant(store, folder, source.digest, float32, "int8_full", [fragile.index], calibration)
    assert same == kept_float and again == artifact and path.stat().st_mtime_ns == written  # read from the store
    other, _ = float_ops_converter_variant(store, folder, source.digest, float32, "int8_full", [fragile.index], batches(3, 8))
    assert other.url != artifact.url  # other calibration, other build


def test_a_converter_variant_that_cannot_keep_ops_float_is_refused_in_one_line(converted, tmp_path):
    folder, calibration, float32, _ = converted
    store = open_store(str(tmp_path / "store"))
    for variant in ("int16x8", "int8", "float16"):
        with pytest.raises(QuantbenchError) as refused:
            float_ops_converter_variant(store, folder, "0" * 64, float32, variant, [0], calibration)
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"variant {variant} cannot be rebuilt from the SavedModel with ops kept float")
        assert message.endswith("variants that can be diagnosed op by op: int8_full, weight_only_wi8_afp32, dynamic_wi8_afp32, "
                                "dynamic_legacy_wi8_afp32, weight_only_wf16_afp32")
    with pytest.raises(QuantbenchError, match="^variant int8_full is rebuilt from the SavedModel with its calibration images"):
        float_ops_build(store, float32, "int8_full", [0])
    # A float32 model of another network: the converter ignores names it does not have; the build is refused.
    with pytest.raises(QuantbenchError, match="^the converter did not keep the op writing .* float in int8_full \\(no such tensor\\)"):
        float_ops_converter_variant(store, folder, "0" * 64, selecting_model(), "int8_full", [0], calibration)
    assert not (tmp_path / "store" / "models").exists()


def test_the_build_dispatches_a_quantizer_variant_to_the_quantizer(converted, tmp_path):
    _, calibration, float32, _ = converted
    artifact, model = float_ops_build(open_store(str(tmp_path / "store")), float32, "dynamic_wi8_afp32", [1], name="kept")
    assert artifact.variant == "kept"
    assert [row.quantized for row in numeric_errors(float32, model, calibration[:1])] == [True, False]


def selecting_model() -> bytes:
    """float32 ``.tflite``: [64, 4] rows → y = rows @ W (FULLY_CONNECTED) → the 8 rows of highest
    y[:, 0] (TOPK_V2, GATHER) → their y[:, 1] − y[:, 2] (SUB). W[:, 0] is (1, 1e-3, 1e-3, 1e-3):
    with rows whose first value is equal, the 1e-3 terms alone order them, and int8 weights
    round those to 0, so the quantized variant selects other rows."""
    tf = pytest.importorskip("tensorflow")
    weights = np.random.default_rng(5).normal(0, 1, (4, 4)).astype(np.float32)
    weights[:, 0] = (1, 1e-3, 1e-3, 1e-3)

    @tf.function(input_signature=[tf.TensorSpec([64, 4], tf.float32)])
    def select(rows):
        y = tf.matmul(rows, weights)
        chosen = tf.gather(y, tf.math.top_k(y[:, 0], 8).indices)
        return chosen[:, 1] - chosen[:, 2]

    return tf.lite.TFLiteConverter.from_concrete_functions([select.get_concrete_function()]).convert()


def test_ops_after_a_changed_selection_are_not_blamed_for_its_error():
    float32 = selecting_model()
    rng = np.random.default_rng(3)
    rows = [np.concatenate([np.ones((64, 1)), rng.uniform(-1, 1, (64, 3))], axis=1).astype(np.float32) for _ in range(2)]
    errors = {row.op_type: row for row in numeric_errors(float32, quantize(float32, "dynamic_wi8_afp32"), rows)}
    assert set(errors) >= {"FULLY_CONNECTED", "GATHER", "SUB"}
    assert errors["FULLY_CONNECTED"].quantized and math.isfinite(errors["FULLY_CONNECTED"].own_sqnr_db)
    assert errors["GATHER"].sqnr_db < 10  # other rows selected: a large error ...
    assert errors["GATHER"].own_sqnr_db == errors["SUB"].own_sqnr_db == math.inf  # ... that these ops did not add
