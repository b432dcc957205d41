"""Model heads, specs and inputs (tasks.model.heads, spec, preprocess, nms): NMS against a plain
reference, letterbox geometry, int8/uint8 I/O quantization, random-weight YOLOX, NanoDet and
transposed YOLOv8 models built here whose decoded boxes are computed by hand, head choice and its
one-line refusals, spec files, and the spec in the flow's form."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from tasks.model.heads import choose_head, make_head
from tasks.model.nms import nms
from tasks.model.preprocess import Frame, Preparation, frame_for, prepare_input
from tasks.model.spec import ModelSpec, parse_spec, resolve_spec
from tasks.model.tensors import ModelIO, TensorInfo
from tasks.store.errors import QuantbenchError

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO.parent / "shared" / "models"


def plain_nms(boxes, scores, classes, threshold, limit):
    """Greedy NMS, one class at a time, in plain Python (torchvision's semantics)."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable, as the project's
    kept = []
    for i in order:
        if all(classes[k] != classes[i] or iou(boxes[k], boxes[i]) <= threshold for k in kept):
            kept.append(i)
    return kept[:limit]


@pytest.mark.parametrize("seed", range(12))
def test_vectorised_nms_equals_a_plain_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 400))
    xy = rng.uniform(0, 200, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 80, (n, 2))], axis=1)
    scores = np.round(rng.uniform(0, 1, n), 2)  # ties included
    classes = rng.integers(0, 4, n)
    threshold, limit = float(rng.choice([0.3, 0.5, 0.7])), int(rng.integers(1, 500))
    assert list(nms(boxes, scores, classes, threshold, limit)) == plain_nms(boxes, scores, classes, threshold, limit)


def test_letterbox_places_the_image_and_maps_boxes_back():
    spec = resolve_spec(ModelSpec(head="yolov8"), "yolov8", "nhwc")
    preparation = Preparation.of(spec, TensorInfo("images", (1, 64, 64, 3), "float32"), (64, 64))
    pixels = np.full((20, 40, 3), 200, np.uint8)  # landscape: scaled by 1.6 to 64 x 32, centred
    batch, frame = prepare_input(pixels, preparation)
    assert batch.shape == (1, 64, 64, 3) and batch.dtype == np.float32
    assert frame == Frame(20, 40, 1.6, 1.6, 16, 0)
    assert np.allclose(batch[0, 16:48], 200 / 255) and np.allclose(batch[0, :16], 114 / 255) and np.allclose(batch[0, 48:], 114 / 255)
    # The source box x 10..30, y 5..15 lies at 16..48, 24..40 of the input; back to normalised yxyx.
    assert np.allclose(frame.to_source([[16, 24, 48, 40]]), [[5 / 20, 10 / 40, 15 / 20, 30 / 40]])
    top_left = frame_for(20, 40, Preparation(**{**preparation.__dict__, "align": "top-left"}))
    assert top_left == Frame(20, 40, 1.6, 1.6, 0, 0)


def test_integer_inputs_are_quantized_with_their_own_parameters():
    """int8 q(1/255, -128) with the YOLO convention takes pixel - 128; uint8 q(1/128, 128) with the
    SSD convention takes the raw pixel; a uint8 input without parameters takes pixels as they are."""
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    yolo = resolve_spec(ModelSpec(head="yolov8"), "yolov8", "nhwc")
    int8 = Preparation.of(yolo, TensorInfo("images", (1, 16, 16, 3), "int8", 1 / 255, -128), (16, 16))
    batch, _ = prepare_input(pixels, int8)
    assert batch.dtype == np.int8 and np.array_equal(batch[0].astype(int), pixels.astype(int) - 128)
    ssd = resolve_spec(ModelSpec(head="ssd_postprocess"), "ssd_postprocess", "nhwc")
    uint8 = Preparation.of(ssd, TensorInfo("image", (1, 16, 16, 3), "uint8", 0.0078125, 128), (16, 16))
    assert np.array_equal(prepare_input(pixels, uint8)[0][0], pixels)
    with pytest.raises(QuantbenchError, match="takes integers without quantization parameters"):
        Preparation.of(yolo, TensorInfo("images", (1, 16, 16, 3), "uint8"), (16, 16))


@pytest.fixture(scope="module")
def shared_models() -> Path:
    if not (MODELS / "yolov8n_full_integer_quant.tflite").is_file():
        pytest.skip(f"the shared detectors are not at {MODELS}")
    return MODELS


