"""Read a ``.tflite`` flatbuffer without running it: weight bytes per dtype, operators by type,
Select TF ("Flex") ops, the main subgraph's operators and tensors. Uses the schema shipped with
``ai_edge_litert``; no TensorFlow needed."""
from __future__ import annotations

from dataclasses import dataclass

from ai_edge_litert import schema_py_generated as schema

_TYPE_NAMES = {value: name.lower() for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
_OP_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
# Weight dtypes that are the result of quantization (or float16 casting) of float32 weights.
QUANTIZED_DTYPES = ("float16", "int8", "int4", "int16", "uint8", "bfloat16")


def _model(model: bytes):
    return schema.Model.GetRootAsModel(model, 0)


def weights_by_dtype(model: bytes) -> dict[str, int]:
    """Bytes of constant tensors (weights, biases, lookup tables) per dtype.

    Each buffer is counted once even if several tensors share it. Dtype names are numpy-style
    (``float32``, ``float16``, ``int8``, ``int32``...).
    """
    root = _model(model)
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
            name = _TYPE_NAMES.get(tensor.Type(), f"type{tensor.Type()}")
            totals[name] = totals.get(name, 0) + size
    return dict(sorted(totals.items()))


def quantized_share(weights: dict[str, int]) -> float:
    """Share of floating-point-derived weight bytes held in a quantized dtype (0 for float32)."""
    quantized = sum(weights.get(d, 0) for d in QUANTIZED_DTYPES)
    total = quantized + weights.get("float32", 0)
    return quantized / total if total else 0.0


def _operator_name(code) -> str:
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # the schema keeps both fields
    if builtin == schema.BuiltinOperator.CUSTOM:
        return code.CustomCode().decode() if code.CustomCode() else "CUSTOM"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def op_counts(model: bytes) -> dict[str, int]:
    """How many operators of each type the model runs (all subgraphs), by name."""
    root = _model(model)
    names = [_operator_name(root.OperatorCodes(i)) for i in range(root.OperatorCodesLength())]
    counts: dict[str, int] = {}
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            name = names[subgraph.Operators(o).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def flex_ops(model: bytes) -> list[str]:
    """Names of the Select TF ops (``Flex…`` custom ops) in the model; they need TensorFlow to run."""
    root = _model(model)
    return sorted({n for n in (_operator_name(root.OperatorCodes(i)) for i in range(root.OperatorCodesLength())) if n.startswith("Flex")})


def postprocess_outputs(model: bytes) -> tuple[str, ...] | None:
    """Tensor names of the first ``TFLite_Detection_PostProcess`` op's outputs in the op's own order
    (boxes, classes, scores, count), or None when the model has no such op."""
    root = _model(model)
    names = [_operator_name(root.OperatorCodes(i)) for i in range(root.OperatorCodesLength())]
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(o)
            if names[operator.OpcodeIndex()] == "TFLite_Detection_PostProcess":
                return tuple(subgraph.Tensors(operator.Outputs(k)).Name().decode() for k in range(operator.OutputsLength()))
    return None


METADATA_BYTES = 1 << 20  # an export's metadata is a few kB; anything larger is not read


def export_metadata(model: bytes) -> dict | None:
    """The metadata an Ultralytics export appends to the flatbuffer as a zip entry
    (``metadata.json``, or one Python-literal dict in older onnx2tf exports), or None.

    Read as data only (JSON, or ``ast.literal_eval``: literals, never code), at most
    :data:`METADATA_BYTES`; anything unreadable is None."""
    import ast
    import io
    import json
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            entries = [info for info in archive.infolist() if not info.is_dir()]
            if len(entries) != 1 or entries[0].file_size > METADATA_BYTES:
                return None
            text = archive.read(entries[0]).decode("utf-8")
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError, ValueError):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class GraphTensor:
    """One tensor of a subgraph: its name, numpy-style dtype name, and whether it is a constant
    (backed by a buffer with data: weights, biases, tables)."""

    name: str
    dtype: str
    constant: bool


@dataclass(frozen=True)
class GraphOp:
    """One operator of a subgraph, in execution order: its position, builtin (or custom) name, and
    the indices of its input and output tensors (optional inputs, -1 in the flatbuffer, left out)."""

    index: int
    op_type: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def main_graph(model: bytes) -> tuple[list[GraphOp], list[GraphTensor]]:
    """The operators (in execution order) and tensors of the model's first (main) subgraph; tensor
    indices are the interpreter's (``get_tensor(index)``)."""
    root = _model(model)
    names = [_operator_name(root.OperatorCodes(i)) for i in range(root.OperatorCodesLength())]
    subgraph = root.Subgraphs(0)
    tensors = []
    for t in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(t)
        buffer = root.Buffers(tensor.Buffer()) if tensor.Buffer() else None
        constant = buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1)
        tensors.append(GraphTensor(tensor.Name().decode(), _TYPE_NAMES.get(tensor.Type(), f"type{tensor.Type()}"), constant))
    ops = []
    for o in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(o)
        ops.append(GraphOp(o, names[operator.OpcodeIndex()],
                           tuple(i for i in operator.InputsAsNumpy().tolist() if i >= 0) if operator.InputsLength() else (),
                           tuple(i for i in operator.OutputsAsNumpy().tolist() if i >= 0) if operator.OutputsLength() else ()))
    return ops, tensors
