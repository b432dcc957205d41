"""Runtimes that run one detection model on one image at a time: LiteRT for ``.tflite`` variants,
TensorFlow for the SavedModel baseline.

Both expose the same three steps so latency can time ``invoke()`` alone:
``set_input(batch)`` (uint8 ``[1, H, W, 3]``), ``invoke()``, ``outputs()`` (dict by output name).
A ``.tflite`` model is run through its ``serving_default`` signature's name → tensor mapping,
never by position (``get_output_details()`` order is not the signature's). LiteRT inference
does not import TensorFlow unless the model contains Select TF ("Flex") ops.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tasks.store.errors import QuantbenchError, import_tensorflow
from tasks.model.variants import SIGNATURE_KEY
from tasks.store.object_store import cache_dir, split_url

_TF_LOAD_LOCK = threading.Lock()


def local_model_path(url: str) -> Path:
    """A local path for a model URL: a SavedModel directory, or a ``.tflite`` object in a store."""
    if "://" not in url and Path(url).is_dir():
        return Path(url)
    store, key = split_url(url)
    return store.local_path(key, cache_dir())


class LiteRTRuntime:
    """A ``.tflite`` model in an ``ai_edge_litert`` interpreter with ``threads`` CPU threads."""

    def __init__(self, model_path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from tasks.model.tflite_inspect import flex_ops

        needs_tensorflow = flex_ops(Path(model_path).read_bytes())
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
        signatures = self.interpreter.get_signature_list()
        if SIGNATURE_KEY not in signatures:
            raise QuantbenchError(f"{model_path} has no '{SIGNATURE_KEY}' signature (found: {', '.join(signatures) or 'none'})")
        runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
        (self.input_name, input_detail), = runner.get_input_details().items()
        self._output_indices = {name: d["index"] for name, d in runner.get_output_details().items()}
        del runner  # it holds views of the interpreter's buffers, which block later re-allocation
        self._input_index = input_detail["index"]
        if self._input_index not in {d["index"] for d in self.interpreter.get_input_details()}:
            raise QuantbenchError(f"{model_path}: '{SIGNATURE_KEY}' is not the model's main subgraph")
        signature_shape = [int(d) for d in input_detail["shape_signature"]]
        self.fixed_size = tuple(signature_shape[1:3]) if min(signature_shape[1:3]) > 0 else None
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
        return {name: self.interpreter.get_tensor(index) for name, index in self._output_indices.items()}


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
        dims = spec.shape.as_list()
        self.fixed_size = (dims[1], dims[2]) if dims[1] and dims[2] else None
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


def prepare_input(pixels: np.ndarray, fixed_size: tuple[int, int] | None) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` → model input ``[1, h, w, 3]`` (resized when the model's size is fixed)."""
    from tasks.data.dataset import resize_rgb

    if fixed_size is not None:
        pixels = resize_rgb(pixels, *fixed_size)
    return np.ascontiguousarray(pixels[None, ...], dtype=np.uint8)
