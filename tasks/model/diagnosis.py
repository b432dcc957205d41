"""Which op of a quantized variant loses accuracy: the numeric part of the diagnosis (issue 19).

:func:`numeric_errors` runs the float32 model and a variant side by side in LiteRT with every
intermediate tensor kept (``experimental_preserve_all_tensors``, builtin kernels without the
XNNPACK delegate, so that every op's output exists), on a few model-ready inputs (the calibration
or comparison images), matches each float32 op's first float output with the variant's tensor of
the same name (the quantizer and the converter keep names; integer tensors are dequantized with
their own scales and zero points) and gives one :class:`OpError` per op, in network order.

Errors accumulate along the network: an op after a fragile one has a low SQNR too. So each row
also has ``own_sqnr_db``, the SQNR of the noise the op *adds* to what its inputs already carry
(relative noise powers, linear: ``r_out - max r_in``), which is what ranks the ops
(:func:`rank_ops`): the op that injects the most noise first.

:func:`float_ops_variant` builds the variant again with some ops kept float (an ai-edge-quantizer
rule ``no_quantize`` on each op's scope, its output tensor names), stored in the store under the
float32 model's digest and the recipe's digest with its SHA-256 recorded (``tasks.store.recorded``),
so a rerun reuses it. Linking ops to the detection metric (AP recovered) is the score stage's
(:mod:`tasks.score.diagnosis`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.model.conversion import QUANTIZER_RECIPES, quantize_with, quantizer_recipe
from tasks.model.tflite_inspect import GraphOp, GraphTensor, main_graph
from tasks.model.variants import ModelArtifact, describe, float32_model, verify_variant
from tasks.store.errors import STORE_RETRIES, QuantbenchError
from tasks.store.recorded import UnverifiedObject, read_recorded, write_recorded

logger = logging.getLogger(__name__)

FLOAT_DTYPES = ("float32", "float16")
# Dtypes of a weight that the quantizer changed (an op reading one is quantized in the variant).
QUANTIZED_WEIGHT_DTYPES = ("int8", "int4", "int16", "uint8", "float16")


@dataclass(frozen=True)
class OpError:
    """The numeric error of one op's output in a variant against float32, over the compared inputs.

    ``index`` is the op's position in the float32 model's main subgraph (network order), ``op_type``
    its builtin name, ``tensor`` and ``shape`` its first float output's. ``sqnr_db``: signal
    (float32 output) power over error power, in dB (inf: identical); ``nrmse``: RMS error over the
    float32 output's range (max − min); ``own_sqnr_db``: SQNR of the noise this op adds beyond the
    noisiest of its inputs (inf: adds none); ``quantized``: the variant's op reads a quantized
    weight (int or float16 constant, or one dequantized by a DEQUANTIZE op)."""

    index: int
    op_type: str
    tensor: str
    shape: tuple[int, ...]
    sqnr_db: float
    nrmse: float
    own_sqnr_db: float
    quantized: bool


class _Errors:
    """Running sums of one tensor's float32 values and of its error, over the compared inputs."""

    def __init__(self):
        self.signal = self.noise = 0.0
        self.count = 0
        self.low, self.high = math.inf, -math.inf

    def add(self, reference: np.ndarray, value: np.ndarray) -> None:
        reference, value = reference.astype(np.float64), value.astype(np.float64)
        self.signal += float(np.sum(reference ** 2))
        self.noise += float(np.sum((value - reference) ** 2))
        self.count += reference.size
        if reference.size:
            self.low, self.high = min(self.low, float(reference.min())), max(self.high, float(reference.max()))

    def relative_noise(self) -> float:
        """Error power over signal power (0: exact; inf: error on a zero signal)."""
        if self.noise == 0:
            return 0.0
        return self.noise / self.signal if self.signal else math.inf

    def nrmse(self) -> float:
        if self.noise == 0:
            return 0.0
        spread = self.high - self.low
        return math.sqrt(self.noise / self.count) / spread if spread > 0 else math.inf


def _db(relative_noise: float) -> float:
    """SQNR in dB of a relative noise power (inf for 0)."""
    return -10 * math.log10(relative_noise) if relative_noise > 0 else math.inf


