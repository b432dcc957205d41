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
(:func:`rank_ops`): the op that injects the most noise first. Once an integer tensor computed
from data differs (a detector's top-k indices: other boxes selected), the ops after it are not
blamed for the error: no SQNR splits a changed selection from an op's own noise.

:func:`float_ops_variant` builds a quantizer variant again with some ops kept float (an
ai-edge-quantizer rule ``no_quantize`` on each op's scope, its output tensor names);
:func:`float_ops_converter_variant` does the same for the converter's ``int8_full`` (those output
tensor names denylisted in TensorFlow's quantization debugger; the converter's other recipes cannot
keep an op float); :func:`float_ops_build` picks the one a variant needs. Each build is stored in
the store under the source model's digest and a digest of what made it, with its SHA-256 recorded
(``tasks.store.recorded``), so a rerun reuses it. Linking ops to the detection metric (AP
recovered) is the score stage's (:mod:`tasks.score.diagnosis`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.model.conversion import (DENYLIST_RECIPES, DIAGNOSABLE_VARIANTS, QUANTIZER_RECIPES, convert_keeping_float, quantize_with,
                                    quantizer_recipe)
from tasks.model.tflite_inspect import GraphOp, GraphTensor, main_graph
from tasks.model.variants import ModelArtifact, describe, float32_model, verify_variant
from tasks.store.errors import STORE_RETRIES, QuantbenchError
from tasks.store.recorded import UnverifiedObject, read_recorded, write_recorded

logger = logging.getLogger(__name__)

FLOAT_DTYPES = ("float32", "float16")
# Dtypes of a weight that the quantizer changed (an op reading one is quantized in the variant).
QUANTIZED_WEIGHT_DTYPES = ("int8", "int4", "int16", "uint8", "float16")
# Dtypes of a quantized activation (an op writing one computes in integers: int8_full, int16x8).
QUANTIZED_ACTIVATION_DTYPES = ("int8", "int16")
# Dtypes of data-dependent integer tensors that no variant quantizes (indices, counts, masks).
DISCRETE_DTYPES = ("int32", "int64", "bool")
# The variants whose ops can be kept float one by one.


@dataclass(frozen=True)
class OpError:
    """The numeric error of one op's output in a variant against float32, over the compared inputs.

    ``index`` is the op's position in the float32 model's main subgraph (network order), ``op_type``
    its builtin name, ``tensor`` and ``shape`` its first float output's. ``sqnr_db``: signal
    (float32 output) power over error power, in dB (inf: identical); ``nrmse``: RMS error over the
    float32 output's range (max − min); ``own_sqnr_db``: SQNR of the noise this op adds beyond the
    noisiest of its inputs (inf: adds none, or comes after an integer tensor that changed, e.g.
    indices of other boxes, whose effect an SQNR cannot split from its own); ``quantized``: the
    variant's op reads a quantized weight (int or float16 constant, or one dequantized by a
    DEQUANTIZE op) or writes an integer (int8, int16) activation."""

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
    """Names of the output tensors of the quantized ops: those that read a quantized weight
    (directly, or through a DEQUANTIZE of a constant) or write a quantized activation, and the
    DEQUANTIZE after one (which gives a quantized op's output its float name at a model output)."""
    dequantized = {op.outputs[0] for op in ops if op.op_type == "DEQUANTIZE" and op.outputs and tensors[op.inputs[0]].constant}
    found = set()
    for op in ops:
        if op.op_type == "QUANTIZE":
            continue
        if op.op_type == "DEQUANTIZE":
            if tensors[op.inputs[0]].name in found:
                found.update(tensors[o].name for o in op.outputs)
            continue
        if any(i in dequantized or (tensors[i].constant and tensors[i].dtype in QUANTIZED_WEIGHT_DTYPES) for i in op.inputs) \
                or any(tensors[o].dtype in QUANTIZED_ACTIVATION_DTYPES for o in op.outputs):
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
    # Integer tensors computed from data (e.g. TOPK_V2's indices): an op reading one that changed
    # (other boxes selected), or reading what such an op wrote, carries an error no SQNR of its
    # float inputs measures.
    written = {o for op in ops for o in op.outputs}  # not scratch tensors an op keeps (they may hold no data)
    discrete = {i: in_variant[t.name] for i, t in enumerate(tensors)
                if i in written and t.dtype in DISCRETE_DTYPES and not t.constant and t.name in in_variant}
    reference, variant = _PreservingInterpreter(float32_model), _PreservingInterpreter(variant_model)
    errors = {i: _Errors() for i in compared}
    changed = set()
    for batch in batches:
        reference.run(batch)
        variant.run(batch)
        for index, other in compared.items():
            expected, got = reference.value(index), variant.value(other)
            if expected.shape == got.shape:
                errors[index].add(expected, got)
        changed.update(i for i, other in discrete.items() if not np.array_equal(reference.value(i), variant.value(other)))
    quantized = _quantized_ops(variant_ops, variant_tensors)
    rows = []
    for op in ops:
        after_change = bool(changed & set(op.inputs))
        if after_change:
            changed.update(op.outputs)
        output = next((o for o in op.outputs if o in errors and errors[o].count), None)
        if output is None:
            continue
        relative = errors[output].relative_noise()
        inherited = math.inf if after_change else \
            max((errors[i].relative_noise() for i in op.inputs if i in errors and errors[i].count), default=0.0)
        rows.append(OpError(op.index, op.op_type, tensors[output].name, tuple(reference.value(output).shape), _db(relative),
                            errors[output].nrmse(), _db(relative - inherited) if relative > inherited else math.inf,
                            tensors[output].name in quantized))
    return rows


