"""Up-front checks of a resolved model, before any work: it parses, its head reads its outputs, its
spec fits its input, and the variants asked of it can be made from it. Each failure is one
:class:`QuantbenchError` line naming the model and what to do."""
from __future__ import annotations

import struct
from pathlib import Path

from tasks.model.heads import choose_head
from tasks.model.preprocess import Preparation
from tasks.model.runtimes import LiteRTRuntime
from tasks.model.sources import ResolvedModel
from tasks.model.spec import ModelSpec, resolve_spec
from tasks.model.tensors import ModelIO
from tasks.model.tflite_inspect import quantized_share, weights_by_dtype
from tasks.model.variants import CALIBRATED_RECIPES, DEFAULT_VARIANTS, QUANTIZER_RECIPES, VARIANTS, check_saved_model
from tasks.store.errors import QuantbenchError

# What the default variants mean for a .tflite source: a float one gives float32 and the
# quantizer's float16 and int8 recipes; an already quantized one is benchmarked as it is.
FLOAT_TFLITE_VARIANTS = ("float32", "weight_only_wf16_afp32", "dynamic_wi8_afp32")
GIVEN_VARIANTS = ("given",)


def model_io(model: ResolvedModel) -> ModelIO:
    """The model's image input and outputs. Parses the model (``saved_model.pb``, or the
    ``.tflite`` in an interpreter), so a corrupt file fails here with one line."""
    if model.kind == "saved_model":
        return check_saved_model(model.path)
    try:
        return LiteRTRuntime(model.path).io
    except (ValueError, RuntimeError, struct.error) as error:  # struct.error: the flatbuffer reader
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QuantbenchError(f"{model.path} is not a valid .tflite model ({reason}); pass a LiteRT flatbuffer") from None


def model_input(io: ModelIO) -> dict:
    """The report's description of the image input: ``{"name", "dtype", "shape"}`` (-1: dynamic),
    plus ``quantization`` ``[scale, zero point]`` for a quantized integer input."""
    described = {"name": io.input.name, "dtype": io.input.dtype, "shape": list(io.input.shape)}
    if io.input.quantized:
        described["quantization"] = [io.input.scale, io.input.zero_point]
    return described


def model_spec(spec: ModelSpec, io: ModelIO, model: str) -> ModelSpec:
    """``spec`` resolved for this model: its head chosen (``auto``) or checked, every default filled
    in, and its input preparation checked against the model's input tensor."""
    resolved = resolve_spec(spec, choose_head(spec, io, model), io.layout)
    if resolved.input.layout != io.layout and io.input_size is not None:
        raise QuantbenchError(f"{model}: the spec's input layout is {resolved.input.layout}, but its input {io.input.shown()} is {io.layout}")
    Preparation.of(resolved, io.input, io.input_size)
    return resolved


def already_quantized(model: ResolvedModel, io: ModelIO) -> bool:
    """A ``.tflite`` whose weights (integer or float16) or input/outputs (with quantization
    parameters) are already quantized."""
    if model.kind != "tflite":
        return False
    quantized_io = any(t.quantized for t in (io.input, *io.outputs))  # a uint8 image input alone is not
    return quantized_io or quantized_share(weights_by_dtype(Path(model.path).read_bytes())) > 0


def variants_for(model: ResolvedModel, requested: list[str], quantized: bool, diagnosed: str | None = None) -> list[str]:
    """The variants to run, in report order: ``requested``; the default four, for a ``.tflite``,
    mean that file's own defaults (:data:`FLOAT_TFLITE_VARIANTS`, or ``given`` when it is already
    quantized); plus the ``diagnosed`` variant (and float32, its reference) when a diagnosis is asked."""
    if model.kind == "tflite" and tuple(requested) == DEFAULT_VARIANTS:
        requested = list(GIVEN_VARIANTS if quantized else FLOAT_TFLITE_VARIANTS)
    if diagnosed:
        requested = [*requested, "float32", diagnosed]
    return [v for v in VARIANTS if v in requested]


def check_variants(model: ResolvedModel, variants: list[str], calibration_images: str | None, quantized: bool = False) -> None:
    """Refuse variants that cannot be made from ``model`` (a ``.tflite`` has no SavedModel to
    convert; an already quantized one has no float weights to quantize) or that need calibration
    images when none are given."""
    if model.kind == "tflite" and quantized:
        others = [v for v in variants if v != "given"]
        if others:
            raise QuantbenchError(f"{model.source} is already quantized: variant(s) {', '.join(others)} cannot be derived from it; "
                                  "benchmark it as 'given' (the default for such a file), or pass its float32 .tflite or SavedModel")
    elif "given" in variants:
        raise QuantbenchError(f"variant 'given' is an already quantized .tflite taken as it is; {model.source} is a "
                              f"{'float .tflite: use float32 and quantizer variants' if model.kind == 'tflite' else 'SavedModel: use the converter variants'}")
    if model.kind == "tflite":
        needs_saved_model = [v for v in variants if v not in ("float32", "given", *QUANTIZER_RECIPES)]
        if needs_saved_model:
            raise QuantbenchError(f"{model.source} is a .tflite: variant(s) {', '.join(needs_saved_model)} need the SavedModel; use float32 and quantizer variants")
    calibrated = [v for v in variants if v in CALIBRATED_RECIPES]
    if calibrated and not calibration_images:
        raise QuantbenchError(f"variant(s) {', '.join(calibrated)} need --calibration-images DIR (images disjoint from the evaluation set)")
