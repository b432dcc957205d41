"""A two-stage model with Select TF ops and a mask head, through the whole flow."""
import json
from urllib.parse import urlparse

import pytest

from flows.benchmark import BenchmarkConfig, benchmark
from tests.two_stage import build_two_stage_model

FLEX = ["FlexCombinedNonMaxSuppression", "FlexCropAndResize"]


@pytest.fixture(scope="module")
def report(prefect_backend, oracle_data, tmp_path_factory) -> dict:
    model = build_two_stage_model(tmp_path_factory.mktemp("two-stage") / "model")
    config = BenchmarkConfig(
        model=str(model), annotations=str(oracle_data), images=str(oracle_data.parent), spec={"postprocess": {"classes": "index0"}},
        shard_size=4, latency_images=3, store=str(tmp_path_factory.mktemp("store")),
    )
    return json.loads(open(urlparse(benchmark(config)).path).read())


def test_every_default_variant_converts_with_flex_ops_and_runs(report):
    assert report["model"]["input"]["shape"] == [1, -1, -1, 3]
    by_variant = {v["variant"]: v for v in report["variants"]}
    assert list(by_variant) == ["saved_model", "float32", "float16", "int8"]
    for variant in ("float32", "float16", "int8"):
        entry = by_variant[variant]
        assert entry["flex_ops"] == FLEX, variant
        assert entry["op_counts"]["FlexCombinedNonMaxSuppression"] == 1 and entry["op_counts"]["CONV_2D"] == 2
        assert entry["images"] == 8 and entry["failed_images"] == 0
    assert by_variant["float16"]["weights_by_dtype"]["float16"] > 0 and by_variant["int8"]["weights_by_dtype"]["int8"] > 0


def test_masks_are_evaluated_as_segm(report):
    for entry in report["variants"]:
        assert entry["detections_count"] > 0
        assert set(entry["segm"]) >= {"AP", "AP50", "AP75", "AR100"}
        detections = json.loads(open(urlparse(entry["detections"]).path).read())
        assert all(isinstance(d["segmentation"]["counts"], str) for d in detections)
    by_variant = {v["variant"]: v for v in report["variants"]}
    assert "delta_mask_AP_vs_float32" in by_variant["int8"]


def test_index0_classes_map_to_the_dataset_categories(report):
    for entry in report["variants"]:
        detections = json.loads(open(urlparse(entry["detections"]).path).read())
        assert {d["category_id"] for d in detections} <= {2, 5, 90}
        assert entry["detections_outside_categories"] == {}


def test_a_flex_model_without_tensorflow_fails_clearly(tmp_path):
    import subprocess
    import sys

    from tasks.model.conversion import convert

    model = tmp_path / "flex.tflite"
    model.write_bytes(convert(build_two_stage_model(tmp_path / "model"), "float32"))
    script = (
        "import sys; sys.modules['tensorflow'] = None  # as in an image without TensorFlow\n"
        "from tasks.store.errors import QuantbenchError\nfrom tasks.model.runtimes import LiteRTRuntime\n"
        f"try:\n    LiteRTRuntime({str(model)!r})\nexcept QuantbenchError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert str(model) in result.stdout and "FlexCombinedNonMaxSuppression" in result.stdout
    assert "needs TensorFlow, which is not installed here" in result.stdout
