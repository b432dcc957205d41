"""Oracle: a model that outputs each image's ground truth must score AP = 1.000 through the whole
flow — conversion, sharded LiteRT inference, store, gather, pycocotools — for every variant."""
import json
from urllib.parse import unquote, urlparse

import pytest

from flows.benchmark import BenchmarkConfig, benchmark
from tasks.model.variants import DEFAULT_VARIANTS
from tests.oracle import build_oracle_model, oracle_tables


def _read(url: str):
    return json.loads(open(urlparse(url).path).read())


@pytest.mark.parametrize("input_kind", ["fixed", "dynamic"])
def test_oracle_scores_ap_1_for_every_variant(prefect_backend, oracle_data, oracle_models, tmp_path, input_kind):
    config = BenchmarkConfig(
        model=str(oracle_models[input_kind]), annotations=str(oracle_data), images=str(oracle_data.parent),
        shard_size=3, workers=2, latency_images=5, store=str(tmp_path / "store"),
    )
    report = _read(benchmark(config))
    assert [v["variant"] for v in report["variants"]] == list(DEFAULT_VARIANTS)
    expected_shape = [1, 96, 160, 3] if input_kind == "fixed" else [1, -1, -1, 3]
    assert report["model"]["input"]["shape"] == expected_shape
    for entry in report["variants"]:
        assert entry["images"] == 8 and entry["failed_images"] == 0, entry["variant"]
        for stat in ("AP", "AP50", "AP75", "AR100"):
            assert entry["bbox"][stat] == 1.0, (entry["variant"], stat, entry["bbox"])
        assert entry["delta_AP_vs_float32"] == 0.0
        detections = _read(entry["detections"])
        assert {d["image_id"] for d in detections} == {1000 + 7 * k for k in range(8)}
    sizes = {v["variant"]: v["model_bytes"] for v in report["variants"]}
    assert sizes["float16"] < sizes["float32"] and sizes["int8"] < sizes["float32"]


def test_a_model_with_the_studys_box_convention_scores_near_zero(prefect_backend, oracle_data, tmp_path):
    """The study's bug, through the project's own path: a model that emits normalised [x, y, w, h]
    instead of the TF OD API's [ymin, xmin, ymax, xmax] is converted, run by LiteRT, converted to
    COCO and evaluated exactly like a correct one, and its AP collapses (the correct oracle: 1.0)."""
    wrong = build_oracle_model(tmp_path / "xywh-model", oracle_tables(oracle_data, convention="xywh"), None)
    config = BenchmarkConfig(model=str(wrong), annotations=str(oracle_data), images=str(oracle_data.parent),
                             variants=["float32"], latency_images=3, store=str(tmp_path / "store"))
    [entry] = _read(benchmark(config))["variants"]
    assert entry["images"] == 8 and entry["detections_count"] > 0
    assert entry["bbox"]["AP"] < 0.1, entry["bbox"]


def test_report_and_summary_are_published_as_prefect_artifacts(prefect_backend, oracle_data, oracle_models, tmp_path):
    from prefect.artifacts import Artifact

    config = BenchmarkConfig(
        model=str(oracle_models["fixed"]), annotations=str(oracle_data), images=str(oracle_data.parent),
        variants=["float32", "int8"], latency_images=3, store=str(tmp_path / "store"),
    )
    url = benchmark(config)
    artifact = Artifact.get("quantbench-report")
    assert artifact.type == "table" and url in artifact.description
    rows = json.loads(artifact.data)
    assert [row["variant"] for row in rows] == ["float32", "int8"] and all(row["AP"] == 1.0 for row in rows)
    summary = Artifact.get("quantbench-summary")
    # A local store: the paths as text, no file:// link (a browser on the UI's page would not open it).
    html_path = unquote(urlparse(url).path).replace("report.json", "report.html")
    assert summary.type == "markdown" and f"HTML report: `{html_path}`" in summary.data
    assert "](file:" not in summary.data
    assert "int8: " in summary.data and "smaller" in summary.data and "ΔAP +0.0000 [+0.0000, +0.0000]" in summary.data


def test_flow_parameters_are_one_described_model():
    """The Prefect UI renders the flow's parameter schema as a form: every field is described."""
    schema = benchmark.parameters.model_dump()
    assert list(schema["properties"]) == ["config"]
    fields = schema["definitions"]["BenchmarkConfig"]["properties"]
    assert {"model", "annotations", "images", "variants", "shard_size", "workers", "threads", "limit", "store"} <= set(fields)
    assert all(field.get("description") for field in fields.values())
    assert fields["spec"]["title"] == "Model spec" and fields["shard_timeout_s"]["title"] == "Shard timeout (s)"
    # The UI shows real defaults: the four variants (and at least one must stay), no store baked in at deploy time.
    assert fields["variants"]["default"] == list(DEFAULT_VARIANTS) and fields["variants"]["minItems"] == 1
    assert fields["store"].get("default") is None and schema["properties"]["config"]["default"]["store"] is None
    with pytest.raises(ValueError, match="at least 1 item"):
        BenchmarkConfig(variants=[])
