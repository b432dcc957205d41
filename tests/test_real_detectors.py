"""The detectors people deploy, through quantbench on real COCO images: ../shared/models (YOLOv8n
weight-int8 and full-integer with int8 I/O, YOLOv5n fp16, SSD MobileNet v1 uint8 with
TFLite_Detection_PostProcess) on ../shared/coco-mini. Each AP must equal, within 0.005, an
independent reference written from the family's published pre/post-processing
(tests/detector_reference.py: its own letterbox, decode, NMS and pycocotools). Also: the SSD with
its outputs in the other build order, the CLI with --head and auto, and the spec in the shard key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.benchmark import BenchmarkConfig, benchmark
from tasks.store.object_store import split_url
from tests.detector_reference import reference_ap

REPO = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("QUANTBENCH_SHARED_MODELS", REPO.parent / "shared" / "models"))
DETECTORS = {  # file → the head auto must choose
    "yolov8n_int8.tflite": "yolov8",
    "yolov8n_full_integer_quant.tflite": "yolov8",
    "yolov5n-fp16.tflite": "yolov5",
    "ssd_mobilenet_v1_coco_quant_postprocess.tflite": "ssd_postprocess",
}


@pytest.fixture(scope="module")
def models() -> Path:
    if not all((MODELS / name).is_file() for name in DETECTORS):
        pytest.skip(f"the shared detectors are not at {MODELS} (set QUANTBENCH_SHARED_MODELS)")
    return MODELS


def _report(url: str) -> dict:
    store, key = split_url(url)
    return store.read_json(key)


def _config(model: Path, coco_mini: Path, store: Path, **settings) -> BenchmarkConfig:
    return BenchmarkConfig(model=str(model), annotations=str(coco_mini / "instances_train2017_subset.json"),
                           images=str(coco_mini / "train2017"), store=str(store), latency_images=5, **settings)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_ap_equals_an_independent_reference(prefect_backend, coco_mini, models, tmp_path, name):
    report = _report(benchmark(_config(models / name, coco_mini, tmp_path / "store")))
    [entry] = report["variants"]
    assert entry["variant"] == "given" and entry["images"] == 160 and entry["failed_images"] == 0
    assert report["model"]["head"] == DETECTORS[name]
    assert report["model"]["spec"]["postprocess"]["classes"] in ("index0", "labelmap90")  # defaults resolved into the report
    assert entry["latency"]["postprocess_ms"]["p50"] > 0 and entry["latency_ms"]["p50"] > 0
    reference = reference_ap(models / name, coco_mini / "instances_train2017_subset.json", coco_mini / "train2017")
    print(f"{name}: AP {entry['bbox']['AP']:.4f}, reference {reference:.4f}, invoke p50 {entry['latency_ms']['p50']:.1f} ms, "
          f"postprocess p50 {entry['latency']['postprocess_ms']['p50']:.2f} ms")
    assert abs(entry["bbox"]["AP"] - reference) <= 0.005
    assert entry["bbox"]["AP"] > 0.15  # a real detector on real images, not a broken decode near 0


def _reordered_ssd(source: Path, target: Path) -> Path:
    """The SSD with its graph outputs in the other build order: scores, boxes, count, classes."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(source.read_bytes(), 0)
    boxes, classes, scores, count = model.subgraphs[0].outputs
    model.subgraphs[0].outputs = [scores, boxes, count, classes]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    target.write_bytes(bytes(builder.Output()))
    return target


def test_ssd_outputs_in_the_other_order_give_the_same_ap(prefect_backend, coco_mini, models, tmp_path):
    from tasks.model.heads import make_head
    from tasks.model.preprocess import Preparation, prepare_input
    from tasks.model.runtimes import LiteRTRuntime
    from tasks.model.spec import ModelSpec, resolve_spec
    from tasks.model.tensors import ModelIO

    original = models / "ssd_mobilenet_v1_coco_quant_postprocess.tflite"
    reordered = _reordered_ssd(original, tmp_path / "ssd_reordered.tflite")
    runtime = LiteRTRuntime(reordered)
    assert [o.shape for o in runtime.io.outputs] == [(1, 10), (1, 10, 4), (1,), (1, 10)]
    settings = dict(limit=40)
    first = _report(benchmark(_config(original, coco_mini, tmp_path / "a", **settings)))["variants"][0]
    second = _report(benchmark(_config(reordered, coco_mini, tmp_path / "b", **settings)))["variants"][0]
    assert second["bbox"] == first["bbox"] and first["bbox"]["AP"] > 0.1
    # Without the op's order to go by, the head tells the outputs apart by content: same detections.
    spec = resolve_spec(ModelSpec(), "ssd_postprocess", "nhwc")
    by_op = make_head(spec, runtime.io)
    by_content = make_head(spec, ModelIO(runtime.io.input, runtime.io.outputs))
    assert by_content.roles is None
    pixels = np.asarray(Image.open(next((coco_mini / "train2017").glob("*.jpg"))).convert("RGB"))
    batch, frame = prepare_input(pixels, Preparation.of(spec, runtime.io.input, runtime.fixed_size))
    runtime.set_input(batch)
    runtime.invoke()
    a, b = by_op.decode(runtime.outputs(), frame), by_content.decode(runtime.outputs(), frame)
    assert len(a.scores) and np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores) and np.array_equal(a.classes, b.classes)


def test_the_cli_runs_a_deployed_detector_with_head_named_or_auto(coco_mini, models, tmp_path):
    env = {**os.environ, "QUANTBENCH_CACHE": str(tmp_path / "cache"), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    common = ["--annotations", str(coco_mini / "instances_train2017_subset.json"), "--images", str(coco_mini / "train2017"),
              "--limit", "20", "--latency-images", "5", "--quiet"]
    for head in ("yolov8", "auto"):
        store = tmp_path / f"store-{head}"
        result = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--model", str(models / "yolov8n_int8.tflite"),
                                 "--head", head, *common, "--store", str(store)],
                                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stdout.strip().splitlines()
        assert lines[2].startswith("| given") and lines[-1].startswith("report: ")
        report = json.loads(next(store.glob("runs/*/report.json")).read_text())
        assert report["model"]["head"] == "yolov8" and report["model"]["input"]["dtype"] == "float32"


def test_a_spec_change_never_reuses_shards(prefect_backend, coco_mini, models, tmp_path):
    model = models / "yolov8n_full_integer_quant.tflite"
    store = tmp_path / "store"
    runs = [_report(benchmark(_config(model, coco_mini, store, limit=12, shard_size=4, **extra)))
            for extra in ({}, {}, {"spec": {"postprocess": {"iou": 0.5}}})]
    assert [r["shards"]["reused"] for r in runs] == [0, 3, 0]
    assert runs[1]["variants"][0]["bbox"] == runs[0]["variants"][0]["bbox"]
    assert runs[2]["model"]["spec"]["postprocess"]["iou"] == 0.5 and runs[0]["model"]["spec"]["postprocess"]["iou"] == 0.7
    assert len({r["run_id"].split("-")[1] for r in runs}) == 2  # the run identity's settings digest follows the spec
