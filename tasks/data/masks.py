"""Instance masks: TF OD API box-relative ``detection_masks`` → binary image masks → COCO RLE.

Pure numpy + ``pycocotools.mask`` (no TensorFlow: inference stays TF-free).

TF OD API mask models (Mask R-CNN) emit ``detection_masks``: float ``[N, mh, mw]`` in [0, 1]
(33x33 for the TF2 zoo models), each **relative to its own detection box**
(``detection_boxes``, normalised ``[ymin, xmin, ymax, xmax]``). The TF OD API turns them into image
masks with ``ops.reframe_box_masks_to_image_masks`` (bilinear ``tf.image.crop_and_resize`` of the
box mask onto the image grid, 0 outside the box) and its COCO evaluation thresholds them with
``> 0.5``. :func:`reframe_box_masks` is that, in numpy, working on each box's pixel window only.

Sampling convention (``align_corners=True``, the default, = TF OD API, checked against
``tf.image.crop_and_resize`` in tests/test_masks.py):

- image pixel ``(i, j)`` of an ``H x W`` image is sampled at the normalised image point
  ``(i / (H - 1), j / (W - 1))`` (``0.5`` on an axis of length 1): normalised 0 is the centre of the
  first pixel, 1 the centre of the last one (corner-aligned pixel centres, as in crop_and_resize);
- box-relative coordinates: ``v = (y - ymin) / (ymax - ymin)``, ``u = (x - xmin) / (xmax - xmin)``
  (extents floored at 1e-4 as TF does); the pixel is **inside** iff ``0 <= v <= 1`` and
  ``0 <= u <= 1`` (inclusive; boxes are *not* clipped to the image first, the image grid clips);
- mask cell ``(k, l)`` sits at box-relative ``(k / (mh - 1), l / (mw - 1))``: row 0 on the box's
  top edge, row ``mh - 1`` on its bottom edge. An inside pixel gets the bilinear interpolation of
  the mask at the fractional cell ``(v (mh - 1), u (mw - 1))`` (interpolated along x first, then y,
  as TF does); a pixel outside the box gets 0;
- binary mask = value ``> 0.5`` (strictly).

``align_corners=False`` is the half-pixel convention of COCO's continuous coordinates (detectron2's
``paste_masks_in_image``, ``tf.image.resize(half_pixel_centers=True)``): pixel ``(i, j)`` is sampled
at its centre, normalised ``((i + 0.5) / H, (j + 0.5) / W)``, which is exactly where a COCO box in
pixels ``[x, y, w, h]`` (normalised by W, H as :mod:`tasks.data.coco_format` does) puts it; mask cell
``(k, l)`` sits at box-relative ``((k + 0.5) / mh, (l + 0.5) / mw)``, the fractional cell is
``(v mh - 0.5, u mw - 0.5)`` clamped to the mask (edge cells extend to the box edge); inside test,
interpolation and threshold as above. The two conventions differ by at most half a pixel (0 at the
image centre, ±0.5 px at the borders). TF OD API models were trained and evaluated with the first;
the second is the one in which COCO ground truth round-trips exactly (tests/mask_oracle.py).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pycocotools import mask as mask_utils

MASK_THRESHOLD = 0.5  # TF OD API eval: tf.greater(reframed_masks, 0.5)
_MIN_BOX_EXTENT = 1e-4  # TF OD API reframe_image_corners_relative_to_boxes floors box height/width here


def _pixel_positions(length: int, align_corners: bool) -> np.ndarray:
    """Normalised image coordinate of each pixel's sample point along one axis (ascending)."""
    if align_corners:
        return np.arange(length) / (length - 1) if length > 1 else np.full(length, 0.5)
    return (np.arange(length) + 0.5) / length


def _axis(positions: np.ndarray, low: float, high: float, cells: int, align_corners: bool):
    """Along one axis: the pixel range ``[start, stop)`` whose sample points are inside the box,
    and for each such pixel the two mask cells it interpolates between and the weight of the second."""
    if align_corners:
        extent = max(high - low, _MIN_BOX_EXTENT)
        high = low + extent if high - low < _MIN_BOX_EXTENT else high
    else:
        extent = high - low
    if not extent > 0:  # empty or NaN box
        return 0, 0, None, None, None
    start = int(np.searchsorted(positions, low, "left"))  # first sample point >= low
    stop = int(np.searchsorted(positions, high, "right"))  # first sample point > high
    if stop <= start:
        return 0, 0, None, None, None
    relative = (positions[start:stop] - low) / extent
    cell = relative * (cells - 1) if align_corners else relative * cells - 0.5
    cell = np.clip(cell, 0.0, cells - 1)
    lower = np.floor(cell).astype(np.intp)
    upper = np.minimum(lower + 1, cells - 1)
    return start, stop, lower, upper, (cell - lower).astype(np.float32)


