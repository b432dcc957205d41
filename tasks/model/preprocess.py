"""Model inputs from RGB images, as the model's family prepares them (:mod:`tasks.model.spec`), and
the :class:`Frame` that maps the model's boxes back onto the original image.

Coordinates: a point ``(x, y)`` of the original image (pixels, origin at its top-left corner) lies
at ``(x * scale_x + pad_left, y * scale_y + pad_top)`` in the model's input. ``stretch`` scales
each axis to the input size (pad 0); ``letterbox`` scales both by ``r = min(H / h, W / w)``, resizes
the image to ``round(w * r) x round(h * r)`` and pads it ``centre`` (Ultralytics' ``LetterBox``:
``round(d / 2 - 0.1)`` before, the rest after) or ``top-left`` (YOLOX's ``preproc``). Boxes are
mapped back with the same ``r`` (as Ultralytics' ``scale_boxes`` and YOLOX's ``/ ratio`` do).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.data.dataset import resize_bilinear, resize_rgb
from tasks.model.spec import ModelSpec
from tasks.model.tensors import TensorInfo
from tasks.store.errors import QuantbenchError


@dataclass(frozen=True)
class Frame:
    """Where the original image lies in the model input (see the module docstring)."""

    source_height: int
    source_width: int
    scale_y: float = 1.0
    scale_x: float = 1.0
    pad_top: int = 0
    pad_left: int = 0

    def to_source(self, xyxy: np.ndarray) -> np.ndarray:
        """``[N, 4]`` boxes ``[x1, y1, x2, y2]`` in input pixels → ``[N, 4]`` normalised
        ``[ymin, xmin, ymax, xmax]`` of the original image (the TF OD API convention), unclipped."""
        xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        x1 = (xyxy[:, 0] - self.pad_left) / self.scale_x / self.source_width
        y1 = (xyxy[:, 1] - self.pad_top) / self.scale_y / self.source_height
        x2 = (xyxy[:, 2] - self.pad_left) / self.scale_x / self.source_width
        y2 = (xyxy[:, 3] - self.pad_top) / self.scale_y / self.source_height
        return np.stack([y1, x1, y2, x2], axis=1)


@dataclass(frozen=True)
class Preparation:
    """Everything that decides a model input from an RGB image: hashable, so prepared inputs can be
    shared between tasks by it. ``size`` None: the input is dynamic and takes the image's own size."""

    size: tuple[int, int] | None
    layout: str
    channels: str
    resize: str
    interpolation: str
    align: str
    pad: float
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: str
    quant_scale: float = 0.0
    quant_zero_point: int = 0

    @classmethod
    def of(cls, spec: ModelSpec, tensor: TensorInfo, size: tuple[int, int] | None) -> "Preparation":
        """The preparation a resolved ``spec`` asks for ``tensor`` (of fixed ``size``, or None)."""
        given = spec.input
        preparation = cls(size, given.layout, given.channels, given.resize, given.interpolation, given.align, float(given.pad), float(given.scale),
                          tuple(map(float, given.mean)), tuple(map(float, given.std)), tensor.dtype,
                          tensor.scale if tensor.quantized else 0.0, tensor.zero_point if tensor.quantized else 0)
        if np.issubdtype(np.dtype(tensor.dtype), np.integer) and not tensor.quantized and not preparation.raw_pixels:
            raise QuantbenchError(
                f"input {tensor.shown()} takes integers without quantization parameters, so it can only take raw pixels; "
                f"the spec asks for mean {list(given.mean)}, std {list(given.std)}, scale {given.scale}: leave them at 0, 1, 1")
        return preparation

    @property
    def raw_pixels(self) -> bool:
        return self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0) and self.scale == 1.0


def odapi_preparation(size: tuple[int, int] | None) -> Preparation:
    """The TF OD API's input: RGB uint8 pixels stretched to ``size`` (None: the image's own size)."""
    return Preparation(size, "nhwc", "rgb", "stretch", "antialias", "centre", 0.0, 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "uint8")


def frame_for(height: int, width: int, preparation: Preparation) -> Frame:
    """The :class:`Frame` of an ``height x width`` image under ``preparation``."""
    if preparation.size is None:
        return Frame(height, width)
    input_height, input_width = preparation.size
    if preparation.resize == "stretch":
        return Frame(height, width, input_height / height, input_width / width)
    ratio = min(input_height / height, input_width / width)
    new_height, new_width = int(round(height * ratio)), int(round(width * ratio))
    if preparation.align == "top-left":
        return Frame(height, width, ratio, ratio)
    pad_top = int(round((input_height - new_height) / 2 - 0.1))
    pad_left = int(round((input_width - new_width) / 2 - 0.1))
    return Frame(height, width, ratio, ratio, pad_top, pad_left)


def prepare_input(pixels: np.ndarray, preparation: Preparation) -> tuple[np.ndarray, Frame]:
    """RGB uint8 ``[H, W, 3]`` → (the model's input batch ``[1, ...]`` in its dtype and layout, its Frame)."""
    height, width = pixels.shape[:2]
    frame = frame_for(height, width, preparation)
    if preparation.size is not None:
        input_height, input_width = preparation.size
        resize = resize_bilinear if preparation.interpolation == "bilinear" else resize_rgb
        if preparation.resize == "stretch":
            pixels = resize(pixels, input_height, input_width)
        else:
            new_height, new_width = int(round(height * frame.scale_y)), int(round(width * frame.scale_x))
            canvas = np.full((input_height, input_width, 3), int(round(preparation.pad)), dtype=np.uint8)
            canvas[frame.pad_top:frame.pad_top + new_height, frame.pad_left:frame.pad_left + new_width] = resize(pixels, new_height, new_width)
            pixels = canvas
    if preparation.channels == "bgr":
        pixels = pixels[..., ::-1]
    if preparation.raw_pixels and preparation.quant_scale == 0.0 and preparation.dtype == "uint8":
        values = pixels  # the TF OD API's uint8 image input: pixels as they are
    else:
        values = (pixels.astype(np.float32) - np.asarray(preparation.mean, np.float32)) / np.asarray(preparation.std, np.float32) * np.float32(preparation.scale)
        dtype = np.dtype(preparation.dtype)
        if np.issubdtype(dtype, np.integer):
            if preparation.quant_scale:
                values = np.round(values / preparation.quant_scale + preparation.quant_zero_point)
            limits = np.iinfo(dtype)
            values = np.clip(values, limits.min, limits.max)
        values = values.astype(dtype)
    if preparation.layout == "nchw":
        values = values.transpose(2, 0, 1)
    return np.ascontiguousarray(values[None, ...]), frame
