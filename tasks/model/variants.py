"""Variants of a model: check and digest a SavedModel, produce each LiteRT variant (recipes in
``tasks.model.conversion``), and verify each is what it claims by counting its weight bytes per dtype.

Variants (names used everywhere, in this order in reports); the default is the study's four:

- ``saved_model``: the SavedModel itself, run by TensorFlow (the baseline row);
- ``given``: a ``.tflite`` that is already quantized (float16 or integer weights, integer I/O),
  benchmarked as it is: nothing else can be derived from it;
- ``float32``, ``float16``, ``int8`` (dynamic range), ``int8_full`` (calibrated), ``int16x8``:
  LiteRT converter recipes;
- ``weight_only_wi8_afp32``, ``dynamic_wi8_afp32``, ``dynamic_legacy_wi8_afp32``,
  ``weight_only_wf16_afp32``: LiteRT quantizer recipes applied to the float32 ``.tflite``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.model.conversion import CALIBRATED_RECIPES, CONVERTER_RECIPES, QUANTIZER_RECIPES, convert, quantize
from tasks.store.errors import STORE_RETRIES, QuantbenchError, import_tensorflow
from tasks.model.tensors import ModelIO, TensorInfo
from tasks.model.tflite_inspect import flex_ops, op_counts, quantized_share, weights_by_dtype

VARIANTS = ("saved_model", "given", *CONVERTER_RECIPES, *QUANTIZER_RECIPES)
DEFAULT_VARIANTS = ("saved_model", "float32", "float16", "int8")
SIGNATURE_KEY = "serving_default"
# The dtype whose weight bytes a converted variant must hold (and, quantized, shrink the file by).
CLAIMED_WEIGHT_DTYPE = {
    "float32": "float32", "float16": "float16", "int8": "int8", "int8_full": "int8", "int16x8": "int8",
    "weight_only_wi8_afp32": "int8", "dynamic_wi8_afp32": "int8", "dynamic_legacy_wi8_afp32": "int8",
    "weight_only_wf16_afp32": "float16",
}


@dataclass(frozen=True)
class ModelArtifact:
    """One variant, ready to run: where its model lives, its size, and what is inside it."""

    variant: str
    url: str  # a .tflite object URL in the store, or the SavedModel directory for ``saved_model``
    model_bytes: int
    weights_by_dtype: dict[str, int]
    quantized_weight_share: float = 0.0  # of float-derived weight bytes, the share in a quantized dtype
    op_counts: dict[str, int] = field(default_factory=dict)
    flex_ops: tuple[str, ...] = ()  # Select TF ops: running them needs TensorFlow
    sha256: str = ""  # hex digest of the .tflite's bytes, as checked or written (empty for ``saved_model``)


@dataclass(frozen=True)
class Calibration:
    """Model-ready calibration batches (the model's input tensors, prepared as its spec says) and
    where they came from."""

    source: str
    digest: str
    batches: tuple[np.ndarray, ...]


def check_saved_model(model_dir: Path) -> ModelIO:
    """Validate ``model_dir`` as a SavedModel with a ``serving_default`` signature that takes one
    image tensor (``[1, H, W, 3]`` or ``[1, 3, H, W]``); return its input and outputs as
    :class:`ModelIO` (-1 for unknown dimensions). Reads ``saved_model.pb`` only (no graph is
    loaded); which head reads the outputs is decided from them (:mod:`tasks.model.heads`).
    """
    import_tensorflow(f"reading the SavedModel {model_dir}")
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import dtypes

    model_dir = Path(model_dir)
    graph_file = model_dir / "saved_model.pb"
    if not model_dir.is_dir():
        raise QuantbenchError(f"model directory not found: {model_dir} (pass --model DIR, a TensorFlow SavedModel)")
    if not graph_file.is_file():
        raise QuantbenchError(f"{model_dir} is not a TensorFlow SavedModel: no saved_model.pb in it")
    from google.protobuf.message import DecodeError

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(graph_file.read_bytes())
    except (DecodeError, RuntimeWarning) as error:
        raise QuantbenchError(f"{graph_file} is not a valid SavedModel: it does not parse ({error}); re-export or re-download the model") from None
    signatures = {key: sig for meta in saved.meta_graphs for key, sig in meta.signature_def.items()}
    if SIGNATURE_KEY not in signatures:
        found = ", ".join(sorted(k for k in signatures if not k.startswith("__"))) or "none"
        raise QuantbenchError(
            f"{model_dir} has no '{SIGNATURE_KEY}' serving signature (signatures found: {found}); "
            "export it with one, as the TF Object Detection API's exporter does"
        )
    signature = signatures[SIGNATURE_KEY]
    if len(signature.inputs) != 1:
        raise QuantbenchError(f"{model_dir}: serving signature must take one image tensor, it takes {len(signature.inputs)}")

    def info(name, tensor) -> TensorInfo:
        return TensorInfo(name, tuple(-1 if d.size < 0 else d.size for d in tensor.tensor_shape.dim), dtypes.as_dtype(tensor.dtype).name)

    (name, tensor), = signature.inputs.items()
    image = info(name, tensor)
    if len(image.shape) != 4 or 3 not in (image.shape[1], image.shape[3]):
        raise QuantbenchError(
            f"{model_dir}: serving input '{name}' is {image.dtype} {list(image.shape)}; quantbench needs one image tensor "
            "[1, H, W, 3] (or [1, 3, H, W])"
        )
    return ModelIO(image, tuple(info(n, o) for n, o in sorted(signature.outputs.items())))


def directory_digest(model_dir: Path) -> str:
    """SHA-256 over every file of ``model_dir`` (relative path and content), hex."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def directory_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file())


def saved_model_weights_by_dtype(model_dir: Path) -> dict[str, int]:
    """Bytes of the SavedModel's variables per dtype, read from its checkpoint index."""
    tf = import_tensorflow(f"reading the SavedModel {model_dir}")
    prefix = Path(model_dir) / "variables" / "variables"
    if not prefix.with_suffix(".index").exists():
        return {}
    reader = tf.train.load_checkpoint(str(prefix))
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    totals: dict[str, int] = {}
    for name, shape in shapes.items():
        dtype = dtypes[name]
        if name.startswith("_") or dtype == tf.string:
            continue
        totals[dtype.name] = totals.get(dtype.name, 0) + int(np.prod(shape, dtype=np.int64)) * dtype.size
    return dict(sorted(totals.items()))


def verify_variant(variant: str, weights_by_dtype: dict[str, int], model_bytes: int, float32_bytes: int | None) -> None:
    """Fail unless the variant holds weights of its claimed dtype and (if quantized) is smaller than float32.

    This is what makes "float16 is 2x smaller" a checked claim rather than an assumption.
    """
    if variant == "given":
        return  # benchmarked as it is: it claims nothing
    claimed = CLAIMED_WEIGHT_DTYPE[variant.split("+")[0]]  # a recovered recipe (variant+float_k) claims its base's
    if weights_by_dtype.get(claimed, 0) == 0:
        raise QuantbenchError(
            f"variant {variant} has no {claimed} weights (weights by dtype: {weights_by_dtype or 'none'}); "
            "the conversion did not produce what it claims, so it is not reported"
        )
    if variant != "float32" and float32_bytes is not None and model_bytes >= float32_bytes:
        raise QuantbenchError(
            f"variant {variant} is {model_bytes} bytes, not smaller than float32 ({float32_bytes} bytes): "
            "the quantization did not take effect"
        )


def _tool_version(variant: str, source_path: str) -> str:
    """What produced the file: the quantizer's or TensorFlow's version, or the source itself."""
    from importlib import metadata

    if variant in QUANTIZER_RECIPES:
        return f"aeq{metadata.version('ai-edge-quantizer')}"
    if source_path.endswith(".tflite"):
        return "source"  # float32 (or given) of a .tflite source is the file as given
    return f"tf{metadata.version('tensorflow-cpu')}"


def describe(variant: str, model: bytes, url: str) -> ModelArtifact:
    weights = weights_by_dtype(model)
    return ModelArtifact(variant, url, len(model), weights, quantized_share(weights), op_counts(model), tuple(flex_ops(model)),
                         hashlib.sha256(model).hexdigest())


def stored_variant(store, key: str) -> bytes | None:
    """The converted model stored under ``key``, if it is there and matches its recorded digest.

    One that does not match, or has no record, is not reused: a WARNING names it and None is
    returned, so the variant is converted again (and object and record rewritten).
    """
    from tasks.store.recorded import UnverifiedObject, read_recorded

    try:
        return read_recorded(store, key)
    except UnverifiedObject as error:
        get_run_logger().warning("%s: converting it again", error)
        return None


def float32_model(float32: ModelArtifact) -> bytes:
    """The float32 variant's bytes, as checked by its own task (quantizer recipes start from it)."""
    from tasks.store.object_store import split_url

    store, key = split_url(float32.url)
    model = store.read_bytes(key)
    if hashlib.sha256(model).hexdigest() != float32.sha256:
        raise QuantbenchError(f"stored {float32.url} changed since it was checked in this run (expected sha256 {float32.sha256}, "
                              f"got {hashlib.sha256(model).hexdigest()}): rerun to convert it again")
    return model


def _produce(source_path: str, variant: str, float32: ModelArtifact | None, calibration: Calibration | None) -> bytes:
    """The variant's ``.tflite`` bytes, made now: quantized from float32, the given file, or converted."""
    if variant in QUANTIZER_RECIPES:  # from the float32 file, whether converted or given
        return quantize(float32_model(float32), variant)
    if source_path.endswith(".tflite"):
        if variant not in ("float32", "given"):
            raise QuantbenchError(f"variant {variant} needs the SavedModel; {source_path} is a .tflite (use a quantizer variant)")
        return Path(source_path).read_bytes()
    return convert(Path(source_path), variant, list(calibration.batches) if calibration else None)


@task(name="convert", task_run_name="convert-{variant}", cache_policy=NO_CACHE, **STORE_RETRIES)
def convert_variant(source_path: str, source_digest: str, variant: str, store_url: str,
                    float32: ModelArtifact | None = None, calibration: Calibration | None = None) -> ModelArtifact:
    """Produce (or reuse the stored result of) one LiteRT variant and verify its dtype claim.

    ``source_path`` is a SavedModel directory, or a ``.tflite``: a float one is ``float32`` (and
    quantizer recipes apply to it), an already quantized one is ``given``. Stored under ``models/<digest>/<variant>-<tool
    version>[-calib<digest>].tflite`` with its SHA-256 recorded beside it (``tasks.store.recorded``), so reruns
    reuse it while it still has that digest, and different models never collide.
    """
    from tasks.store.object_store import open_store
    from tasks.store.recorded import write_recorded

    store = open_store(store_url)
    suffix = f"-calib{calibration.digest[:12]}" if variant in CALIBRATED_RECIPES and calibration else ""
    key = f"models/{source_digest[:20]}/{variant}-{_tool_version(variant, source_path)}{suffix}.tflite"
    model = stored_variant(store, key)
    stored = model is not None
    if not stored:
        model = _produce(source_path, variant, float32, calibration)
    artifact = describe(variant, model, store.url_for(key))
    verify_variant(variant, artifact.weights_by_dtype, artifact.model_bytes, float32.model_bytes if float32 else None)
    if not stored:
        write_recorded(store, key, model)
    return artifact


@task(name="saved-model-baseline", cache_policy=NO_CACHE)
def saved_model_artifact(model_dir: str) -> ModelArtifact:
    """The SavedModel itself as the ``saved_model`` row: its directory size and variable bytes."""
    return ModelArtifact(
        variant="saved_model",
        url=str(Path(model_dir).resolve()),
        model_bytes=directory_bytes(Path(model_dir)),
        weights_by_dtype=saved_model_weights_by_dtype(Path(model_dir)),
    )
