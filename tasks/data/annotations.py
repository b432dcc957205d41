"""Reading a COCO instances JSON safely: a size cap before it is read, and after parsing a check of
exactly the shape quantbench and pycocotools read, so a malformed file ends in one line naming the
JSON path of its first problem (``$.annotations[3].bbox``) instead of a traceback later.

What is read, and so checked: ``images[]`` ``id`` (int, unique), ``file_name`` (non-empty str),
``width``/``height`` (int > 0: images are decoded only at their annotated size);
``annotations[]`` ``id``, ``image_id``, ``category_id`` (int), ``bbox`` (4 finite numbers, pixels
``[x, y, width, height]``), ``area`` (finite number, pixels²), ``iscrowd`` (0 or 1) and, when
present, ``segmentation`` (polygons: a list of lists of numbers; RLE: an object with ``size``
``[height, width]`` and ``counts``, a string or a list of ints); ``categories[]`` ``id`` (int,
unique), ``name`` (str). Other keys are left alone.

The cap is ``QUANTBENCH_MAX_ANNOTATIONS_BYTES`` (bytes; default 2 GiB, four times COCO's largest
instances file, train2017's 448 MB), read from the environment of the process that loads the
dataset (the benchmark flow run's).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from tasks.store.errors import QuantbenchError
from tasks.store.object_store import split_url

MAX_BYTES_SETTING = "QUANTBENCH_MAX_ANNOTATIONS_BYTES"
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB
NUMBER_TYPES = frozenset({int, float})  # bool is a subclass of int, not one of these types


class ShapeError(ValueError):
    """The first problem found in a document: ``path`` (``$.images[0].id``) and what is wrong."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path} {problem}")


def max_annotation_bytes() -> int:
    """The cap on an annotations file, in bytes (:data:`MAX_BYTES_SETTING`, else 2 GiB)."""
    setting = os.environ.get(MAX_BYTES_SETTING, "").strip()
    if not setting:
        return DEFAULT_MAX_BYTES
    if not setting.isdigit() or int(setting) < 1:
        raise QuantbenchError(f"{MAX_BYTES_SETTING} must be a whole number of bytes, at least 1, got {setting!r}")
    return int(setting)


def read_annotation_bytes(annotations: str) -> bytes:
    """The file's bytes (local path or store URL), refused unread when over the cap."""
    limit = max_annotation_bytes()
    if "://" in annotations:
        store, key = split_url(annotations)
        size, read = store.size(key), lambda: store.read_bytes(key)
    else:
        path = Path(annotations)
        if not path.is_file():
            raise QuantbenchError(f"annotations file not found: {annotations} (pass --annotations, a COCO instances JSON)")
        size, read = path.stat().st_size, path.read_bytes
    if size > limit:
        raise QuantbenchError(f"{annotations} is {size:,} bytes, over the {limit:,}-byte limit on annotation files "
                              f"({MAX_BYTES_SETTING}): pass the right file, or raise the limit if it is")
    return read()


def parse_annotations(annotations: str, raw: bytes) -> dict:
    """The checked document parsed from ``raw``; QuantbenchError naming ``annotations`` and the
    first problem otherwise (not JSON, nested too deep to parse, or a shape it must not have)."""
    try:
        document = json.loads(raw)
    except RecursionError:
        raise QuantbenchError(f"{annotations}: JSON nested too deeply to parse (a COCO instances JSON is 5 levels deep): "
                              "fix the annotations") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise QuantbenchError(f"{annotations}: not valid JSON ({error}): fix the annotations") from None
    try:
        check_coco(document)
    except ShapeError as error:
        raise QuantbenchError(f"{annotations}: {error}: fix the annotations") from None
    return document