def test_integer_outputs_are_dequantized_with_their_own_parameters(shared_models):
    from tasks.model.runtimes import LiteRTRuntime

    runtime = LiteRTRuntime(shared_models / "yolov8n_full_integer_quant.tflite")
    [output] = runtime.interpreter.get_output_details()
    scale, zero_point = output["quantization"]
    assert output["dtype"] == np.int8 and scale > 0
    runtime.set_input(np.random.default_rng(0).integers(-128, 128, (1, 640, 640, 3), dtype=np.int8))
    runtime.invoke()
    raw = runtime.interpreter.get_tensor(output["index"])
    [value] = runtime.outputs().values()
    assert value.dtype == np.float32 and np.allclose(value, (raw.astype(np.float64) - zero_point) * scale, atol=1e-6)


@pytest.mark.parametrize("name, head", [("yolov8n_int8.tflite", "yolov8"), ("yolov8n_full_integer_quant.tflite", "yolov8"),
                                        ("yolov5n-fp16.tflite", "yolov5"), ("ssd_mobilenet_v1_coco_quant_postprocess.tflite", "ssd_postprocess")])
def test_auto_tells_each_shared_detector_s_head(shared_models, name, head):
    from tasks.model.runtimes import LiteRTRuntime

    assert choose_head(ModelSpec(), LiteRTRuntime(shared_models / name).io, name) == head


def _io(*outputs: tuple[str, tuple[int, ...]], size=(640, 640)) -> ModelIO:
    return ModelIO(TensorInfo("images", (1, *size, 3), "float32"), tuple(TensorInfo(n, s, "float32", tensor=n) for n, s in outputs))


def test_a_head_that_does_not_fit_names_the_outputs_and_the_heads_that_would():
    io = _io(("Identity", (1, 25200, 85)))
    with pytest.raises(QuantbenchError) as error:
        choose_head(ModelSpec(head="odapi"), io, "m.tflite")
    assert str(error.value) == ("head odapi does not fit m.tflite: its outputs are Identity float32 [1, 25200, 85]; "
                                "heads that fit: yolov8, yolov5 (pass --head NAME)")


def test_auto_refuses_an_ambiguous_model_with_its_candidates():
    with pytest.raises(QuantbenchError, match=r"could be yolov8 \(transposed\) or yolox; pass --head NAME"):
        choose_head(ModelSpec(), _io(("out", (1, 8400, 85))), "m.tflite")
    assert choose_head(ModelSpec(head="yolox"), _io(("out", (1, 8400, 85))), "m.tflite") == "yolox"


# -- random-weight models built here, decoded by hand ------------------------------------------
SIZE, CLASSES = 64, 3


def _tflite(tmp_path: Path, channels: int, cells: int, transform) -> Path:
    """A .tflite: [1, 64, 64, 3] float32 → [1, cells, channels] = transform(random linear map of the
    image's channel means); random weights, seeded."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(channels * 1000 + cells)

    class Random(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable(rng.normal(0, 1, (3, cells * channels)).astype(np.float32))
            self.bias = tf.Variable(rng.normal(0, 1, (cells * channels,)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)])
        def __call__(self, images):
            mean = tf.reduce_mean(images, axis=[1, 2]) / 255.0  # YOLOX takes 0-255 pixels
            return transform(tf, tf.reshape(tf.matmul(mean, self.weights) + self.bias, [1, cells, channels]))

    module = Random()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    path = tmp_path / "random.tflite"
    path.write_bytes(converter.convert())
    return path


def _decoded(path: Path, head: str, **post) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Every box (no threshold, no suppression) as the head decodes it, and the raw outputs."""
    from tasks.model.runtimes import LiteRTRuntime

    runtime = LiteRTRuntime(path)
    spec = resolve_spec(parse_spec({"head": head, "input": {"resize": "stretch"},
                                    "postprocess": {"score_threshold": 0.0, "iou": 1.0, "max_detections": 100000, "multi_label": False, **post}},
                                   "test"), head, "nhwc")
    pixels = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    batch, frame = prepare_input(pixels, Preparation.of(spec, runtime.io.input, runtime.fixed_size))
    assert frame == Frame(SIZE, SIZE)
    runtime.set_input(batch)
    runtime.invoke()
    outputs = runtime.outputs()
    found = make_head(spec, runtime.io).decode(outputs, frame)
    return found.boxes, found.scores, found.classes, outputs


