"""Recipes that turn a model into a LiteRT variant: the LiteRT converter (from the SavedModel) and
the LiteRT quantizer ``ai-edge-quantizer`` (from the float32 ``.tflite``).

Converter recipes (``tf.lite.TFLiteConverter.from_saved_model`` on ``serving_default``):

- ``float32``: no optimisation.
- ``float16``: ``Optimize.DEFAULT`` + ``supported_types=[float16]`` — weights fp16, compute fp32.
- ``int8``: ``Optimize.DEFAULT`` — dynamic range: weights int8, activations quantized on the fly.
- ``int8_full``: ``Optimize.DEFAULT`` + a representative dataset — weights and activations int8
  where the op allows it (float kept elsewhere); input/output types unchanged.
- ``int16x8``: like ``int8_full`` with ``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``
  (int16 activations, int8 weights), builtin float kernels allowed for ops without a 16x8 kernel.

Every converter recipe first tries builtin ops only; a model that needs Select TF ops (e.g.
CombinedNonMaxSuppression, CropAndResize in two-stage detectors) is converted again with
``SELECT_TF_OPS`` and then needs TensorFlow at run time (see ``tflite_inspect.flex_ops``).

``int8_full`` can also be built with some ops kept float (:func:`convert_keeping_float`, for the op
diagnosis); the other converter recipes cannot (no node denylist in their quantizers).

Quantizer recipes (``ai_edge_quantizer.Quantizer`` on the float32 ``.tflite``):

- ``weight_only_wi8_afp32``: int8 weights dequantized to float at load; float compute.
- ``dynamic_wi8_afp32``: int8 weights, dynamic-range (hybrid) kernels.
- ``dynamic_legacy_wi8_afp32``: like ``dynamic_wi8_afp32``, but only weights of at least 1024
  elements are quantized (small ops kept float, as the converter's dynamic range ``int8`` does).
- ``weight_only_wf16_afp32``: float16 weights (``FLOAT_CASTING``), float compute.
"""
from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from tasks.store.errors import QuantbenchError, import_tensorflow

CONVERTER_RECIPES = ("float32", "float16", "int8", "int8_full", "int16x8")
QUANTIZER_RECIPES = ("weight_only_wi8_afp32", "dynamic_wi8_afp32", "dynamic_legacy_wi8_afp32", "weight_only_wf16_afp32")
CALIBRATED_RECIPES = ("int8_full", "int16x8")
# Converter recipes that can be rebuilt with some ops kept float (:func:`convert_keeping_float`).
DENYLIST_RECIPES = ("int8_full",)
# Calibration and the quantization debugger run tf.lite.Interpreter, which warns that it is deprecated
# for LiteRT's (quantbench runs models with ai_edge_litert; the converter's own use is not ours to change).
warnings.filterwarnings("ignore", message=r"\s*Warning: Please use the LiteRT interpreter", category=UserWarning)
# What the op diagnosis can rebuild with ops kept float (tasks.model.diagnosis.float_ops_build).
DIAGNOSABLE_VARIANTS = (*DENYLIST_RECIPES, *QUANTIZER_RECIPES)


def _needs_flex(error: Exception) -> bool:
    from tensorflow.compiler.mlir.lite.metrics import converter_error_data_pb2

    needs = converter_error_data_pb2.ConverterErrorData.ERROR_NEEDS_FLEX_OPS
    return any(getattr(e, "error_code", None) == needs for e in getattr(error, "errors", []))


def _converter(model_dir: Path, recipe: str, representative: Callable[[], Iterator[dict]] | None, select_tf_ops: bool):
    tf = import_tensorflow(f"converting {model_dir}")

    converter = tf.lite.TFLiteConverter.from_saved_model(str(model_dir), signature_keys=["serving_default"])
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if recipe != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if recipe in CALIBRATED_RECIPES:
        converter.representative_dataset = representative
    if recipe == "int16x8":
        ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    if select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    return converter


def convert(model_dir: Path, recipe: str, calibration: list[np.ndarray] | None = None, input_name: str = "input_tensor") -> bytes:
    """Convert the SavedModel's serving signature with a converter recipe.

    ``calibration`` (uint8 ``[1, H, W, 3]`` batches sized for the model's input) is required by
    the calibrated recipes and must come from images disjoint from the evaluation images.
    """
    if recipe not in CONVERTER_RECIPES:
        raise QuantbenchError(f"unknown converter recipe {recipe!r}: choose from {', '.join(CONVERTER_RECIPES)}")
    return _convert_with(model_dir, recipe, _representative(recipe, calibration, input_name), lambda converter: converter.convert())


