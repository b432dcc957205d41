"""What a model takes and gives, described without running it: its tensors (name, shape, dtype,
quantization) plus what the file says of itself (operators, Ultralytics metadata). Heads are chosen
and checked against this (:mod:`tasks.model.heads`); inputs are prepared from it
(:mod:`tasks.model.preprocess`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor. ``shape`` uses -1 for dynamic dimensions; ``scale`` 0 means not
    quantized (real = (q - zero_point) * scale otherwise). ``name`` is the key the runtime uses
    (the signature's output name, else the tensor's name); ``tensor`` the tensor's own name."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: float32, uint8, int8, ...
    scale: float = 0.0
    zero_point: int = 0
    tensor: str = ""

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.issubdtype(np.dtype(self.dtype), np.integer)

    def shown(self) -> str:
        quantization = f" q({self.scale:.6g}, {self.zero_point})" if self.quantized else ""
        return f"{self.name} {self.dtype}{quantization} [{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class ModelIO:
    """A model's image input and outputs, the operators it runs (None: unknown, e.g. a SavedModel),
    the tensor names of its ``TFLite_Detection_PostProcess`` outputs in the op's own order (boxes,
    classes, scores, count) where it has one, and its Ultralytics export metadata where present."""

    input: TensorInfo
    outputs: tuple[TensorInfo, ...]
    ops: frozenset[str] | None = None
    postprocess_outputs: tuple[str, ...] | None = None
    metadata: dict | None = field(default=None, compare=False)

    @property
    def layout(self) -> str:
        """``nchw`` when the input is ``[1, 3, H, W]`` (and not ``[1, H, W, 3]``), else ``nhwc``."""
        shape = self.input.shape
        return "nchw" if len(shape) == 4 and shape[1] == 3 and shape[3] != 3 else "nhwc"

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of a fixed-size input, None for a dynamic one."""
        shape = self.input.shape
        if len(shape) != 4:
            return None
        height, width = (shape[2], shape[3]) if self.layout == "nchw" else (shape[1], shape[2])
        return (height, width) if height > 0 and width > 0 else None

    def shown(self) -> str:
        return "; ".join(output.shown() for output in self.outputs)
