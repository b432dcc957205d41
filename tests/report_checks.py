"""Checks every published report must pass, shared by the end-to-end tests."""
from __future__ import annotations

import pytest

MB = 1_000_000


def check_inference(report: dict, variants: int, shards_per_variant: int) -> None:
    """Every variant says how fast its shards ran, in units that make sense (report["variants"][i]["inference"])."""
    assert len(report["variants"]) == variants
    for entry in report["variants"]:
        inference = entry["inference"]
        assert inference["shards"] == inference["shards_measured"] == shards_per_variant, inference
        assert inference["images"] == entry["images"]
        assert inference["wall_s"] > 0 and inference["images_per_s"] > 0
        assert abs(inference["images_per_s"] - inference["images"] / inference["wall_s"]) <= 0.01 * inference["images_per_s"]
        assert inference["peak_rss_mb"] > entry["model_bytes"] / MB, (entry["variant"], inference["peak_rss_mb"], entry["model_bytes"])
        assert 0 <= inference["load_s"] < inference["wall_s"]
        if inference["cpu_s"] is not None:
            assert inference["cpu_s"] > 0 and inference["cpu_s_per_image"] * inference["images"] == pytest.approx(inference["cpu_s"], rel=0.01)
    stages = report["stages"]["wall_s"]
    assert set(stages) >= {"startup", "inputs", "conversion", "inference", "latency", "evaluation", "report"}
    assert all(seconds is None or seconds >= 0 for seconds in stages.values())
    scoring = report["stages"]["scoring"]  # each variant scored in a process of its own, its peak memory recorded
    assert set(scoring) == {entry["variant"] for entry in report["variants"]}
    assert all(process["wall_s"] > 0 and process["peak_rss_mb"] > 20 for process in scoring.values())
    assert report["stages"]["flow_peak_rss_mb"] > 20
