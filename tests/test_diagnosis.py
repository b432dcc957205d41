"""The op diagnosis (issue 19) on a model built here with one fragile op: a 1x1 convolution whose
input has one channel 1000x larger than the others. ``dynamic_wi8_afp32`` quantizes that input to
int8 per image on the fly, which rounds the small channels away, and the op's weights ignore the
large channel: its output is mostly lost. The convolutions before and after it quantize well."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from tasks.data.dataset import load_dataset, make_shards
from tasks.model.conversion import quantize
from tasks.model.diagnosis import OpError, float_ops_name, float_ops_variant, numeric_errors, rank_ops
from tasks.model.tflite_inspect import main_graph
from tasks.model.variants import describe
from tasks.run.inference import ShardJob
from tasks.publish.diagnosis import diagnosis_text
from tasks.score.diagnosis import RECOVERY_RULE, OpRecovery, Sweep, recovered_ops, sweep, sweep_report
from tasks.store.object_store import open_store
from tasks.store.recorded import read_recorded, write_recorded
from tests.oracle import SCALE, oracle_tables, write_oracle_dataset

SIZE, CHANNELS = 32, 8


def fragile_parameters() -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """The seeded generator (for the other weights), the first conv's bias (channel 0 at 1000, the
    others 0.1) and the fragile 1x1 conv's weights (channel 0's row ~0: it ignores that channel)."""
    rng = np.random.default_rng(19)
    first_bias = np.full(CHANNELS, 0.1, np.float32)
    first_bias[0] = 1000.0
    fragile_weights = rng.normal(0, 1, (1, 1, CHANNELS, CHANNELS)).astype(np.float32)
    fragile_weights[:, :, 0, :] = 1e-4
    return rng, first_bias, fragile_weights


def fragile_model() -> bytes:
    """float32 ``.tflite``: [1, 32, 32, 3] in [0, 1] → conv 3x3 (3→8, ReLU; channel 0 biased to
    ~1000) → the fragile conv 1x1 (8→8, ignores channel 0) → conv 3x3 (8→4) → [1, 32, 32, 4]."""
    tf = pytest.importorskip("tensorflow")
    rng, first_bias, fragile_weights = fragile_parameters()

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


# -- metric-linked: an oracle detector whose boxes move by the fragile op's error ---------------
ORACLE_SIZES = [(200, 120), (97, 310), (160, 160), (333, 222), (128, 128), (300, 451), (250, 180), (180, 250)]


def fragile_detector(folder, tables) -> bytes:
    """float32 ``.tflite`` of an oracle detector (tests/oracle.py: it reads each image's ground
    truth from tables by its colour) whose boxes are shifted by ``0.05 × mean |y − y_ref|``: ``y``
    is the fragile 1x1 convolution of :func:`fragile_model`'s features, ``y_ref`` the same product
    written as MUL and SUM (which the quantizer leaves float). Exact in float32 (shift ~1e-7);
    with the convolution quantized, boxes move by a few percent of the image."""
    tf = pytest.importorskip("tensorflow")
    from tasks.model.conversion import convert

    rng, first_bias, fragile_weights = fragile_parameters()
    scale = 1.0 / SCALE

    class FragileOracle(tf.Module):
        def __init__(self):
            super().__init__()
            self.first = tf.Variable(rng.normal(0, 0.5, (3, 3, 3, CHANNELS)).astype(np.float32))
            self.first_bias = tf.Variable(first_bias)
            self.fragile = tf.Variable(fragile_weights)
            self.tables = {name: tf.constant(value) for name, value in tables.items()}

        @tf.function(input_signature=[tf.TensorSpec([1, 64, 64, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            pixels = tf.cast(input_tensor, tf.float32) / 255.0
            features = tf.nn.relu(tf.nn.conv2d(pixels, self.first, 1, "SAME") + self.first_bias)
            mixed = tf.nn.conv2d(features, self.fragile, 1, "SAME")
            reference = tf.reduce_sum(features[..., :, None] * self.fragile[0, 0], axis=-2)
            shift = 0.05 * tf.reduce_mean(tf.abs(mixed - reference))
            colour = tf.cast(input_tensor[0, 0, 0], tf.int32)
            index = colour[0] + 256 * colour[1]
            boxes = tf.clip_by_value(tf.cast(tf.gather(self.tables["boxes"], index), tf.float32) * scale + shift, 0.0, 1.0)
            return {
                "detection_boxes": boxes[None],
                "detection_scores": (tf.cast(tf.gather(self.tables["scores"], index), tf.float32) * scale)[None],
                "detection_classes": tf.cast(tf.gather(self.tables["classes"], index), tf.float32)[None],
                "num_detections": tf.cast(tf.gather(self.tables["counts"], index), tf.float32)[None],
            }

    module = FragileOracle()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return convert(folder, "float32")


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
    """The fragile detector's float32 and dynamic_wi8_afp32 variants in a store, and a shard job
    over the oracle dataset."""
    root = tmp_path_factory.mktemp("fragile-detector")
    annotations = write_oracle_dataset(root / "data", ORACLE_SIZES)
    float32 = fragile_detector(root / "model", oracle_tables(annotations))
    store = open_store((root / "store").as_uri())
    artifacts = {}
    for name, model in (("float32", float32), ("dynamic_wi8_afp32", quantize(float32, "dynamic_wi8_afp32"))):
        write_recorded(store, f"models/fragile/{name}.tflite", model)
        artifacts[name] = describe(name, model, store.url_for(f"models/fragile/{name}.tflite"))
    dataset = load_dataset(str(annotations), str(root / "data"))
    shard, = make_shards(dataset, 100)
    job = ShardJob("float32", artifacts["float32"].url, "fragile", dataset.annotations_digest, dataset.images_url, shard,
                   store.url, category_ids=dataset.category_ids, model_sha256=artifacts["float32"].sha256)
    return artifacts, job, json.loads(annotations.read_text())


def test_the_sweep_ranks_the_fragile_op_by_ap_recovered_with_and_without_annotations(detector_run):
    artifacts, job, annotations = detector_run
    float32, variant = read_recorded(open_store(job.store_url), "models/fragile/float32.tflite"), \
        read_recorded(open_store(job.store_url), "models/fragile/dynamic_wi8_afp32.tflite")
    batches = [np.full((1, 64, 64, 3), (k, 0, 128), np.uint8) for k in range(3)]
    candidates = rank_ops(numeric_errors(float32, variant, batches), 2)
    ops, _ = main_graph(float32)
    convolution_outputs = {o for op in ops if op.op_type == "CONV_2D" for o in op.outputs}
    fragile, = (op.index for op in ops if op.op_type == "CONV_2D" and convolution_outputs & set(op.inputs))  # reads the first conv
    assert candidates[0].index == fragile

    labelled = sweep(job, artifacts["float32"], artifacts["dynamic_wi8_afp32"], candidates, annotations, resamples=50)
    assert labelled.reference == "annotations" and labelled.images == len(ORACLE_SIZES)
    assert labelled.float32_ap > 0.95 and labelled.float32_ap - labelled.variant_ap > 0.3  # the quantized variant loses AP
    best, other = labelled.rows
    assert best.error.index == fragile and best.variant == f"dynamic_wi8_afp32+float_op{fragile}"
    assert best.recovered >= 0.9 * (labelled.float32_ap - labelled.variant_ap)
    assert best.ci[0] > 0 and other.recovered < 0.1 * best.recovered

    unlabelled = sweep(job, artifacts["float32"], artifacts["dynamic_wi8_afp32"], candidates, None, resamples=50)
    assert unlabelled.reference == "pseudo-AP vs float32"
    assert unlabelled.float32_ap > 0.95 > unlabelled.variant_ap
    assert unlabelled.rows[0].error.index == fragile
    assert unlabelled.rows[0].recovered >= 0.9 * (unlabelled.float32_ap - unlabelled.variant_ap)


def test_quantbench_diagnose_prints_the_ranking(detector_run, prefect_backend, tmp_path, capsys):
    artifacts, job, _ = detector_run
    model = tmp_path / "fragile.tflite"
    model.write_bytes(read_recorded(open_store(job.store_url), "models/fragile/float32.tflite"))
    annotations = next(Path(job.images_url).glob("*.json"))
    status = main(["diagnose", "--model", str(model), "--annotations", str(annotations), "--images", job.images_url,
                   "--store", str(tmp_path / "store"), "--diagnose-ops", "2", "--bootstrap-resamples", "20", "--eval-backend", "faster-coco-eval"])
    out = capsys.readouterr().out
    assert status == 0, out
    context, summary, recovered, header, first, second, cost = out.strip().splitlines()[-7:]
    assert context.startswith("dynamic_wi8_afp32: AP ") and "annotations" in context
    culprit = summary.split("; op ")[1].split()[0]
    assert summary.startswith("dynamic_wi8_afp32 loses ") and " CONV_2D " in summary and "keeping it float: AP " in summary
    assert recovered == (f"recovered variant dynamic_wi8_afp32+float_1: op {culprit} kept float (rule: ops whose AP-recovered CI "
                         "lies above 0, most AP recovered per added byte first, until their recoveries add up to the loss)")
    assert header.split()[:3] == ["op", "type", "tensor"]
    assert first.split()[0] == culprit != second.split()[0]
    assert cost.startswith("cost per op (median wall s): build ") and ", sweep " in cost


def test_quantbench_diagnose_refuses_bad_settings_in_one_line(capsys):
    assert main(["diagnose", "--diagnose-ops", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --diagnose-ops: Input should be greater than or equal to 1"


def test_the_text_names_a_culprit_only_when_its_recovery_is_significant():
    error = OpError(40, "CONV_2D", "add_27;Conv2D_14", (1, 40, 40, 4), 34.8, 0.0021, math.inf, True)
    noisy = OpRecovery(error, "dynamic_wi8_afp32+float_op40", 1_000_500, 0.903, 0.002, [-0.001, 0.006])
    swept = Sweep("dynamic_wi8_afp32", "annotations", 100, 0.902, 0.901, 1_000_000, (noisy,))
    assert recovered_ops(swept) == []
    lines = diagnosis_text(sweep_report(swept, [error], None, {})).splitlines()
    assert lines[:3] == ["dynamic_wi8_afp32: AP 0.901 vs float32 0.902 (loses 0.001) on 100 images, annotations",
                         "dynamic_wi8_afp32 loses 0.001 AP; no op recovers AP significantly on 100 images "
                         "(no 95% CI of AP recovered lies above 0)",
                         "no recovered variant made: no op recovers AP significantly (no 95% CI of AP recovered lies above 0)"]
    clear = OpRecovery(error, "dynamic_wi8_afp32+float_op40", 1_000_500, 0.283, 0.082, [0.06, 0.1])
    swept = Sweep("dynamic_wi8_afp32", "annotations", 100, 0.289, 0.201, 1_000_000, (clear,))
    assert recovered_ops(swept) == [40]
    report = sweep_report(swept, [error], {"variant": "dynamic_wi8_afp32+float_1", "ops": [40], "rule": RECOVERY_RULE}, {})
    assert report["ops"][0]["own_sqnr_db"] is None and report["ops"][0]["added_bytes"] == 500  # JSON: null for infinite SQNR
    lines = diagnosis_text(report).splitlines()
    assert lines[1] == "dynamic_wi8_afp32 loses 0.088 AP; op 40 CONV_2D `add_27;Conv2D_14` holds 93 % of it; keeping it float: AP 0.283 at +0.0 MB"
    assert lines[4].split() == ["40", "CONV_2D", "add_27;Conv2D_14", "1x40x40x4", "34.8", "inf", "0.0021", "0.283", "+0.082",
                                "[+0.060,", "+0.100]", "+0.5"]


def test_the_recovered_recipe_takes_significant_ops_cheapest_per_recovered_ap_until_the_loss_is_covered():
    def row(index, recovered, low, added):
        error = OpError(index, "CONV_2D", f"t{index}", (1, 4), 20.0, 0.01, 20.0, True)
        return OpRecovery(error, f"v+float_op{index}", 1_000_000 + added, None, recovered, [low, recovered + 0.01])

    rows = (row(1, 0.05, 0.01, 100_000), row(2, 0.04, 0.02, 1_000), row(3, 0.03, -0.01, 10), row(4, 0.02, 0.005, 400))
    # lost 0.06: op 4 (0.02 for 400 B) and op 2 (0.04 for 1 kB) cover it; op 3's CI spans 0; op 1 costs 100 kB
    assert recovered_ops(Sweep("v", "annotations", 50, 0.30, 0.24, 1_000_000, rows)) == [4, 2]
    assert recovered_ops(Sweep("v", "annotations", 50, 0.30, 0.20, 1_000_000, rows)) == [4, 2, 1]  # lost 0.10: all three
    assert recovered_ops(Sweep("v", "annotations", 50, 0.30, 0.30, 1_000_000, rows)) == []  # nothing lost


def test_several_ops_kept_float_in_one_build(models, images, tmp_path):
    float32, variant = models
    first, fragile = (row.index for row in numeric_errors(float32, variant, images)[:2])
    artifact, model = float_ops_variant(open_store(str(tmp_path / "store")), float32, "dynamic_wi8_afp32", [fragile, first])
    assert artifact.variant == f"dynamic_wi8_afp32+float_ops{first}.{fragile}"
    assert [row.quantized for row in numeric_errors(float32, model, images) if row.op_type == "CONV_2D"] == [False, False, True]
    assert len(variant) < artifact.model_bytes < len(float32)


def diagnose_op_task_runs(since) -> list[str]:
    """Names of the ``diagnose-op`` task runs started after ``since`` (this test's), from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="diagnose-op-"),
                                                                   start_time=TaskRunFilterStartTime(after_=since)))
    return sorted(run.name for run in runs)


