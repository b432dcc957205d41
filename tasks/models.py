"""Model sources and conversion: check a SavedModel, digest it, convert it into LiteRT variants,
and verify each variant is what it claims by counting its weight bytes per dtype.

Variants (names used everywhere, in this order in reports):

- ``saved_model``: the SavedModel itself, run by TensorFlow (the baseline row);
- ``float32``: LiteRT converter, no optimisation;
- ``float16``: LiteRT converter, ``Optimize.DEFAULT`` + ``supported_types=[float16]`` (weights fp16);
- ``int8``: LiteRT converter, ``Optimize.DEFAULT`` (dynamic range: weights int8, activations float).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.errors import QuantbenchError

VARIANTS = ("saved_model", "float32", "float16", "int8")
LITERT_VARIANTS = VARIANTS[1:]
SIGNATURE_KEY = "serving_default"
REQUIRED_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes")
# The dtype whose weight bytes a converted variant must hold, and that its file must shrink by.
CLAIMED_WEIGHT_DTYPE = {"float32": "float32", "float16": "float16", "int8": "int8"}


@dataclass(frozen=True)
class ModelArtifact:
    """One variant, ready to run: where its model lives, its size, and its weight bytes per dtype."""

    variant: str
    url: str  # a .tflite object URL in the store, or the SavedModel directory for ``saved_model``
    model_bytes: int
    weights_by_dtype: dict[str, int]


def check_saved_model(model_dir: Path) -> dict:
    """Validate ``model_dir`` as a SavedModel with a TF OD API-style serving signature.

    Reads ``saved_model.pb`` only (no graph is loaded). Returns the signature's input description:
    ``{"name", "dtype", "shape"}`` where shape uses -1 for unknown dimensions.
    """
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import dtypes

    model_dir = Path(model_dir)
    graph_file = model_dir / "saved_model.pb"
    if not model_dir.is_dir():
        raise QuantbenchError(f"model directory not found: {model_dir} (pass --model DIR, a TensorFlow SavedModel)")
    if not graph_file.is_file():
        raise QuantbenchError(f"{model_dir} is not a TensorFlow SavedModel: no saved_model.pb in it")
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(graph_file.read_bytes())
    signatures = {key: sig for meta in saved.meta_graphs for key, sig in meta.signature_def.items()}
    if SIGNATURE_KEY not in signatures:
        found = ", ".join(sorted(k for k in signatures if not k.startswith("__"))) or "none"
        raise QuantbenchError(
            f"{model_dir} has no '{SIGNATURE_KEY}' serving signature (signatures found: {found}); "
            "export it with one, as the TF Object Detection API's exporter does"
        )
    signature = signatures[SIGNATURE_KEY]
    missing = [name for name in REQUIRED_OUTPUTS if name not in signature.outputs]
    if missing:
        raise QuantbenchError(
            f"{model_dir}: serving signature lacks output(s) {', '.join(missing)}; "
            f"quantbench needs TF OD API outputs {', '.join(REQUIRED_OUTPUTS)}"
        )
    if len(signature.inputs) != 1:
        raise QuantbenchError(f"{model_dir}: serving signature must take one image tensor, it takes {len(signature.inputs)}")
    (name, info), = signature.inputs.items()
    shape = [-1 if d.size < 0 else d.size for d in info.tensor_shape.dim]
    dtype = dtypes.as_dtype(info.dtype).name
    if dtype != "uint8" or len(shape) != 4 or shape[3] != 3:
        raise QuantbenchError(
            f"{model_dir}: serving input '{name}' is {dtype} {shape}; quantbench needs uint8 [1, H, W, 3] images"
        )
    return {"name": name, "dtype": dtype, "shape": shape}


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


def convert(model_dir: Path, variant: str) -> bytes:
    """Convert the SavedModel's serving signature to a LiteRT flatbuffer for ``variant``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(model_dir), signature_keys=[SIGNATURE_KEY])
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant != "float32":
        raise QuantbenchError(f"unknown LiteRT variant {variant!r}: choose from {', '.join(LITERT_VARIANTS)}")
    try:
        return converter.convert()
    except Exception as error:  # the converter raises ConverterError and assorted others
        detail = next((line.strip() for line in str(error).splitlines() if "error" in line.lower()), type(error).__name__)
        raise QuantbenchError(f"LiteRT conversion of {model_dir} to {variant} failed: {detail[:300]}") from None


def tflite_weights_by_dtype(model: bytes) -> dict[str, int]:
    """Bytes of constant tensors (weights, biases, lookup tables) per dtype in a ``.tflite`` file.

    Each buffer is counted once even if several tensors share it. Dtype names are numpy-style
    (``float32``, ``float16``, ``int8``, ``int32``...).
    """
    from ai_edge_litert import schema_py_generated as schema

    type_names = {value: name.lower() for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    root = schema.Model.GetRootAsModel(model, 0)
    counted: set[int] = set()
    totals: dict[str, int] = {}
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            index = tensor.Buffer()
            if index == 0 or index in counted:
                continue
            buffer = root.Buffers(index)
            size = buffer.Size() if buffer.Offset() > 1 else buffer.DataLength()
            if size == 0:
                continue
            counted.add(index)
            name = type_names.get(tensor.Type(), f"type{tensor.Type()}")
            totals[name] = totals.get(name, 0) + size
    return dict(sorted(totals.items()))


def saved_model_weights_by_dtype(model_dir: Path) -> dict[str, int]:
    """Bytes of the SavedModel's variables per dtype, read from its checkpoint index."""
    import numpy as np
    import tensorflow as tf

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
    claimed = CLAIMED_WEIGHT_DTYPE[variant]
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


@task(name="convert", cache_policy=NO_CACHE)
def convert_variant(model_dir: str, model_digest: str, variant: str, store_url: str, float32_bytes: int | None) -> ModelArtifact:
    """Convert (or reuse the stored conversion of) one variant and verify its dtype claim.

    Converted files are keyed by model digest, TensorFlow version and variant, so a rerun
    reuses them and different models never collide.
    """
    import tensorflow as tf

    from tasks.store import open_store

    store = open_store(store_url)
    key = f"models/{model_digest[:20]}/{variant}-tf{tf.__version__}.tflite"
    model = store.read_bytes(key) if store.exists(key) else None
    if model is None:
        model = convert(Path(model_dir), variant)
    weights = tflite_weights_by_dtype(model)
    verify_variant(variant, weights, len(model), float32_bytes)
    url = store.url_for(key) if store.exists(key) else store.write_bytes(key, model)
    return ModelArtifact(variant=variant, url=url, model_bytes=len(model), weights_by_dtype=weights)


@task(name="saved-model-baseline", cache_policy=NO_CACHE)
def saved_model_artifact(model_dir: str) -> ModelArtifact:
    """The SavedModel itself as the ``saved_model`` row: its directory size and variable bytes."""
    return ModelArtifact(
        variant="saved_model",
        url=str(Path(model_dir).resolve()),
        model_bytes=directory_bytes(Path(model_dir)),
        weights_by_dtype=saved_model_weights_by_dtype(Path(model_dir)),
    )
