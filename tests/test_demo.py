"""The README's main command on the embedded demo, end to end, as a user runs it."""
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.evaluation import STAT_NAMES


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[str, dict]:
    """`quantbench run` with no arguments (store and cache redirected to a temporary folder)."""
    work = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "QUANTBENCH_STORE": str(work / "store"), "QUANTBENCH_CACHE": str(work / "cache"),
           "PREFECT_HOME": str(work / "prefect")}
    env.pop("PREFECT_API_URL", None)  # ephemeral mode, as on a fresh machine
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run"], env=env, cwd=work, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("report: file://") and last.endswith("/report.json")
    report = json.loads(Path(urlparse(last.removeprefix("report: ")).path).read_text())
    return result.stdout, report


def test_prints_the_table_and_the_report_url(demo_run):
    stdout, report = demo_run
    for variant in ("saved_model", "float32", "float16", "int8"):
        assert f"| {variant}" in stdout
    assert report["run_id"] in stdout.splitlines()[-1]


def test_demo_model_is_accurate_and_quantization_shrinks_it(demo_run):
    _, report = demo_run
    by_variant = {v["variant"]: v for v in report["variants"]}
    assert list(by_variant) == ["saved_model", "float32", "float16", "int8"]
    for entry in by_variant.values():
        assert entry["images"] == 200 and entry["failed_images"] == 0
        assert set(entry["latency_ms"]) == {"mean", "p50", "p90", "p99"} and entry["latency"]["runs"] == 50
        assert entry["latency_ms"]["p50"] <= entry["latency_ms"]["p90"] <= entry["latency_ms"]["p99"]
    assert by_variant["float32"]["bbox"]["AP"] >= 0.5
    assert by_variant["saved_model"]["bbox"]["AP"] >= 0.5
    assert by_variant["float16"]["size_vs_float32"] <= 0.55
    assert by_variant["int8"]["size_vs_float32"] <= 0.35
    assert by_variant["int8"]["weights_by_dtype"]["int8"] > 0 and by_variant["float16"]["weights_by_dtype"]["float16"] > 0
    assert report["host"]["cpu_count"] >= 1 and report["host"]["versions"]["ai-edge-litert"]


def test_map_recomputed_from_the_stored_detections_matches_the_report(demo_run):
    _, report = demo_run
    annotations = report["dataset"]["annotations"]
    for entry in report["variants"]:
        gt = COCO(annotations)
        detections = json.loads(Path(urlparse(entry["detections"]).path).read_text())
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
        assert dict(zip(STAT_NAMES, map(float, evaluator.stats))) == entry["bbox"], entry["variant"]


def test_report_files_are_in_the_store(demo_run):
    _, report = demo_run
    run_dir = Path(urlparse(report["variants"][0]["detections"]).path).parents[1]
    assert (run_dir / "report.csv").read_text().startswith("variant,size_MB,x_fp32")
    assert "| int8" in (run_dir / "report.md").read_text()