def rank_ops(errors: Sequence[OpError], count: int | None = None) -> list[OpError]:
    """The quantized ops, the one adding the most noise first (lowest ``own_sqnr_db``; ties by
    lower ``sqnr_db``, then network order); the first ``count`` of them (None: all)."""
    ranked = sorted((e for e in errors if e.quantized), key=lambda e: (e.own_sqnr_db, e.sqnr_db, e.index))
    return ranked if count is None else ranked[:count]


def op_outputs(float32_model: bytes, index: int) -> list[str]:
    """The output tensor names of op ``index`` of the main subgraph (what names it in a recipe
    rule's scope or in the converter's denylist)."""
    ops, tensors = main_graph(float32_model)
    if not 0 <= index < len(ops):
        raise QuantbenchError(f"op {index} is not in the model (its main subgraph has ops 0 to {len(ops) - 1})")
    return [tensors[o].name for o in ops[index].outputs if tensors[o].name]


def op_scope(float32_model: bytes, index: int) -> str:
    """The ai-edge-quantizer scope of op ``index`` of the main subgraph: its output tensor names,
    each followed by ``;`` (what a recipe rule's ``regex`` is matched against)."""
    return "".join(f"{name};" for name in op_outputs(float32_model, index))


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


def _stored_or_built(store, key: str, name: str, build: Callable[[], bytes]) -> tuple[ModelArtifact, bytes]:
    """The model under ``key`` if it still matches its recorded digest, else ``build()`` written
    there with its digest (a WARNING names a stored one that did not match); named ``name``."""
    try:
        model = read_recorded(store, key)
    except UnverifiedObject as error:
        logger.warning("%s: building it again", error)
        model = None
    if model is None:
        model = build()
        write_recorded(store, key, model)
    return describe(name, model, store.url_for(key)), model


def _undiagnosable(variant: str) -> QuantbenchError:
    return QuantbenchError(f"variant {variant} cannot be rebuilt from the SavedModel with ops kept float (the converter's "
                           f"quantization debugger denylists ops in {', '.join(DENYLIST_RECIPES)} only); "
                           f"variants that can be diagnosed op by op: {', '.join(DIAGNOSABLE_VARIANTS)}")


def float_ops_variant(store, float32_model: bytes, variant: str, ops: Sequence[int],
                      name: str | None = None) -> tuple[ModelArtifact, bytes]:
    """The quantizer ``variant`` of ``float32_model`` with the ops at indices ``ops`` kept float:
    its artifact (named ``name``, by default :func:`float_ops_name`, in ``store``) and its bytes.

    Stored under ``models/diagnosis/<float32 sha256[:20]>/<variant>-float-<recipe digest[:20]>.tflite``
    with its digest recorded; a stored one that still matches its record is reused (one that does
    not is built again, with a WARNING)."""
    if variant not in QUANTIZER_RECIPES:
        raise QuantbenchError(f"the op diagnosis builds ai-edge-quantizer variants ({', '.join(QUANTIZER_RECIPES)}), not {variant}")
    rules = float_ops_recipe(quantizer_recipe(variant), [op_scope(float32_model, index) for index in sorted(set(ops))])
    key = f"models/diagnosis/{hashlib.sha256(float32_model).hexdigest()[:20]}/{variant}-float-{recipe_digest(rules)[:20]}.tflite"
    name = name or float_ops_name(variant, ops)
    return _stored_or_built(store, key, name, lambda: quantize_with(float32_model, rules, name))


