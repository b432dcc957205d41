"""Dataset and shards: a COCO instances JSON plus an image folder (local path or ``s3://`` prefix).

Images are taken in ascending ``image_id`` order; ``limit`` keeps the first N; shards are
consecutive runs of ``shard_size`` images, so the same inputs always give the same shards.
Each chosen image is fingerprinted when the dataset is loaded (local: SHA-256 of the file; S3:
ETag and size from one listing, nothing downloaded; ``missing`` when absent), so a result is
only ever reused for the very same image content.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.data.annotations import parse_annotations, read_annotation_bytes
from tasks.store.errors import IMAGE_FAILURES, ImageDecodeError, QuantbenchError, UnsafeKeyError
from tasks.store.object_store import open_store

MISSING = "missing"  # the fingerprint of an image file that does not exist


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset: COCO id, file name under the image folder, size in pixels, and
    the fingerprint of its file's content (``sha256:…``, ``etag:…`` or ``missing``)."""

    id: int
    file_name: str
    width: int
    height: int
    fingerprint: str = ""


@dataclass(frozen=True)
class Dataset:
    annotations_url: str
    images_url: str
    annotations_digest: str  # SHA-256 of the annotations file's bytes + the chosen image ids
    digest: str  # SHA-256 of the above + every chosen image's fingerprint: the dataset's identity
    images: tuple[ImageRecord, ...]
    category_ids: tuple[int, ...]
    instances_per_category: dict[str, int]  # category name -> non-crowd ground truths in the chosen images


@dataclass(frozen=True)
class Shard:
    index: int
    images: tuple[ImageRecord, ...]


def load_dataset(annotations: str, images: str, limit: int | None = None) -> Dataset:
    """Read and validate the annotations; keep the first ``limit`` images by id; fingerprint them."""
    if "://" not in annotations and Path(annotations).is_dir():
        raise QuantbenchError(f"--annotations {annotations} is a folder: pass the COCO instances JSON file (e.g. instances_val2017.json)")
    raw = read_annotation_bytes(annotations)
    document = parse_annotations(annotations, raw)
    records = [ImageRecord(i["id"], i["file_name"], i["width"], i["height"]) for i in document["images"]]
    category_ids = tuple(sorted(c["id"] for c in document["categories"]))
    if "://" not in images and not Path(images).is_dir():
        raise QuantbenchError(f"image folder not found: {images} (pass --images, the folder the file_names are in)")
    if limit is not None and limit < 1:
        raise QuantbenchError(f"--limit must be at least 1, got {limit}")
    chosen = sorted(records, key=lambda r: r.id)[:limit]
    if not chosen:
        raise QuantbenchError(f"{annotations} lists no images")
    images_url = images if "://" in images else str(Path(images).resolve())
    annotations_url = annotations if "://" in annotations else str(Path(annotations).resolve())
    image_store = open_store(images_url)
    outside = [r for r in records if not _inside(image_store, r.file_name)]
    if outside:
        first = outside[0]
        raise QuantbenchError(
            f"{annotations} names {len(outside)} image file(s) outside the images folder {images} (first: image {first.id} "
            f"file_name {first.file_name!r}); a file_name must be a relative path inside the folder: fix the annotations")
    found = image_store.fingerprints([r.file_name for r in chosen])
    chosen = tuple(replace(r, fingerprint=found.get(r.file_name, MISSING)) for r in chosen)
    annotations_digest = hashlib.sha256(raw + json.dumps([r.id for r in chosen]).encode()).hexdigest()
    digest = hashlib.sha256(annotations_digest.encode() + json.dumps([r.fingerprint for r in chosen]).encode()).hexdigest()
    return Dataset(annotations_url, images_url, annotations_digest, digest, chosen, category_ids,
                   instances_per_category(document, {r.id for r in chosen}))


def _inside(store, file_name: str) -> bool:
    """Whether ``file_name`` names an object inside ``store`` (checked without reading it)."""
    try:
        store.containment(file_name)
    except UnsafeKeyError:
        return False
    return True


def instances_per_category(document: dict, image_ids: set[int]) -> dict[str, int]:
    """Non-crowd ground-truth instances per category name in ``image_ids`` (0 for absent ones), in
    a document :func:`tasks.data.annotations.check_coco` accepts."""
    names = {c["id"]: c["name"] for c in document["categories"]}
    counts = dict.fromkeys(names.values(), 0)
    for annotation in document["annotations"]:
        if annotation["image_id"] in image_ids and not annotation["iscrowd"] and annotation["category_id"] in names:
            counts[names[annotation["category_id"]]] += 1
    return counts


