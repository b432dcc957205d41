"""Every variant beyond the study's three, on the demo model: produced, verified by its weight
bytes per dtype, run through the whole flow, and reported with its quantization coverage."""
import json
from urllib.parse import urlparse

import pytest

from flows.benchmark import BenchmarkConfig, benchmark
from tasks.store.errors import QuantbenchError

EXTRA = ["int8_full", "int16x8", "weight_only_wi8_afp32", "dynamic_wi8_afp32", "weight_only_wf16_afp32"]
INT8_WEIGHTS = ["int8_full", "int16x8", "weight_only_wi8_afp32", "dynamic_wi8_afp32"]


@pytest.fixture(scope="module")
def report(prefect_backend, tmp_path_factory) -> dict:
    config = BenchmarkConfig(variants=["float32", *EXTRA], limit=40, shard_size=20, latency_images=5,
                             store=str(tmp_path_factory.mktemp("variants")))
    return json.loads(open(urlparse(benchmark(config)).path).read())


def test_every_extra_variant_holds_the_weights_it_claims(report):
    by_variant = {v["variant"]: v for v in report["variants"]}
    assert list(by_variant) == ["float32", *EXTRA]
    float32_weights = by_variant["float32"]["weights_by_dtype"]["float32"]
    for variant in INT8_WEIGHTS:
        entry = by_variant[variant]
        # ~1 byte per float32 weight (4 bytes) in int8: the whole network is quantized.
        assert entry["weights_by_dtype"]["int8"] >= 0.24 * float32_weights, variant
        assert entry["size_vs_float32"] <= 0.35 and entry["quantized_weight_share"] >= 0.95, variant
    fp16 = by_variant["weight_only_wf16_afp32"]
    assert fp16["weights_by_dtype"]["float16"] >= 0.49 * float32_weights and fp16["size_vs_float32"] <= 0.55
    assert by_variant["float32"]["quantized_weight_share"] == 0.0


def test_extra_variants_keep_the_demo_detector_accurate(report):
    for entry in report["variants"]:
        assert entry["images"] == 40 and entry["failed_images"] == 0
        assert entry["bbox"]["AP"] >= 0.5, entry["variant"]
        assert abs(entry["delta_AP_vs_float32"]) < 0.1, entry["variant"]


def test_coverage_is_reported(report):
    assert report["calibration"].startswith("32 images from file://") and report["calibration"].endswith("/calib")
    by_variant = {v["variant"]: v for v in report["variants"]}
    for variant in EXTRA:
        entry = by_variant[variant]
        assert entry["op_counts"]["CONV_2D"] > 0 and entry["flex_ops"] == []
        assert set(entry["max_abs_diff_vs_float32"]) == {"detection_boxes", "detection_classes", "detection_scores", "num_detections"}
        assert entry["max_abs_diff_vs_float32"]["num_detections"] == 0.0
    # Weight-only int8 dequantizes weights at load: its outputs match float32 closely.
    assert by_variant["weight_only_wi8_afp32"]["max_abs_diff_vs_float32"]["detection_scores"] < 0.05
    assert "DEQUANTIZE" in by_variant["weight_only_wi8_afp32"]["op_counts"]


def test_calibrated_variants_refuse_the_evaluation_images(oracle_data, oracle_models):
    from flows.benchmark import validate

    config = BenchmarkConfig(model=str(oracle_models["fixed"]), annotations=str(oracle_data), images=str(oracle_data.parent),
                             variants=["int8_full"])
    with pytest.raises(QuantbenchError, match="need --calibration-images"):
        validate(config)
    from tasks.model.calibration import load_calibration
    from tasks.model.preprocess import odapi_preparation
    from tasks.data.dataset import load_dataset

    dataset = load_dataset(str(oracle_data), str(oracle_data.parent))
    with pytest.raises(QuantbenchError, match="calibration images overlap the evaluation images"):
        load_calibration(str(oracle_data.parent), 4, odapi_preparation((96, 160)), dataset)


def test_a_float_tflite_source_is_quantized_without_conversion(prefect_backend, oracle_data, oracle_models, tmp_path):
    from tasks.model.conversion import convert

    source = tmp_path / "float.tflite"
    source.write_bytes(convert(oracle_models["dynamic"], "float32"))
    config = BenchmarkConfig(model=str(source), annotations=str(oracle_data), images=str(oracle_data.parent),
                             variants=["float32", "weight_only_wi8_afp32", "dynamic_wi8_afp32"], latency_images=3,
                             store=str(tmp_path / "store"))
    report = json.loads(open(urlparse(benchmark(config)).path).read())
    assert report["model"]["kind"] == "tflite" and report["model"]["input"]["shape"] == [1, -1, -1, 3]
    by_variant = {v["variant"]: v for v in report["variants"]}
    assert by_variant["float32"]["model_bytes"] == source.stat().st_size
    assert [v["bbox"]["AP"] for v in by_variant.values()] == [1.0, 1.0, 1.0]
    with pytest.raises(QuantbenchError, match="is a .tflite: variant\\(s\\) saved_model, int8 need the SavedModel"):
        from flows.benchmark import validate

        validate(config.model_copy(update={"variants": ["saved_model", "int8"]}))


def test_the_legacy_dynamic_recipe_quantizes_only_large_weights_like_the_converter():
    from demo import DEMO_MODEL_DIR
    from tasks.model.conversion import convert, quantize
    from tasks.model.tflite_inspect import weights_by_dtype
    from tasks.model.variants import verify_variant

    float32 = convert(DEMO_MODEL_DIR, "float32")
    legacy, dynamic = quantize(float32, "dynamic_legacy_wi8_afp32"), quantize(float32, "dynamic_wi8_afp32")
    weights, float32_weights = weights_by_dtype(legacy), weights_by_dtype(float32)["float32"]
    verify_variant("dynamic_legacy_wi8_afp32", weights, len(legacy), len(float32))
    assert weights["int8"] >= 0.24 * float32_weights and len(legacy) <= 0.35 * len(float32)
    # Weights under 1024 elements stay float: more float32 bytes than dynamic_wi8_afp32 keeps, as
    # the converter's dynamic range int8 keeps.
    assert weights["float32"] > weights_by_dtype(dynamic)["float32"] and len(legacy) > len(dynamic)
    assert weights == weights_by_dtype(convert(DEMO_MODEL_DIR, "int8"))