def shown(value) -> str:
    """A JSON value for a message, as JSON (control characters escaped) up to 40 characters; a
    list or object holding containers or more than 8 items only as ``a list of N`` / ``an object``."""
    if isinstance(value, (list, dict)):
        items = value.values() if isinstance(value, dict) else value
        if len(value) > 8 or any(isinstance(item, (list, dict)) for item in items):
            return f"a list of {len(value)}" if isinstance(value, list) else "an object"
    text = json.dumps(value[:40] if isinstance(value, str) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(number) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond float's range
        return False


def _is_int(value) -> bool:
    return type(value) is int


def _is_positive_int(value) -> bool:
    return type(value) is int and value > 0


def _is_number(value) -> bool:
    return type(value) in NUMBER_TYPES and _finite(value)


def _numbers(values) -> bool:
    """Whether ``values`` is a list of finite numbers (int or float, not bool)."""
    return isinstance(values, list) and all(map(NUMBER_TYPES.__contains__, map(type, values))) and _finite(sum(values))


def _polygon(values) -> bool:
    """Whether ``values`` is a list whose items add up to a finite number: numbers (a bool counts
    as 0 or 1, as pycocotools reads it). One pass in C: polygons hold most of COCO's numbers."""
    if not isinstance(values, list):
        return False
    try:
        return _finite(sum(values))
    except TypeError:  # a string, null, list or object among them
        return False


def _is_box(value) -> bool:
    return _numbers(value) and len(value) == 4


def _is_crowd_flag(value) -> bool:
    return type(value) is int and value in (0, 1)


def _is_file_name(value) -> bool:
    return isinstance(value, str) and value != ""


def _is_str(value) -> bool:
    return isinstance(value, str)


def _is_list(value) -> bool:
    return isinstance(value, list)


def _field(item: dict, path: str, key: str, ok: Callable[[object], bool], expected: str):
    if key not in item:
        raise ShapeError(f"{path}.{key}", f"is missing (must be {expected})")
    value = item[key]
    if not ok(value):
        raise ShapeError(f"{path}.{key}", f"must be {expected}, got {shown(value)}")
    return value


def _objects(document: dict, key: str) -> list:
    items = _field(document, "$", key, _is_list, "a list")
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ShapeError(f"$.{key}[{n}]", f"must be an object, got {shown(item)}")
    return items


def _segmentation(value) -> bool:
    if isinstance(value, list):
        return all(map(_polygon, value))
    if isinstance(value, dict):
        size, counts = value.get("size"), value.get("counts")
        return (isinstance(size, list) and len(size) == 2 and all(map(_is_int, size))
                and (isinstance(counts, str) or (isinstance(counts, list) and all(map(_is_int, counts)))))
    return False


def _unique_id(item: dict, path: str, kind: str, seen: set[int]) -> None:
    """``item``'s integer ``id``, added to ``seen``; ShapeError when it is missing, not an integer,
    or already in ``seen``."""
    item_id = _field(item, path, "id", _is_int, "an integer")
    if item_id in seen:
        raise ShapeError(f"{path}.id", f"repeats {kind} id {item_id}")
    seen.add(item_id)


def _check_images(images: list) -> None:
    seen: set[int] = set()
    for n, image in enumerate(images):
        path = f"$.images[{n}]"
        _unique_id(image, path, "image", seen)
        _field(image, path, "file_name", _is_file_name, "a non-empty string")
        for key in ("width", "height"):
            _field(image, path, key, _is_positive_int, "a whole number of pixels above 0")


def _annotation_ok(annotation) -> bool:
    """:func:`_explain_annotation`'s checks as one expression: the pass over every annotation."""
    get = annotation.get
    return (type(get("id")) is int and type(get("image_id")) is int and type(get("category_id")) is int
            and _is_box(get("bbox")) and _is_number(get("area")) and _is_crowd_flag(get("iscrowd"))
            and ("segmentation" not in annotation or _segmentation(annotation["segmentation"])))


def _check_annotations(annotations: list) -> None:
    for n, annotation in enumerate(annotations):
        if not _annotation_ok(annotation):
            _explain_annotation(annotation, f"$.annotations[{n}]")


def _explain_annotation(annotation: dict, path: str) -> None:
    """Raise ShapeError for the first of ``annotation``'s fields that is wrong (the order of
    :func:`_annotation_ok`, which found one)."""
    for key in ("id", "image_id", "category_id"):
        _field(annotation, path, key, _is_int, "an integer")
    _field(annotation, path, "bbox", _is_box, "a list of 4 numbers [x, y, width, height]")
    _field(annotation, path, "area", _is_number, "a number")
    _field(annotation, path, "iscrowd", _is_crowd_flag, "0 or 1")
    _field(annotation, path, "segmentation", _segmentation,
           "polygons (a list of lists of numbers) or an RLE object with size [height, width] and counts")


def _check_categories(categories: list) -> None:
    seen: set[int] = set()
    for n, category in enumerate(categories):
        path = f"$.categories[{n}]"
        _unique_id(category, path, "category", seen)
        _field(category, path, "name", _is_str, "a string")


def check_coco(document) -> None:
    """Raise ShapeError at the first place ``document`` differs from what is read (module docstring)."""
    if not isinstance(document, dict):
        raise ShapeError("$", f"must be an object with images, annotations and categories, got {shown(document)}")
    _check_images(_objects(document, "images"))
    _check_annotations(_objects(document, "annotations"))
    _check_categories(_objects(document, "categories"))