def convert_keeping_float(model_dir: Path, recipe: str, nodes: Sequence[str], calibration: list[np.ndarray],
                          input_name: str = "input_tensor") -> bytes:
    """:func:`convert` with recipe ``int8_full`` (the one of :data:`DENYLIST_RECIPES`), except that
    the ops whose output tensors are named in ``nodes`` stay float: TensorFlow's
    ``tf.lite.experimental.QuantizationDebugger`` calibrates as ``int8_full`` does and quantizes
    with those nodes denylisted (with none, its model is ``int8_full``'s but for metadata)."""
    if recipe not in DENYLIST_RECIPES:
        raise QuantbenchError(f"the converter keeps ops float only in {', '.join(DENYLIST_RECIPES)} (TensorFlow's quantization "
                              f"debugger denylists nodes of full-integer int8 quantization), not in {recipe}")
    tf = import_tensorflow(f"converting {model_dir}")
    representative = _representative(recipe, calibration, input_name)

    def quantize_keeping_float(converter) -> bytes:
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(nodes))
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=lambda: ([b] for b in calibration),
                                                             debug_options=options)
        return debugger.get_nondebug_quantized_model()

    return _convert_with(model_dir, recipe, representative, quantize_keeping_float)


def _representative(recipe: str, calibration: list[np.ndarray] | None, input_name: str) -> Callable[[], Iterator[dict]] | None:
    """The converter's representative dataset for a calibrated recipe (None for the others)."""
    if recipe not in CALIBRATED_RECIPES:
        return None
    if not calibration:
        raise QuantbenchError(f"variant {recipe} needs calibration images (--calibration-images DIR)")

    def representative():
        for batch in calibration:
            yield {input_name: batch}
    return representative


def _convert_with(model_dir: Path, recipe: str, representative: Callable[[], Iterator[dict]] | None, build: Callable) -> bytes:
    """``build(converter)`` on the recipe's converter with builtin ops only, then, if the model
    needs Select TF ops, with them allowed too."""
    try:
        return build(_converter(model_dir, recipe, representative, select_tf_ops=False))
    except Exception as builtins_error:  # ConverterError and assorted others
        if not _needs_flex(builtins_error):
            raise _conversion_error(model_dir, recipe, builtins_error) from None
    try:
        return build(_converter(model_dir, recipe, representative, select_tf_ops=True))
    except Exception as error:
        raise _conversion_error(model_dir, recipe, error) from None


def _conversion_error(model_dir: Path, recipe: str, error: Exception) -> QuantbenchError:
    detail = next((line.strip() for line in str(error).splitlines() if "error" in line.lower()), "") or f"{type(error).__name__}: {error}"
    return QuantbenchError(f"LiteRT conversion of {model_dir} to {recipe} failed: {detail[:300]}")


def _fp16_weight_only_recipe():
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    manager.add_weight_only_config(
        regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING
    )
    return manager.get_quantization_recipe()


def quantizer_recipe(recipe: str) -> list[dict]:
    """The ai-edge-quantizer recipe (its list of ``{regex, operation, algorithm_key, op_config}``
    rules; a later matching rule wins) of one of :data:`QUANTIZER_RECIPES`."""
    from ai_edge_quantizer import recipe as recipes

    builders = {
        "weight_only_wi8_afp32": recipes.weight_only_wi8_afp32,
        "dynamic_wi8_afp32": recipes.dynamic_wi8_afp32,
        "dynamic_legacy_wi8_afp32": recipes.dynamic_legacy_wi8_afp32,
        "weight_only_wf16_afp32": _fp16_weight_only_recipe,
    }
    if recipe not in builders:
        raise QuantbenchError(f"unknown quantizer recipe {recipe!r}: choose from {', '.join(builders)}")
    return builders[recipe]()


# redirect_stderr swaps the process-wide sys.stderr: one quantization at a time may swap it.
_QUANTIZER_STDERR = threading.Lock()


def quantize_with(float32_model: bytes, rules: list[dict], label: str) -> bytes:
    """Apply the ai-edge-quantizer recipe ``rules`` to a float32 ``.tflite``; ``label`` names it in errors."""
    from ai_edge_quantizer import quantizer

    engine = quantizer.Quantizer(bytearray(float32_model))
    engine.load_quantization_recipe(rules)
    try:
        # ai-edge-quantizer 0.10.0 draws a tqdm bar on sys.stderr for models of >= 100 tensors even with
        # enable_progress_bar=False (its Quantizer does not pass the flag on to the graph transformation).
        with _QUANTIZER_STDERR, contextlib.redirect_stderr(io.StringIO()):
            return bytes(engine.quantize(enable_progress_report=False, enable_progress_bar=False).quantized_model)
    except Exception as error:
        raise QuantbenchError(f"LiteRT quantizer recipe {label} failed: {type(error).__name__}: {str(error)[:300]}") from None


def quantize(float32_model: bytes, recipe: str) -> bytes:
    """Apply a LiteRT quantizer recipe (one of :data:`QUANTIZER_RECIPES`) to a float32 ``.tflite``."""
    return quantize_with(float32_model, quantizer_recipe(recipe), recipe)