def _windows(masks, boxes, image_height: int, image_width: int, align_corners: bool) -> Iterator:
    """Per box: ``None`` (nothing inside the image) or ``(rows slice, cols slice, float32 values)``."""
    ys = _pixel_positions(int(image_height), align_corners)
    xs = _pixel_positions(int(image_width), align_corners)
    for mask, (ymin, xmin, ymax, xmax) in zip(masks, boxes):
        r0, r1, top_cell, bottom_cell, wy = _axis(ys, ymin, ymax, mask.shape[0], align_corners)
        c0, c1, left_cell, right_cell, wx = _axis(xs, xmin, xmax, mask.shape[1], align_corners)
        if r1 <= r0 or c1 <= c0:
            yield None
            continue
        first, last = top_cell[0], bottom_cell[-1] + 1  # only the mask rows this window reads
        rows = np.asarray(mask[first:last], dtype=np.float32)
        left, right = rows[:, left_cell], rows[:, right_cell]
        across = left + (right - left) * wx  # [mask rows, window width]: along x first (as TF)
        top, bottom = across[top_cell - first], across[bottom_cell - first]
        yield slice(r0, r1), slice(c0, c1), top + (bottom - top) * wy[:, None]


def _check(masks, boxes) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:  # [N, mh, mw, 1]
        masks = masks[..., 0]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if masks.ndim != 3 or len(masks) != len(boxes) or 0 in masks.shape[1:]:
        raise ValueError(f"masks must be [N, mh, mw] with one mask per box; got {masks.shape} for {len(boxes)} boxes")
    return masks, boxes


def reframe_box_masks(
    masks: np.ndarray,
    boxes: np.ndarray,
    image_height: int,
    image_width: int,
    *,
    align_corners: bool = True,
    threshold: float | None = MASK_THRESHOLD,
) -> np.ndarray:
    """Box-relative masks ``[N, mh, mw]`` (any mh, mw; float in [0, 1], or any numeric dtype read as
    such) with their normalised ``[ymin, xmin, ymax, xmax]`` boxes ``[N, 4]`` → image masks
    ``[N, image_height, image_width]``.

    Sampling is the TF OD API's ``reframe_box_masks_to_image_masks`` (``align_corners=True``) or
    the half-pixel convention (``align_corners=False``); both are specified exactly in the module
    docstring. In short, default: pixel ``(i, j)`` samples normalised ``(i/(H-1), j/(W-1))``, mask
    cell ``(k, l)`` sits at box-relative ``(k/(mh-1), l/(mw-1))``, bilinear inside the box
    (inclusive), 0 outside. Boxes may extend past the image (pass them unclipped: the masks are
    relative to the boxes the model predicted). Work is per box, on the box's pixel window only.

    Returns uint8 {0, 1} masks (value ``> threshold``), or the float32 interpolated values when
    ``threshold`` is None.
    """
    masks, boxes = _check(masks, boxes)
    out = np.zeros((len(boxes), int(image_height), int(image_width)), np.float32 if threshold is None else np.uint8)
    for k, window in enumerate(_windows(masks, boxes, image_height, image_width, align_corners)):
        if window is not None:
            rows, cols, values = window
            out[k, rows, cols] = values if threshold is None else values > threshold
    return out


def _rle(fortran_masks: np.ndarray) -> list[dict]:
    """uint8 {0, 1} ``[H, W, N]`` Fortran-ordered → JSON-ready RLEs (``counts`` as str)."""
    return [
        {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}
        for r in mask_utils.encode(fortran_masks)
    ]


def encode_rle(binary_masks: np.ndarray) -> list[dict]:
    """Binary masks ``[N, H, W]`` (or one ``[H, W]``; nonzero = foreground) → COCO compressed RLEs
    ``{"size": [H, W], "counts": str}``, the COCO results format for ``segm``, JSON-serialisable.

    (pycocotools' encoder reads raw bytes and needs exactly 0/1 in Fortran order, hence the cast.)
    """
    masks = np.asarray(binary_masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"binary masks must be [N, H, W]; got shape {masks.shape}")
    return _rle(np.asfortranarray(np.moveaxis(masks != 0, 0, -1), dtype=np.uint8))


def encode_box_masks_rle(
    masks: np.ndarray, boxes: np.ndarray, image_height: int, image_width: int, *, align_corners: bool = True
) -> list[dict]:
    """``encode_rle(reframe_box_masks(...))`` without holding the ``[N, H, W]`` stack: one image-sized
    buffer, each box's window pasted, encoded, and cleared again."""
    masks, boxes = _check(masks, boxes)
    buffer = np.zeros((int(image_height), int(image_width), 1), np.uint8, order="F")
    encoded = []
    for window in _windows(masks, boxes, image_height, image_width, align_corners):
        if window is None:
            encoded += _rle(buffer)
            continue
        rows, cols, values = window
        buffer[rows, cols, 0] = values > MASK_THRESHOLD
        encoded += _rle(buffer)
        buffer[rows, cols, 0] = 0
    return encoded