class _PreservingInterpreter:
    """A LiteRT interpreter on builtin kernels that keeps every tensor, for reading op outputs."""

    def __init__(self, model: bytes):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.interpreter.allocate_tensors()
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1:
            raise QuantbenchError(f"the diagnosis feeds one image tensor; this model takes {len(inputs)} inputs")
        self._input = inputs[0]
        self._shape = tuple(int(d) for d in self._input["shape"])
        self._details = {d["index"]: d for d in self.interpreter.get_tensor_details()}

    def run(self, batch: np.ndarray) -> None:
        if batch.shape != self._shape:
            self.interpreter.resize_tensor_input(self._input["index"], list(batch.shape), strict=False)
            self.interpreter.allocate_tensors()
            self._shape = batch.shape
            self._details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        self.interpreter.set_tensor(self._input["index"], batch.astype(self._input["dtype"], copy=False))
        self.interpreter.invoke()

    def value(self, index: int) -> np.ndarray:
        """Tensor ``index`` as float: integer tensors dequantized per tensor or per channel."""
        value = self.interpreter.get_tensor(index)
        if np.issubdtype(value.dtype, np.floating):
            return value
        quantization = self._details[index].get("quantization_parameters", {})
        scales, zero_points = quantization.get("scales", np.zeros(0)), quantization.get("zero_points", np.zeros(0))
        if scales.size == 0:
            return value.astype(np.float32)
        shape = [1] * value.ndim
        if scales.size > 1:
            shape[quantization.get("quantized_dimension", 0)] = scales.size
        return (value.astype(np.float32) - zero_points.reshape(shape)) * scales.reshape(shape).astype(np.float32)


def _quantized_ops(ops: list[GraphOp], tensors: list[GraphTensor]) -> set[str]:
    """Names of the output tensors of the ops that read a quantized weight (directly, or through a
    DEQUANTIZE of a constant)."""
    dequantized = {op.outputs[0] for op in ops if op.op_type == "DEQUANTIZE" and op.outputs and tensors[op.inputs[0]].constant}
    found = set()
    for op in ops:
        if op.op_type == "DEQUANTIZE":
            continue
        if any(i in dequantized or (tensors[i].constant and tensors[i].dtype in QUANTIZED_WEIGHT_DTYPES) for i in op.inputs):
            found.update(tensors[o].name for o in op.outputs)
    return found


def numeric_errors(float32_model: bytes, variant_model: bytes, batches: Sequence[np.ndarray]) -> list[OpError]:
    """Per-op error of ``variant_model`` against ``float32_model`` on ``batches`` (model-ready
    inputs, e.g. :class:`~tasks.model.variants.Calibration` batches), in network order.

    An op whose first float output has no tensor of the same name and shape in the variant (renamed,
    or folded away) has no row. Raises QuantbenchError when no batch is given."""
    if not batches:
        raise QuantbenchError("the numeric diagnosis needs at least one input image (calibration or comparison images)")
    ops, tensors = main_graph(float32_model)
    variant_ops, variant_tensors = main_graph(variant_model)
    in_variant = {t.name: i for i, t in enumerate(variant_tensors) if not t.constant}
    compared = {i: in_variant[t.name] for i, t in enumerate(tensors)
                if t.dtype in FLOAT_DTYPES and not t.constant and t.name in in_variant}
    reference, variant = _PreservingInterpreter(float32_model), _PreservingInterpreter(variant_model)
    errors = {i: _Errors() for i in compared}
    for batch in batches:
        reference.run(batch)
        variant.run(batch)
        for index, other in compared.items():
            expected, got = reference.value(index), variant.value(other)
            if expected.shape == got.shape:
                errors[index].add(expected, got)
    quantized = _quantized_ops(variant_ops, variant_tensors)
    rows = []
    for op in ops:
        output = next((o for o in op.outputs if o in errors and errors[o].count), None)
        if output is None:
            continue
        relative = errors[output].relative_noise()
        inherited = max((errors[i].relative_noise() for i in op.inputs if i in errors and errors[i].count), default=0.0)
        rows.append(OpError(op.index, op.op_type, tensors[output].name, tuple(reference.value(output).shape), _db(relative),
                            errors[output].nrmse(), _db(relative - inherited) if relative > inherited else math.inf,
                            tensors[output].name in quantized))
    return rows


def rank_ops(errors: Sequence[OpError], count: int | None = None) -> list[OpError]:
    """The quantized ops, the one adding the most noise first (lowest ``own_sqnr_db``; ties by
    lower ``sqnr_db``, then network order); the first ``count`` of them (None: all)."""
    ranked = sorted((e for e in errors if e.quantized), key=lambda e: (e.own_sqnr_db, e.sqnr_db, e.index))
    return ranked if count is None else ranked[:count]


