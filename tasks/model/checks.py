"""Up-front checks of a resolved model, before any work: it parses, and the variants asked of it
can be made from it. Each failure is one :class:`QuantbenchError` line naming the model and what
to do."""
from __future__ import annotations

import struct

from tasks.model.runtimes import LiteRTRuntime
from tasks.model.sources import ResolvedModel
from tasks.model.variants import CALIBRATED_RECIPES, QUANTIZER_RECIPES, check_saved_model
from tasks.store.errors import QuantbenchError


def model_input(model: ResolvedModel) -> dict:
    """The model's image input: ``{"name", "dtype", "shape"}`` (-1 for dynamic dimensions).

    Parses the model (``saved_model.pb``, or the ``.tflite`` in an interpreter), so a corrupt
    file fails here with one line."""
    if model.kind == "saved_model":
        return check_saved_model(model.path)
    try:
        runtime = LiteRTRuntime(model.path)
    except (ValueError, RuntimeError, struct.error) as error:  # struct.error: the flatbuffer reader
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QuantbenchError(f"{model.path} is not a valid .tflite model ({reason}); pass a LiteRT flatbuffer") from None
    height, width = runtime.fixed_size or (-1, -1)
    return {"name": runtime.input_name, "dtype": "uint8", "shape": [1, height, width, 3]}


def check_variants(model: ResolvedModel, variants: list[str], calibration_images: str | None) -> None:
    """Refuse variants that cannot be made from ``model`` (a ``.tflite`` has no SavedModel to
    convert) or that need calibration images when none are given."""
    if model.kind == "tflite":
        needs_saved_model = [v for v in variants if v not in ("float32", *QUANTIZER_RECIPES)]
        if needs_saved_model:
            raise QuantbenchError(f"{model.source} is a .tflite: variant(s) {', '.join(needs_saved_model)} need the SavedModel; use float32 and quantizer variants")
    calibrated = [v for v in variants if v in CALIBRATED_RECIPES]
    if calibrated and not calibration_images:
        raise QuantbenchError(f"variant(s) {', '.join(calibrated)} need --calibration-images DIR (images disjoint from the evaluation set)")
