"""Runtimes that run one detection model on one image at a time: LiteRT for ``.tflite`` variants,
TensorFlow for the SavedModel baseline.

Both expose the same three steps so latency can time ``invoke()`` alone:
``set_input(batch)`` (the model's input, prepared by :mod:`tasks.model.preprocess`), ``invoke()``,
``outputs()`` (dict by output name), and describe their tensors as ``io``
(:class:`~tasks.model.tensors.ModelIO`). A ``.tflite`` model is run through its
``serving_default`` signature's name → tensor mapping where it has one, never by position
(``get_output_details()`` order is not the signature's). LiteRT inference does not import
TensorFlow unless the model contains Select TF ("Flex") ops.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tasks.store.errors import QuantbenchError, import_tensorflow
from tasks.model.tensors import ModelIO, TensorInfo
from tasks.model.variants import SIGNATURE_KEY
from tasks.store.object_store import LocalStore, cache_dir, file_sha256, split_url

_TF_LOAD_LOCK = threading.Lock()


def local_model_path(url: str, sha256: str = "") -> Path:
    """A local path for a model URL: a SavedModel directory, or a ``.tflite`` object in a store.

    ``sha256`` (hex; the digest the variant's conversion task checked or wrote): the file must have
    it. A cached copy of a remote object that does not is dropped and fetched again; a file that
    still differs (the stored object changed during the run) raises QuantbenchError.
    """
    if "://" not in url and Path(url).is_dir():
        return Path(url)
    store, key = split_url(url)
    path = store.local_path(key, cache_dir())
    if not sha256 or file_sha256(path) == sha256:
        return path
    if not isinstance(store, LocalStore):
        path.unlink(missing_ok=True)  # a stale or swapped cached copy: never used again
        path = store.local_path(key, cache_dir())
    actual = file_sha256(path)
    if actual != sha256:
        if not isinstance(store, LocalStore):
            path.unlink(missing_ok=True)  # nor is a copy of the changed object kept
        raise QuantbenchError(f"model {url} changed since its conversion task checked it (expected sha256 {sha256}, "
                              f"got {actual}): rerun to convert it again")
    return path


class LiteRTRuntime:
    """A ``.tflite`` model in an ``ai_edge_litert`` interpreter with ``threads`` CPU threads.

    Its image input and outputs are those of the ``serving_default`` signature (by name), or, in a
    model without signatures (many exports), of its main subgraph (by tensor name). ``io``
    describes them; :meth:`outputs` dequantizes integer outputs with each tensor's own scale and
    zero point."""

    def __init__(self, model_path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from tasks.model.tflite_inspect import export_metadata, flex_ops, op_counts, postprocess_outputs

        model = Path(model_path).read_bytes()
        needs_tensorflow = flex_ops(model)
        if needs_tensorflow:
            # Importing TensorFlow registers its Flex delegate, which an interpreter picks up when
            # it is built. Models without Flex ops never import TensorFlow (4 s and ~0.5 GB less).
            import_tensorflow(f"running {model_path} (Select TF ops: {', '.join(needs_tensorflow)})")
        self.uses_tensorflow = bool(needs_tensorflow)  # Flex kernels run on TensorFlow's process-wide threads
        self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self.delegate = "XNNPACK"
        try:
            self.interpreter.allocate_tensors()
        except RuntimeError as error:
            if "XNNPACK" not in str(error):
                raise
            # XNNPACK refuses some quantized graphs; LiteRT's builtin kernels still run them (slower).
            self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads,
                                           experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            self.interpreter.allocate_tensors()
            self.delegate = "none (XNNPACK could not prepare this model)"
        tensors = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        signatures = self.interpreter.get_signature_list()
        if signatures and SIGNATURE_KEY not in signatures:
            raise QuantbenchError(f"{model_path} has no '{SIGNATURE_KEY}' signature (found: {', '.join(signatures)})")
        if signatures:
            runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
            inputs = list(runner.get_input_details().items())
            outputs = [(name, d["index"]) for name, d in runner.get_output_details().items()]
            del runner  # it holds views of the interpreter's buffers, which block later re-allocation
        else:
            inputs = [(d["name"], d) for d in self.interpreter.get_input_details()]
            outputs = [(d["name"], d["index"]) for d in self.interpreter.get_output_details()]
        if len(inputs) != 1:
            raise QuantbenchError(f"{model_path} takes {len(inputs)} inputs; quantbench feeds one image tensor")
        (input_name, input_detail), = inputs
        self._input_index = input_detail["index"]
        if self._input_index not in {d["index"] for d in self.interpreter.get_input_details()}:
            raise QuantbenchError(f"{model_path}: '{SIGNATURE_KEY}' is not the model's main subgraph")
        self.input_name = input_name
        self._outputs = {name: (index, *_quantization(tensors[index])) for name, index in outputs}
        self.io = ModelIO(
            input=_tensor_info(input_name, tensors[self._input_index], input_detail.get("shape_signature")),
            outputs=tuple(_tensor_info(name, tensors[index]) for name, index in outputs),
            ops=frozenset(op_counts(model)),
            postprocess_outputs=postprocess_outputs(model),
            metadata=export_metadata(model),
        )
        self.fixed_size = self.io.input_size
        self._shape = tuple(int(d) for d in input_detail["shape"])

    def set_input(self, batch: np.ndarray) -> None:
        if batch.shape != self._shape:
            self.interpreter.resize_tensor_input(self._input_index, list(batch.shape), strict=False)
            self.interpreter.allocate_tensors()
            self._shape = batch.shape
        self.interpreter.set_tensor(self._input_index, batch)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def outputs(self) -> dict[str, np.ndarray]:
        """Each output by name; integer outputs with quantization parameters dequantized to float32."""
        values = {}
        for name, (index, scale, zero_point) in self._outputs.items():
            value = self.interpreter.get_tensor(index)
            values[name] = (value.astype(np.float32) - np.float32(zero_point)) * np.float32(scale) if scale else value
        return values


def _quantization(detail: dict) -> tuple[float, int]:
    """(scale, zero point) of an integer tensor quantized per tensor; (0.0, 0) otherwise."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero_point)) if scale and np.issubdtype(detail["dtype"], np.integer) else (0.0, 0)


def _tensor_info(name: str, detail: dict, shape_signature=None) -> TensorInfo:
    shape = shape_signature if shape_signature is not None and len(shape_signature) else detail.get("shape_signature", detail["shape"])
    scale, zero_point = _quantization(detail)
    return TensorInfo(name, tuple(int(d) for d in shape), np.dtype(detail["dtype"]).name, scale, zero_point, detail["name"])


class SavedModelRuntime:
    """The SavedModel's ``serving_default`` signature called eagerly by TensorFlow."""

    def __init__(self, model_dir: Path, threads: int = 1):
        tf = import_tensorflow(f"running the SavedModel {model_dir}")
        self._tf = tf
        with _TF_LOAD_LOCK:
            loaded = tf.saved_model.load(str(model_dir))
        self._loaded = loaded  # keep the variables alive
        self._function = loaded.signatures[SIGNATURE_KEY]
        (self.input_name, spec), = self._function.structured_input_signature[1].items()
        outputs = self._function.structured_outputs
        self.io = ModelIO(
            input=TensorInfo(self.input_name, tuple(-1 if d is None else d for d in spec.shape.as_list()), spec.dtype.name),
            outputs=tuple(TensorInfo(name, tuple(-1 if d is None else d for d in value.shape.as_list()), value.dtype.name)
                          for name, value in sorted(outputs.items())),
        )
        self.fixed_size = self.io.input_size
        self._input = None
        self._outputs: dict[str, np.ndarray] = {}
        self.delegate = "tensorflow"
        self.uses_tensorflow = True

    def set_input(self, batch: np.ndarray) -> None:
        self._input = self._tf.constant(batch)

    def invoke(self) -> None:
        self._outputs = self._function(**{self.input_name: self._input})

    def outputs(self) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self._outputs.items()}


def open_runtime(variant: str, model_path: Path, threads: int):
    """The runtime for a variant: TensorFlow for ``saved_model``, LiteRT for the rest."""
    if variant == "saved_model":
        return SavedModelRuntime(model_path, threads)
    return LiteRTRuntime(model_path, threads)