def op_scope(float32_model: bytes, index: int) -> str:
    """The ai-edge-quantizer scope of op ``index`` of the main subgraph: its output tensor names,
    each followed by ``;`` (what a recipe rule's ``regex`` is matched against)."""
    ops, tensors = main_graph(float32_model)
    if not 0 <= index < len(ops):
        raise QuantbenchError(f"op {index} is not in the model (its main subgraph has ops 0 to {len(ops) - 1})")
    names = [tensors[o].name for o in ops[index].outputs if tensors[o].name]
    return "".join(f"{name};" for name in names)


def float_ops_recipe(rules: list[dict], scopes: Sequence[str]) -> list[dict]:
    """``rules`` (an ai-edge-quantizer recipe) with one ``no_quantize`` rule per op scope added
    after them (a later matching rule wins), matching exactly that scope: those ops stay float."""
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(rules)
    for scope in scopes:
        manager.add_quantization_config(f"^{re.escape(scope)}$", qtyping.TFLOperationName.ALL_SUPPORTED, None, AlgorithmName.NO_QUANTIZE)
    return manager.get_quantization_recipe()


def recipe_digest(rules: list[dict]) -> str:
    """SHA-256 (hex) of a recipe and of the ai-edge-quantizer version that applies it."""
    from importlib import metadata

    text = json.dumps({"rules": rules, "ai-edge-quantizer": metadata.version("ai-edge-quantizer")}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def float_ops_name(variant: str, ops: Sequence[int]) -> str:
    """The name of ``variant`` with ``ops`` kept float: ``dynamic_wi8_afp32+float_op40`` (one op),
    ``dynamic_wi8_afp32+float_ops12.40`` (several, in index order)."""
    ordered = sorted(set(ops))
    return f"{variant}+float_op{ordered[0]}" if len(ordered) == 1 else f"{variant}+float_ops{'.'.join(map(str, ordered))}"


def float_ops_variant(store, float32_model: bytes, variant: str, ops: Sequence[int]) -> tuple[ModelArtifact, bytes]:
    """The quantizer ``variant`` of ``float32_model`` with the ops at indices ``ops`` kept float:
    its artifact (named by :func:`float_ops_name`, in ``store``) and its bytes.

    Stored under ``models/diagnosis/<float32 sha256[:20]>/<variant>-float-<recipe digest[:20]>.tflite``
    with its digest recorded; a stored one that still matches its record is reused (one that does
    not is built again, with a WARNING)."""
    if variant not in QUANTIZER_RECIPES:
        raise QuantbenchError(f"the op diagnosis builds ai-edge-quantizer variants ({', '.join(QUANTIZER_RECIPES)}), not {variant}")
    rules = float_ops_recipe(quantizer_recipe(variant), [op_scope(float32_model, index) for index in sorted(set(ops))])
    key = f"models/diagnosis/{hashlib.sha256(float32_model).hexdigest()[:20]}/{variant}-float-{recipe_digest(rules)[:20]}.tflite"
    try:
        model = read_recorded(store, key)
    except UnverifiedObject as error:
        logger.warning("%s: building it again", error)
        model = None
    name = float_ops_name(variant, ops)
    if model is None:
        model = quantize_with(float32_model, rules, name)
        write_recorded(store, key, model)
    return describe(name, model, store.url_for(key)), model


@task(name="numeric-errors", task_run_name="numeric-errors-{variant.variant}", cache_policy=NO_CACHE, **STORE_RETRIES)
def numeric_errors_task(float32: ModelArtifact, variant: ModelArtifact, batches: Sequence[np.ndarray]) -> list[OpError]:
    """:func:`numeric_errors` of two converted variants, read from the store (digests checked)."""
    return numeric_errors(float32_model(float32), float32_model(variant), batches)


def recovered_name(variant: str, ops: Sequence[int]) -> str:
    """The recovered recipe's variant name: ``dynamic_wi8_afp32+float_2`` (two ops kept float)."""
    return f"{variant}+float_{len(set(ops))}"


@task(name="recovered-variant", task_run_name="build-{variant}-float-{ops}", cache_policy=NO_CACHE, **STORE_RETRIES)
def recovered_variant_task(store_url: str, float32: ModelArtifact, variant: str, ops: list[int]) -> ModelArtifact:
    """The variant with ``ops`` kept float, named by :func:`recovered_name`, built (or reused) and
    checked like every variant: it must hold the variant's quantized weights and be smaller than float32."""
    from tasks.store.object_store import open_store

    artifact, _ = float_ops_variant(open_store(store_url), float32_model(float32), variant, ops)
    artifact = replace(artifact, variant=recovered_name(variant, ops))
    verify_variant(artifact.variant, artifact.weights_by_dtype, artifact.model_bytes, float32.model_bytes)
    return artifact
