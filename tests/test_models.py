"""Conversion and the dtype accounting that checks every variant's claim."""
import subprocess
import sys

import pytest

from demo import DEMO_MODEL_DIR
from tasks.model.conversion import convert
from tasks.data.dataset import load_dataset, make_shards
from tasks.store.errors import QuantbenchError
from tasks.run.inference import ShardJob
from tasks.model.variants import saved_model_weights_by_dtype, verify_variant
from tasks.model.tflite_inspect import weights_by_dtype as tflite_weights_by_dtype


STUDY_VARIANTS = ("float32", "float16", "int8")


@pytest.fixture(scope="module")
def demo_variants() -> dict[str, bytes]:
    return {variant: convert(DEMO_MODEL_DIR, variant) for variant in STUDY_VARIANTS}


def test_demo_model_dtype_accounting(demo_variants):
    sizes = {v: len(model) for v, model in demo_variants.items()}
    weights = {v: tflite_weights_by_dtype(model) for v, model in demo_variants.items()}
    float32_params = sum(b // 4 for dtype, b in saved_model_weights_by_dtype(DEMO_MODEL_DIR).items() if dtype == "float32")
    assert float32_params >= 1_000_000
    # The float32 file holds its weights (not a weight-less graph): >= 4 bytes per parameter.
    assert weights["float32"]["float32"] >= 4 * float32_params * 0.98
    assert weights["float16"].get("float16", 0) >= 2 * float32_params * 0.98
    assert weights["int8"].get("int8", 0) >= float32_params * 0.98
    assert sizes["float16"] <= 0.55 * sizes["float32"]
    assert sizes["int8"] <= 0.35 * sizes["float32"]
    for variant in STUDY_VARIANTS:
        verify_variant(variant, weights[variant], sizes[variant], sizes["float32"])


def test_a_variant_that_is_not_what_it_claims_is_refused(oracle_models):
    float32 = convert(oracle_models["fixed"], "float32")
    weights = tflite_weights_by_dtype(float32)
    with pytest.raises(QuantbenchError, match="variant float16 has no float16 weights"):
        verify_variant("float16", weights, len(float32), len(float32))
    with pytest.raises(QuantbenchError, match="variant int8 has no int8 weights"):
        verify_variant("int8", weights, len(float32), len(float32))
    with pytest.raises(QuantbenchError, match="variant float32 has no float32 weights"):
        verify_variant("float32", {"int32": 100}, 1000, None)
    int8 = convert(oracle_models["fixed"], "int8")
    with pytest.raises(QuantbenchError, match="not smaller than float32"):
        verify_variant("int8", tflite_weights_by_dtype(int8), len(int8), len(int8))


def test_litert_inference_does_not_import_tensorflow(oracle_data, oracle_models, tmp_path):
    model = tmp_path / "int8.tflite"
    model.write_bytes(convert(oracle_models["dynamic"], "int8"))
    dataset = load_dataset(str(oracle_data), str(oracle_data.parent))
    job = ShardJob("int8", str(model), "oracle", dataset.annotations_digest, dataset.images_url, make_shards(dataset, 8)[0], (tmp_path / "store").as_uri())
    script = (
        "import sys, pickle; from tasks.run.inference import infer_shard; "
        f"out = infer_shard(pickle.loads({__import__('pickle').dumps(job)!r})); "
        "print(out.images_done, 'tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["8", "False"]