def _expected(boxes_xyxy: list, scores: list, classes: list):
    """Hand-computed detections, sorted as the head sorts them, boxes as normalised yxyx."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    yxyx = [[boxes_xyxy[i][1] / SIZE, boxes_xyxy[i][0] / SIZE, boxes_xyxy[i][3] / SIZE, boxes_xyxy[i][2] / SIZE] for i in order]
    return np.array(yxyx), np.array([scores[i] for i in order]), np.array([classes[i] for i in order], dtype=float)


def _check(found, expected):
    boxes, scores, classes, _ = found
    want_boxes, want_scores, want_classes = expected
    assert len(boxes) == len(want_boxes)
    assert np.allclose(scores, want_scores, atol=1e-6) and np.array_equal(classes, want_classes)
    assert np.allclose(boxes, want_boxes, atol=1e-5)


def _levels(strides, offset=0.0):
    """(stride, x, y) of every prior, level by level, row by row."""
    return [(s, x + offset, y + offset) for s in strides for y in range(math.ceil(SIZE / s)) for x in range(math.ceil(SIZE / s))]


def test_yolox_raw_outputs_decode_on_the_stride_grids(tmp_path):
    priors = _levels((8, 16, 32))  # 64 + 16 + 4
    model = _tflite(tmp_path, 5 + CLASSES, len(priors),
                    lambda tf, x: tf.concat([x[..., :4] * 0.5, tf.sigmoid(x[..., 4:])], axis=-1))
    found = _decoded(model, "yolox", decoded=False)
    [raw] = found[3].values()
    boxes, scores, classes = [], [], []
    for (stride, gx, gy), row in zip(priors, raw[0].astype(np.float64)):
        cx, cy = (row[0] + gx) * stride, (row[1] + gy) * stride
        w, h = math.exp(row[2]) * stride, math.exp(row[3]) * stride
        best = int(np.argmax(row[5:]))
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        scores.append(row[4] * row[5 + best])
        classes.append(best)
    _check(found, _expected(boxes, scores, classes))


def test_yolox_decoded_outputs_are_read_as_input_pixels(tmp_path):
    model = _tflite(tmp_path, 5 + CLASSES, 84, lambda tf, x: tf.concat([tf.sigmoid(x[..., :4]) * 60 + 2, tf.sigmoid(x[..., 4:])], axis=-1))
    found = _decoded(model, "yolox")  # decoded: told from the values
    [raw] = found[3].values()
    rows = raw[0].astype(np.float64)
    best = rows[:, 5:].argmax(axis=1)
    boxes = [[r[0] - r[2] / 2, r[1] - r[3] / 2, r[0] + r[2] / 2, r[1] + r[3] / 2] for r in rows]
    _check(found, _expected(boxes, list(rows[:, 4] * rows[np.arange(len(rows)), 5 + best]), list(best)))


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_nanodet_distributions_decode_from_the_priors(tmp_path, offset):
    priors = _levels((8, 16, 32, 64), offset)  # 64 + 16 + 4 + 1
    reg_max = 7
    model = _tflite(tmp_path, CLASSES + 4 * (reg_max + 1), len(priors),
                    lambda tf, x: tf.concat([tf.sigmoid(x[..., :CLASSES]), x[..., CLASSES:] * 2], axis=-1))
    found = _decoded(model, "nanodet", prior_offset=offset)
    [raw] = found[3].values()
    boxes, scores, classes = [], [], []
    for (stride, px, py), row in zip(priors, raw[0].astype(np.float64)):
        sides = []
        for side in range(4):
            logits = row[CLASSES + side * (reg_max + 1): CLASSES + (side + 1) * (reg_max + 1)]
            weights = np.exp(logits - logits.max())
            sides.append(sum(k * w for k, w in enumerate(weights / weights.sum())) * stride)
        cx, cy = px * stride, py * stride
        box = [cx - sides[0], cy - sides[1], cx + sides[2], cy + sides[3]]
        boxes.append([min(max(v, 0), SIZE) for v in box])
        best = int(np.argmax(row[:CLASSES]))
        scores.append(row[best])
        classes.append(best)
    _check(found, _expected(boxes, scores, classes))


def test_transposed_yolov8_rows_are_read_like_columns(tmp_path):
    model = _tflite(tmp_path, 4 + CLASSES, 84, lambda tf, x: tf.concat([tf.sigmoid(x[..., :4]) * 0.5 + 0.2, tf.sigmoid(x[..., 4:])], axis=-1))
    found = _decoded(model, "yolov8")  # [1, 84, 7]: boxes normalised (auto)
    [raw] = found[3].values()
    rows = raw[0].astype(np.float64)
    assert raw.shape == (1, 84, 4 + CLASSES)
    best = rows[:, 4:].argmax(axis=1)
    boxes = [[(r[0] - r[2] / 2) * SIZE, (r[1] - r[3] / 2) * SIZE, (r[0] + r[2] / 2) * SIZE, (r[1] + r[3] / 2) * SIZE] for r in rows]
    _check(found, _expected(boxes, list(rows[np.arange(len(rows)), 4 + best]), list(best)))


# -- spec files, bad input and the form -------------------------------------------------------
def _cli_error(capfd, *args) -> str:
    assert main(["run", *args]) == 2
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    return lines[0]


def test_a_spec_file_with_an_unknown_key_or_a_wrong_type_is_one_line(capfd, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("head: yolov8\npostprocess:\n  iou_threshold: 0.5\n")
    assert _cli_error(capfd, "--spec", str(spec), "--store", str(tmp_path / "s")) == (
        f"error: spec file {spec}: unknown key 'postprocess.iou_threshold' (known: head, input.*, postprocess.*; see 'quantbench heads')")
    spec.write_text("postprocess:\n  max_detections: many\n")
    assert _cli_error(capfd, "--spec", str(spec), "--store", str(tmp_path / "s")).startswith(
        f"error: spec file {spec}: postprocess.max_detections: Input should be a valid integer")
    assert not (tmp_path / "s").exists()  # refused before any work


def test_a_head_that_does_not_fit_the_model_fails_before_any_work(capfd, coco_mini, shared_models, tmp_path):
    error = _cli_error(capfd, "--model", str(shared_models / "yolov5n-fp16.tflite"), "--head", "ssd_postprocess",
                       "--annotations", str(coco_mini / "instances_train2017_subset.json"), "--images", str(coco_mini / "train2017"),
                       "--store", str(tmp_path / "store"))
    assert error == (f"error: head ssd_postprocess does not fit {shared_models / 'yolov5n-fp16.tflite'}: its outputs are "
                     "Identity float32 [1, 25200, 85]; heads that fit: yolov8, yolov5 (pass --head NAME)")
    assert not list((tmp_path / "store").rglob("*.json"))


def test_variants_that_cannot_be_derived_from_a_quantized_tflite_are_refused(capfd, coco_mini, shared_models, tmp_path):
    model = shared_models / "yolov8n_int8.tflite"
    error = _cli_error(capfd, "--model", str(model), "--variants", "float32", "given", "--annotations",
                       str(coco_mini / "instances_train2017_subset.json"), "--images", str(coco_mini / "train2017"), "--store", str(tmp_path / "s"))
    assert error == (f"error: {model} is already quantized: variant(s) float32 cannot be derived from it; benchmark it as 'given' "
                     "(the default for such a file), or pass its float32 .tflite or SavedModel")


def test_heads_lists_every_head_with_its_defaults(capsys):
    assert main(["heads"]) == 0
    out = capsys.readouterr().out
    for head, default in [("odapi", "classes category_id"), ("ssd_postprocess", "classes labelmap90"), ("yolov8", "iou 0.7"),
                          ("yolov5", "iou 0.6"), ("yolox", "align top-left"), ("nanodet", "reg_max 7")]:
        block = out.split(f"{head}: ", 1)[1].split("defaults from:", 1)[0]
        assert default in block, (head, block)


def test_the_flow_form_has_the_model_spec_as_one_sub_form():
    from flows.benchmark import benchmark

    schema = benchmark.parameters.model_dump()
    definitions = schema["definitions"]
    spec_field = definitions["BenchmarkConfig"]["properties"]["spec"]
    assert spec_field["title"] == "Model spec" and spec_field["$ref"] == "#/definitions/ModelSpec"
    assert set(definitions["ModelSpec"]["properties"]) == {"head", "input", "postprocess"}
    assert {"channels", "resize", "align", "pad", "scale", "mean", "std", "interpolation"} <= set(definitions["InputSpec"]["properties"])
    assert {"score_threshold", "iou", "max_detections", "classes"} <= set(definitions["PostprocessSpec"]["properties"])
    assert "auto" in str(definitions["ModelSpec"]["properties"]["head"])