def make_shards(dataset: Dataset, shard_size: int) -> list[Shard]:
    if shard_size < 1:
        raise QuantbenchError(f"--shard-size must be at least 1, got {shard_size}")
    return [
        Shard(index=n, images=dataset.images[start : start + shard_size])
        for n, start in enumerate(range(0, len(dataset.images), shard_size))
    ]


def read_annotations(annotations_url: str) -> dict:
    """The annotations document (for evaluation), capped and checked as :func:`load_dataset` does."""
    return parse_annotations(annotations_url, read_annotation_bytes(annotations_url))


IMAGE_FORMATS = ("JPEG", "PNG")  # what COCO (JPEG) and the embedded demo (PNG) use; no other Pillow plugin is reached


def decode_rgb(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode JPEG/PNG bytes (any mode: grayscale, CMYK, palette, alpha) to uint8 RGB ``[H, W, 3]``.

    EXIF orientation is not applied: COCO boxes refer to the stored pixel grid, as in the
    TF Object Detection API's decoder. Alpha is dropped (colour channels kept as stored).
    ``size`` (width, height), the annotation's, is checked against the file's header before the
    pixels are decoded, so a small file that would decode to a huge image is refused at the cost
    of its header. Only :data:`IMAGE_FORMATS` are opened.
    Raises ImageDecodeError with a readable reason (``empty file``, ``not an image in a format quantbench reads …``,
    ``image is W x H pixels, its annotation says …``, the decoder's own message for truncated or
    corrupt files).
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            if size is not None and image.size != tuple(size):
                raise ImageDecodeError(f"image is {image.size[0]}x{image.size[1]} pixels, its annotation says {size[0]}x{size[1]}")
            image.load()  # decode now, so a truncated or corrupt file fails here
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image in a format quantbench reads ({', '.join(IMAGE_FORMATS)}; "
                               f"{len(data)} bytes starting {data[:8]!r})") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{type(error).__name__}: {error}") from None


def resize_rgb(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Stretch to ``height`` x ``width`` with bilinear filtering (aspect ratio not kept, as the
    TF OD API's fixed-shape resizer does); normalised box coordinates are unchanged by it."""
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR))


def resize_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to ``height`` x ``width`` by plain bilinear interpolation, no antialiasing: output
    pixel centres mapped to ``(i + 0.5) * source / target - 0.5``, edges clamped, rounded to uint8 —
    OpenCV's ``INTER_LINEAR`` (what the YOLO families, YOLOX and NanoDet resize with) and
    ``tf.image.resize(..., "bilinear")``. Unlike :func:`resize_rgb` it does not widen the filter
    when shrinking."""
    source_height, source_width = pixels.shape[:2]
    if (source_height, source_width) == (height, width):
        return pixels

    def taps(size: int, source: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(size) + 0.5) * source / size - 0.5, 0, source - 1)
        low = np.floor(position).astype(np.intp)
        return low, np.minimum(low + 1, source - 1), position - low

    y0, y1, wy = taps(height, source_height)
    x0, x1, wx = taps(width, source_width)
    image = pixels.astype(np.float64)  # float32 moves values at the .5 rounding ties
    # Along each row first, then down the columns, as OpenCV does (the order decides those ties too).
    top = image[y0][:, x0] * (1 - wx)[None, :, None] + image[y0][:, x1] * wx[None, :, None]
    bottom = image[y1][:, x0] * (1 - wx)[None, :, None] + image[y1][:, x1] * wx[None, :, None]
    resized = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


class ImageReader:
    """Reads image bytes by file name from the dataset's image folder (local or S3)."""

    def __init__(self, images_url: str):
        self.url = images_url
        self.store = open_store(images_url)

    def read(self, record: ImageRecord) -> bytes:
        return self.store.read_bytes(record.file_name)


def load_inputs(images_url: str, records: list[ImageRecord], count: int) -> list[np.ndarray]:
    """Decode the first ``count`` readable images (decoding is outside the timed region)."""
    reader, inputs, failures = ImageReader(images_url), [], []
    for record in records:
        if len(inputs) == count:
            break
        try:
            inputs.append(decode_rgb(reader.read(record), (record.width, record.height)))
        except IMAGE_FAILURES as error:
            failures.append(f"image {record.id} {record.file_name}: {error}")
    if not inputs:
        raise QuantbenchError(f"none of the {len(records)} images in {images_url} can be read and decoded "
                              f"(e.g. {failures[0]}): fix the images and rerun")
    return inputs
