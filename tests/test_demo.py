"""The README's main command on the embedded demo, end to end, as a user runs it."""
import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from flows.cli import main
from tasks.score.evaluation import STAT_NAMES, defined
from tasks.store.object_store import split_url
from tests.report_checks import check_inference


def _read(url: str):
    store, key = split_url(url)
    return store.read_json(key)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[str, dict]:
    """`quantbench run` with no arguments, as `make demo` runs it, from a working folder whose
    path has a space and a non-ASCII character (the default store lands in it; cache redirected)."""
    work = tmp_path_factory.mktemp("demo") / "dir with space ü"
    work.mkdir()
    env = {**os.environ, "QUANTBENCH_CACHE": str(work / "cache"), "PREFECT_HOME": str(work / "prefect")}
    for name in ("PREFECT_API_URL", "QUANTBENCH_STORE", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        env.pop(name, None)  # ephemeral mode and the default store, as on a fresh machine
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run"], env=env, cwd=work, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Failed to send telemetry" not in result.stderr and "Traceback" not in result.stderr
    assert "progress: 16/16 shards (saved_model 4/4, float32 4/4, float16 4/4, int8 4/4)" in result.stderr  # not a terminal: lines
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("report: file://") and last.endswith("/report.json")
    report = _read(last.removeprefix("report: "))
    assert Path(unquote(urlparse(last.removeprefix("report: ")).path)).is_relative_to(work / "quantbench-results")
    return result.stdout, report


def test_prints_the_table_and_the_report_url(demo_run):
    stdout, report = demo_run
    for variant in ("saved_model", "float32", "float16", "int8"):
        assert f"| {variant}" in stdout
    assert report["run_id"] in stdout.splitlines()[-1]


def test_every_variant_says_how_fast_its_inference_ran_and_what_it_cost(demo_run):
    stdout, report = demo_run
    check_inference(report, variants=4, shards_per_variant=4)
    assert "pipeline_img_s" in stdout  # the table's column
    by_variant = {v["variant"]: v["inference"] for v in report["variants"]}
    # LiteRT shards' CPU is their own threads'; TensorFlow's (saved_model) runs on process-wide pools
    # shared with the flow, so it is not attributed rather than wrong.
    assert by_variant["saved_model"]["cpu_s"] is None
    for variant in ("float32", "float16", "int8"):
        assert 0 < by_variant[variant]["cpu_s_per_image"] < 1
    # The CLI is a fresh process: start-up is its imports and Prefect's ephemeral server, before any shard.
    stages = report["stages"]
    assert 0 < stages["wall_s"]["startup"] < stages["first_shard_after_process_start_s"]
    # Each image decoded once for the 4 variants (content-keyed, shared by a shard's tasks in the flow's process);
    # each variant is still charged its decode CPU.
    assert stages["decoded_images"]["decoded"] + stages["decoded_images"]["shared"] == 4 * 200
    assert stages["decoded_images"]["decoded"] <= 200 + 20  # at most a few decoded twice (a waiter re-prepares only on an error)
    # Each variant is scored in a process of its own, whose peak memory is its own: far below the flow
    # process, which holds TensorFlow (the process keeps no memory of the flow's across its fork and exec).
    assert all(scoring["peak_rss_mb"] < stages["flow_peak_rss_mb"] / 2 for scoring in stages["scoring"].values()), stages


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
        evaluator = COCOeval(gt, gt.loadRes(_read(entry["detections"])), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
        assert dict(zip(STAT_NAMES, map(defined, evaluator.stats))) == entry["bbox"], entry["variant"]


def test_the_run_names_its_html_page_with_the_plots_inside(demo_run, tmp_path):
    stdout, report = demo_run
    html_line, report_line = stdout.strip().splitlines()[-2:]
    assert html_line == "html: " + report_line.removeprefix("report: ").replace("/report.json", "/report.html")
    store, key = split_url(html_line.removeprefix("html: "))
    page = store.read_bytes(key).decode()
    assert page.startswith("<!DOCTYPE html>") and report["run_id"] in page and "<script" not in page
    assert all(f">{variant}<" in page for variant in ("saved_model", "float32", "float16", "int8"))
    assert page.count("data:image/") >= 4 and 'src="http' not in page
    plots = store.root / "plots"
    assert {"accuracy_vs_size.png", "accuracy_vs_latency.png", "category_delta_ap.png", "latency_distribution.png"} <= {
        p.name for p in plots.iterdir()}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots.glob("*.png"))
    assert main(["results", "show", report["run_id"], "--store", str(store.root.parents[1]), "--html", str(tmp_path)]) == 0
    assert (tmp_path / f"{report['run_id']}.html").read_text() == page


def test_report_files_are_in_the_store(demo_run):
    _, report = demo_run
    store, key = split_url(report["variants"][0]["detections"])
    run_dir = store.root.parent
    assert (run_dir / "report.csv").read_text().startswith("variant,size_MB,x_fp32")
    assert "| int8" in (run_dir / "report.md").read_text()


def test_the_ephemeral_server_recorded_the_flow_and_task_runs_artifacts_and_events(demo_run):
    """The CLI's ephemeral server (started early, without automations or block registration:
    flows.prefect_api) keeps what the run reports to Prefect, in the SQLite database under PREFECT_HOME."""
    stdout, report = demo_run
    report_path = Path(unquote(urlparse(stdout.strip().splitlines()[-1].removeprefix("report: ")).path))
    database = report_path.parents[3] / "prefect" / "prefect.db"  # work/quantbench-results/runs/<run>/report.json
    with contextlib.closing(sqlite3.connect(database)) as db:
        runs = db.execute("SELECT r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
                          "WHERE f.name = 'quantbench-benchmark'").fetchall()
        tasks = db.execute("SELECT name, state_type FROM task_run").fetchall()
        artifacts = {key for (key,) in db.execute("SELECT key FROM artifact")}
        events = dict(db.execute("SELECT event, count(*) FROM events GROUP BY event").fetchall())
    assert runs == [("COMPLETED",)]
    assert {state for _, state in tasks} == {"COMPLETED"}
    assert sum(name.startswith("infer-") for name, _ in tasks) == report["shards"]["total"] == 16
    assert {"quantbench-report", "quantbench-summary", "quantbench-progress"} <= artifacts
    assert events["prefect.flow-run.Completed"] == 1 and events["prefect.task-run.Completed"] == len(tasks)


def test_quiet_prints_only_the_table_and_the_result_lines(tmp_path):
    """``--quiet``: no progress, no Prefect lines, and none of the lines LiteRT, TensorFlow's
    converter (its calibration's "fully_quantize: 0, …" and tf.lite.Interpreter's deprecation warning)
    and ai-edge-quantizer write straight to stderr ("INFO: Created TensorFlow Lite XNNPACK delegate for
    CPU.", absl's "W0000 …] Ignored output_format.", tqdm progress bars); an error line still reaches
    the terminal. The demo's quick diagnosis of int8_full (2 ops, 8 images) rides along."""
    env = {**os.environ, "QUANTBENCH_CACHE": str(tmp_path / "cache"), "PREFECT_HOME": str(tmp_path / "prefect")}
    for name in ("PREFECT_API_URL", "QUANTBENCH_STORE"):
        env.pop(name, None)
    run = [sys.executable, "-m", "flows.cli", "run", "--quiet", "--variants", "float32", "int8", "dynamic_wi8_afp32", "--limit", "8",
           "--latency-images", "5", "--store", str(tmp_path / "store"), "--diagnose", "int8_full", "--diagnose-ops", "2",
           "--diagnose-images", "8", "--bootstrap-resamples", "20"]
    result = subprocess.run(run, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| variant") and any(line.startswith("| int8") for line in lines)
    assert any(line.startswith("| dynamic_wi8_afp32 ") for line in lines)
    assert any(line.startswith("| int8_full ") for line in lines)  # the diagnosed variant joins the run
    assert lines[-3].startswith("diagnosis: int8_full ")
    assert lines[-2].startswith("html: ") and lines[-1].startswith("report: ")
    diagnosis = _read(lines[-1].removeprefix("report: "))["diagnosis"]
    assert diagnosis["images"] == 8 and len(diagnosis["ops"]) == 2 and diagnosis["errors"] and diagnosis["summary"] in lines[-3]
    failed = subprocess.run([*run[:4], "--model", str(tmp_path / "absent")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 2 and failed.stderr.startswith("error: model not found:") and failed.stderr.count("\n") == 1