def batches_digest(batches: Sequence[np.ndarray]) -> str:
    """SHA-256 (hex) of model-ready batches: each one's dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(f"{batch.dtype.str}{batch.shape}".encode() + np.ascontiguousarray(batch).tobytes())
    return digest.hexdigest()


def _tensorflow_version() -> str:
    from importlib import metadata

    for distribution in ("tensorflow-cpu", "tensorflow"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "none"  # converting fails then, with import_tensorflow's one line


def _check_kept_float(model: bytes, nodes: Sequence[str], variant: str) -> None:
    """Fail unless each of ``nodes`` is written by a float op of ``model`` (not by a quantized op,
    nor by the DEQUANTIZE after one): the converter ignores a denylisted name it does not find."""
    ops, tensors = main_graph(model)
    writers = {tensors[o].name: op for op in ops for o in op.outputs}
    for node in nodes:
        op = writers.get(node)
        if op is None or op.op_type == "DEQUANTIZE" or any(tensors[o].dtype not in FLOAT_DTYPES for o in op.outputs):
            raise QuantbenchError(f"the converter did not keep the op writing {node!r} float in {variant} "
                                  f"({'no such tensor' if op is None else op.op_type}): it cannot be diagnosed op by op")


def float_ops_converter_variant(store, model_dir: Path, source_digest: str, float32_model: bytes, variant: str, ops: Sequence[int],
                                calibration: Sequence[np.ndarray], name: str | None = None) -> tuple[ModelArtifact, bytes]:
    """The converter ``variant`` (``int8_full``) of the SavedModel ``model_dir``, calibrated on
    ``calibration`` (model-ready batches, as for :func:`~tasks.model.conversion.convert`), with the
    ops at indices ``ops`` of ``float32_model`` (the converter's float32 of the same SavedModel)
    kept float: its artifact (named ``name``, by default :func:`float_ops_name`, in ``store``) and
    its bytes.

    Stored under ``models/diagnosis/<source_digest[:20]>/<variant>-float-<digest[:20]>.tflite``
    (the digest of the variant, the ops' output tensor names, the calibration and the TensorFlow
    version) with its digest recorded; a stored one that still matches its record is reused. Raises
    QuantbenchError (one line) for a variant the converter cannot rebuild with ops kept float."""
    if variant not in DENYLIST_RECIPES:
        raise _undiagnosable(variant)
    nodes = sorted({node for index in set(ops) for node in op_outputs(float32_model, index)})
    made_from = {"variant": variant, "nodes": nodes, "calibration": batches_digest(calibration), "tensorflow": _tensorflow_version()}
    digest = hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()
    key = f"models/diagnosis/{source_digest[:20]}/{variant}-float-{digest[:20]}.tflite"

    def build() -> bytes:
        model = convert_keeping_float(model_dir, variant, nodes, list(calibration))
        _check_kept_float(model, nodes, variant)
        return model

    return _stored_or_built(store, key, name or float_ops_name(variant, ops), build)


@dataclass(frozen=True)
class ConverterSource:
    """What a converter variant is rebuilt from: the SavedModel directory, its digest (hex) and
    the calibration batches the variant was calibrated on."""

    model_dir: Path
    digest: str
    calibration: tuple[np.ndarray, ...]


def float_ops_build(store, float32_model: bytes, variant: str, ops: Sequence[int], source: ConverterSource | None = None,
                    name: str | None = None) -> tuple[ModelArtifact, bytes]:
    """``variant`` with the ops at indices ``ops`` of ``float32_model`` kept float, whichever tool
    makes it: :func:`float_ops_variant` for a quantizer variant, :func:`float_ops_converter_variant`
    (from ``source``) for a converter one. Raises QuantbenchError (one line) for a variant that
    cannot be built so, or a converter variant without its source."""
    if variant in QUANTIZER_RECIPES:
        return float_ops_variant(store, float32_model, variant, ops, name)
    if variant not in DENYLIST_RECIPES:
        raise _undiagnosable(variant)
    if source is None:
        raise QuantbenchError(f"variant {variant} is rebuilt from the SavedModel with its calibration images; this model has none")
    return float_ops_converter_variant(store, source.model_dir, source.digest, float32_model, variant, ops, source.calibration, name)


@task(name="numeric-errors", task_run_name="numeric-errors-{variant.variant}", cache_policy=NO_CACHE, **STORE_RETRIES)
def numeric_errors_task(float32: ModelArtifact, variant: ModelArtifact, batches: Sequence[np.ndarray]) -> list[OpError]:
    """:func:`numeric_errors` of two converted variants, read from the store (digests checked)."""
    return numeric_errors(float32_model(float32), float32_model(variant), batches)


def recovered_name(variant: str, ops: Sequence[int]) -> str:
    """The recovered recipe's variant name: ``dynamic_wi8_afp32+float_2`` (two ops kept float)."""
    return f"{variant}+float_{len(set(ops))}"


@task(name="recovered-variant", task_run_name="build-{variant}-float-{ops}", cache_policy=NO_CACHE, **STORE_RETRIES)
def recovered_variant_task(store_url: str, float32: ModelArtifact, variant: str, ops: list[int],
                           source: ConverterSource | None = None) -> ModelArtifact:
    """The variant with ``ops`` kept float (:func:`float_ops_build`; ``source`` for a converter
    variant), named by :func:`recovered_name`, built (or reused) and checked like every variant: it
    must hold the variant's quantized weights and be smaller than float32."""
    from tasks.store.object_store import open_store

    artifact, _ = float_ops_build(open_store(store_url), float32_model(float32), variant, ops, source, recovered_name(variant, ops))
    verify_variant(artifact.variant, artifact.weights_by_dtype, artifact.model_bytes, float32.model_bytes)
    return artifact
