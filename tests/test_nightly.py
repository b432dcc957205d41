"""The nightly loop on the demo dataset, in one store, one model location: the demo model, the same
model again, then a regressed checkpoint exported into the same location (the demo model with its
boxes shifted) with --fail-on-regression. The second run must find its predecessor and no
regression (latency included: it is re-measured); the third must publish its report, name the
regressions and exit 3; the history holds every run."""
from __future__ import annotations

import pandas as pd
import pytest

from tasks.store.object_store import split_url
from tests.conftest import DEFAULT_VARIANTS


@pytest.fixture(scope="module")
def nightly(nightly_runs):
    """The three runs' exit statuses and reports, and the store (conftest's ``nightly_runs``)."""
    return nightly_runs


def test_a_clean_rerun_finds_its_predecessor_and_no_regression(nightly):
    (first_status, first), (second_status, second), _ = nightly[0]
    assert first_status == second_status == 0
    assert first["compared_with"] is None and first["regressions"] == []
    assert second["compared_with"] == first["run_id"]
    assert second["regressions"] == [], second["regressions"]
    assert second["shards"]["reused"] == second["shards"]["total"]  # inference reused, latency re-measured
    assert [v["latency"] for v in second["variants"]] != [v["latency"] for v in first["variants"]]


def test_a_regressed_checkpoint_publishes_its_report_and_exits_3(nightly):
    runs, _ = nightly
    _, second = runs[1]
    status, third = runs[2]
    assert status == 3 and third["compared_with"] == second["run_id"]
    regressed = {(r["variant"], r["metric"]) for r in third["regressions"]}
    assert {(v, "AP") for v in DEFAULT_VARIANTS} <= regressed
    for regression in third["regressions"]:
        if regression["metric"] == "AP":
            low, high = regression["ci"]
            assert low <= regression["change"] <= high < 0 and regression["change"] <= -0.005


def test_every_variant_has_a_paired_bootstrap_ci_of_its_delta_ap(nightly):
    (_, first), *_ = nightly[0]
    by_variant = {v["variant"]: v for v in first["variants"]}
    assert by_variant["float32"]["delta_AP_vs_float32_ci"] is None
    for variant in ("saved_model", "float16", "int8"):
        entry = by_variant[variant]
        low, high = entry["delta_AP_vs_float32_ci"]
        assert low <= entry["delta_AP_vs_float32"] <= high, variant
    assert by_variant["saved_model"]["delta_AP_vs_float32_ci"] == [0.0, 0.0]  # same detections as float32 here
    report_csv = (split_url(by_variant["int8"]["detections"])[0].root.parent / "report.csv").read_text()
    low, high = by_variant["int8"]["delta_AP_vs_float32_ci"]
    assert f"[{low:+.4f}, {high:+.4f}]" in report_csv


def test_history_holds_every_run_and_variant(nightly):
    runs, store = nightly
    history = pd.read_parquet(store / "history")
    assert len(history) == 3 * 4 and set(history["variant"]) == set(DEFAULT_VARIANTS)
    assert sorted(history["run_id"].unique()) == sorted(report["run_id"] for _, report in runs)
    assert history["model_digest"].nunique() == 2 and history["dataset_digest"].nunique() == 1


def test_the_latency_criterion_needs_a_large_rise_and_no_overlapping_round():
    from tasks.nightly.regression import latency_regressed

    before = {"p50": 10.0, "p50_rounds": [9.0, 10.0, 12.0]}
    assert latency_regressed({"p50": 26.0, "p50_rounds": [25.0, 26.0, 27.0]}, before, 1.5)
    assert not latency_regressed({"p50": 24.0, "p50_rounds": [23.0, 24.0, 25.0]}, before, 1.5)  # within 2.5x
    assert not latency_regressed({"p50": 26.0, "p50_rounds": [11.0, 26.0, 27.0]}, before, 1.5)  # a round as fast as before
    assert latency_regressed({"p50": 26.0}, {"p50": 10.0}, 1.5)  # reports from before timing rounds


def test_the_previous_run_is_evaluated_again_only_when_a_drop_reaches_the_threshold(coco_mini, tmp_path, monkeypatch):
    """A night whose APs did not drop re-evaluates nothing (at COCO scale that is minutes and GBs);
    a drop is still judged on both runs' detections, with its bootstrap CI."""
    import json

    import tasks.nightly.regression as regression
    from tasks.score.evaluation import ground_truth
    from tasks.score.significance import per_image_evaluation
    from tests.test_significance import noisy_detections

    document = json.loads((coco_mini / "instances_train2017_subset.json").read_text())
    gt, image_ids = ground_truth(document), [image["id"] for image in document["images"]]
    good, poor = noisy_detections(document, seed=0), [d for d in noisy_detections(document, seed=1) if d["score"] < 0.6]
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "poor.json").write_text(json.dumps(poor))

    def report(detections: str, ap: float) -> dict:
        entry = {"variant": "float32", "bbox": {"AP": ap}, "failures": [], "model_bytes": 100, "latency": {"p50": 1.0},
                 "detections": (tmp_path / detections).as_uri()}
        return {"variants": [entry]}

    evaluated = []
    monkeypatch.setattr(regression, "per_image_evaluation", lambda *args: evaluated.append(args[-1]) or per_image_evaluation(*args))
    thresholds = regression.Thresholds(0.005, 0.01, 1.5)
    current = {"float32": {"bbox": per_image_evaluation(gt, good, image_ids)}}
    assert regression.detect(report("good.json", 0.5), report("good.json", 0.5), current, gt, thresholds, 50) == []
    assert evaluated == []
    dropped = {"float32": {"bbox": per_image_evaluation(gt, poor, image_ids)}}
    [found] = regression.detect(report("poor.json", 0.3), report("good.json", 0.5), dropped, gt, thresholds, 50)
    assert evaluated == ["bbox"] and found["metric"] == "AP" and found["ci"][1] < 0