def test_a_run_with_diagnose_benchmarks_the_recovered_recipe_and_reports_the_diagnosis(detector_run, prefect_backend, tmp_path, capsys):
    from datetime import datetime, timezone

    artifacts, job, _ = detector_run
    model = tmp_path / "fragile.tflite"
    float32 = read_recorded(open_store(job.store_url), "models/fragile/float32.tflite")
    model.write_bytes(float32)
    ops, _ = main_graph(float32)
    convolution_outputs = {o for op in ops if op.op_type == "CONV_2D" for o in op.outputs}
    fragile, = (op.index for op in ops if op.op_type == "CONV_2D" and convolution_outputs & set(op.inputs))
    annotations = next(Path(job.images_url).glob("*.json"))
    store = tmp_path / "store"
    arguments = ["run", "--model", str(model), "--annotations", str(annotations), "--images", job.images_url, "--store", str(store),
                 "--variants", "float32", "--diagnose", "dynamic_wi8_afp32", "--diagnose-ops", "2", "--bootstrap-resamples", "20",
                 "--latency-images", "3", "--quiet"]
    started = datetime.now(timezone.utc)
    assert main(arguments) == 0
    out = capsys.readouterr().out
    report = json.loads(next(store.glob("runs/*/report.json")).read_text())
    recovered = "dynamic_wi8_afp32+float_1"
    rows = {row["variant"]: row for row in report["variants"]}
    assert list(rows) == ["float32", "dynamic_wi8_afp32", recovered]  # the diagnosed variant added, the recipe after it
    diagnosis = report["diagnosis"]
    assert diagnosis["variant"] == "dynamic_wi8_afp32" and diagnosis["reference"] == "annotations"
    indices = [row["index"] for row in diagnosis["errors"]]
    assert diagnosis["images"] == len(ORACLE_SIZES) and fragile in indices and indices == sorted(indices)  # network order
    assert diagnosis["ops"][0]["index"] == fragile and diagnosis["ops"][0]["ci"][0] > 0
    assert diagnosis["recovered_variant"]["variant"] == recovered and diagnosis["recovered_variant"]["ops"] == [fragile]
    assert diagnosis["cost_s"]["ops"] == 2 and diagnosis["summary"] in out
    # the recovered recipe, benchmarked in full: float32's AP back, smaller than float32, its CI vs float32 spans 0
    assert rows[recovered]["bbox"]["AP"] >= rows["float32"]["bbox"]["AP"] - 0.05 > rows["dynamic_wi8_afp32"]["bbox"]["AP"]
    assert rows["dynamic_wi8_afp32"]["model_bytes"] < rows[recovered]["model_bytes"] < rows["float32"]["model_bytes"]
    assert rows[recovered]["latency_ms"]["p50"] > 0
    assert diagnose_op_task_runs(started) == sorted(f"diagnose-op-{row['index']}-{row['op_type']}" for row in diagnosis["ops"])

    built = {path: path.stat().st_mtime_ns for path in (store / "models" / "diagnosis").rglob("*.tflite")}
    assert len(built) == 2  # one per swept op; the recovered recipe keeps one op float: the same build as its sweep's
    assert main(arguments) == 0  # a rerun reuses every build and shard
    assert {path: path.stat().st_mtime_ns for path in (store / "models" / "diagnosis").rglob("*.tflite")} == built
    again = json.loads(sorted(store.glob("runs/*/report.json"))[-1].read_text())  # run ids begin with their UTC time
    assert again["shards"]["computed"] == 0 and again["diagnosis"]["ops"] == [
        {**row, "build_s": again_row["build_s"], "score_s": again_row["score_s"]} for row, again_row in zip(diagnosis["ops"], again["diagnosis"]["ops"])]
    capsys.readouterr()
    assert main(["results", "history", "--store", str(store), "--variant", recovered, "--csv"]) == 0  # nightly history keeps the recipe
    history = capsys.readouterr().out.strip().splitlines()
    assert len(history) == 3 and all(f",{recovered}," in line for line in history[1:])


def test_the_numeric_pass_skips_tensors_no_op_writes(tmp_path):
    """The bench's MobileNet-like detector (converted by TF 2.18.1) has a non-constant int32 RESHAPE
    shape tensor, ``arith.constant1``, that no op writes and LiteRT cannot read ("Invalid tensor
    size"): the check for changed selections must not read it."""
    from bench.diagnosis_detector import build
    from tasks.model.conversion import convert

    float32 = convert(build(tmp_path / "model", 160), "float32")
    ops, tensors = main_graph(float32)
    written = {o for op in ops for o in op.outputs}
    assert any(t.dtype == "int32" and not t.constant and i not in written for i, t in enumerate(tensors))
    rows = numeric_errors(float32, quantize(float32, "dynamic_wi8_afp32"), [np.zeros((1, 160, 160, 3), np.uint8)])
    assert sum(row.quantized for row in rows) > 40 and rank_ops(rows)[0].quantized
