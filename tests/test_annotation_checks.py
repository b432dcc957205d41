"""A malformed, too deeply nested or too large annotations file is refused with one line naming the
file and the JSON path of its first problem (exit 2), before anything is read from it or built on
it, wherever it is read: the dataset (`load_dataset`) and the evaluation (`read_annotations`)."""
from __future__ import annotations

import copy
import json

import pytest

from flows.cli import main
from tasks.data.dataset import load_dataset, read_annotations
from tasks.store.errors import QuantbenchError
from tasks.store.object_store import open_store

VALID = {
    "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 8},
               {"id": 2, "file_name": "b.png", "width": 12, "height": 6}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 3.5], "area": 14.0, "iscrowd": 0,
         "segmentation": [[1, 1, 5, 1, 5, 4.5, 1, 4.5]]},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 1,
         "segmentation": {"size": [6, 12], "counts": [0, 2, 4, 2, 64]}},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 1, 2, 2], "area": 4, "iscrowd": 0,
         "segmentation": {"size": [6, 12], "counts": "PP1"}},
        {"id": 4, "image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square", "supercategory": "shape"}],
}


def _changed(path: tuple, value) -> dict:
    """VALID with the item at ``path`` (keys and indices) set to ``value``, or deleted for ``...``."""
    document = copy.deepcopy(VALID)
    *parents, last = path
    target = document
    for step in parents:
        target = target[step]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return document


# (what is changed, the message's JSON path and problem)
MALFORMED = [
    (("images",), ..., "$.images is missing (must be a list)"),
    (("images",), {"id": 1}, "$.images must be a list, got {\"id\": 1}"),
    (("images", 1), "b.png", "$.images[1] must be an object, got \"b.png\""),
    (("images", 0, "id"), "1", "$.images[0].id must be an integer, got \"1\""),
    (("images", 1, "id"), 1, "$.images[1].id repeats image id 1"),
    (("images", 0, "file_name"), 7, "$.images[0].file_name must be a non-empty string, got 7"),
    (("images", 1, "width"), 0, "$.images[1].width must be a whole number of pixels above 0, got 0"),
    (("images", 0, "height"), ..., "$.images[0].height is missing (must be a whole number of pixels above 0)"),
    (("annotations", 2), None, "$.annotations[2] must be an object, got null"),
    (("annotations", 3, "bbox"), "abc", "$.annotations[3].bbox must be a list of 4 numbers [x, y, width, height], got \"abc\""),
    (("annotations", 0, "bbox"), [1, 2, 3], "$.annotations[0].bbox must be a list of 4 numbers [x, y, width, height], got [1, 2, 3]"),
    (("annotations", 0, "bbox"), [1, float("nan"), 3, 4], "$.annotations[0].bbox must be a list of 4 numbers [x, y, width, height], got [1, NaN, 3, 4]"),
    (("annotations", 1, "image_id"), 2.0, "$.annotations[1].image_id must be an integer, got 2.0"),
    (("annotations", 1, "category_id"), ..., "$.annotations[1].category_id is missing (must be an integer)"),
    (("annotations", 0, "id"), ..., "$.annotations[0].id is missing (must be an integer)"),
    (("annotations", 0, "area"), "14", "$.annotations[0].area must be a number, got \"14\""),
    (("annotations", 0, "iscrowd"), 2, "$.annotations[0].iscrowd must be 0 or 1, got 2"),
    (("annotations", 0, "iscrowd"), True, "$.annotations[0].iscrowd must be 0 or 1, got true"),
    (("annotations", 0, "segmentation"), "polygon",
     "$.annotations[0].segmentation must be polygons (a list of lists of numbers) or an RLE object with size [height, width] and counts, got \"polygon\""),
    (("annotations", 0, "segmentation", 0, 2), "5",
     "$.annotations[0].segmentation must be polygons (a list of lists of numbers) or an RLE object with size [height, width] and counts, got a list of 1"),
    (("annotations", 1, "segmentation", "size"), [6],
     "$.annotations[1].segmentation must be polygons (a list of lists of numbers) or an RLE object with size [height, width] and counts, got an object"),
    (("categories", 1, "name"), ..., "$.categories[1].name is missing (must be a string)"),
    (("categories", 1, "id"), 1, "$.categories[1].id repeats category id 1"),
    (("categories",), "all", "$.categories must be a list, got \"all\""),
]


def _write(tmp_path, document, name: str = "instances.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    (tmp_path / "images").mkdir(exist_ok=True)
    return path


@pytest.mark.parametrize(("where", "value", "problem"), MALFORMED, ids=[m[2].split(" ")[0] + "-" + str(n) for n, m in enumerate(MALFORMED)])
def test_a_malformed_annotations_file_is_refused_naming_the_json_path(tmp_path, where, value, problem):
    path = _write(tmp_path, _changed(where, value))
    with pytest.raises(QuantbenchError) as refused:
        load_dataset(str(path), str(tmp_path / "images"))
    assert str(refused.value) == f"{path}: {problem}: fix the annotations"


@pytest.mark.parametrize(("document", "problem"), [
    ([VALID], "$ must be an object with images, annotations and categories, got a list of 1"),
    ("instances", "$ must be an object with images, annotations and categories, got \"instances\""),
])
def test_a_document_that_is_not_an_object_is_refused(tmp_path, document, problem):
    path = _write(tmp_path, document)
    with pytest.raises(QuantbenchError) as refused:
        load_dataset(str(path), str(tmp_path / "images"))
    assert str(refused.value) == f"{path}: {problem}: fix the annotations"


def test_the_evaluation_reads_the_annotations_checked_too(tmp_path):
    path = _write(tmp_path, _changed(("annotations", 3, "bbox"), "abc"))
    with pytest.raises(QuantbenchError, match=r"\$\.annotations\[3\]\.bbox must be a list of 4 numbers"):
        read_annotations(str(path))


def test_polygons_and_both_rle_forms_are_accepted(tmp_path):
    path = _write(tmp_path, VALID)
    dataset = load_dataset(str(path), str(tmp_path / "images"))
    assert [r.id for r in dataset.images] == [1, 2] and dataset.category_ids == (1, 2)
    assert dataset.instances_per_category == {"circle": 2, "square": 1}  # the crowd region is not counted
    assert read_annotations(str(path)) == VALID


def _cli_refusal(capfd, tmp_path, annotations) -> str:
    """`quantbench run` on these annotations: exit 2, one line on stderr, no traceback."""
    assert main(["run", "--annotations", str(annotations), "--images", str(tmp_path / "images"),
                 "--store", str(tmp_path / "store")]) == 2
    out, err = capfd.readouterr()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err, err
    return err.strip()


def test_the_cli_refuses_a_mistyped_box_with_one_line(capfd, tmp_path):
    path = _write(tmp_path, _changed(("annotations", 3, "bbox"), "abc"))
    assert _cli_refusal(capfd, tmp_path, path) == (
        f"error: {path}: $.annotations[3].bbox must be a list of 4 numbers [x, y, width, height], got \"abc\": fix the annotations")


def test_the_cli_refuses_json_nested_too_deeply_to_parse_with_one_line(capfd, tmp_path):
    path = tmp_path / "instances.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "images").mkdir()
    assert _cli_refusal(capfd, tmp_path, path) == (
        f"error: {path}: JSON nested too deeply to parse (a COCO instances JSON is 5 levels deep): fix the annotations")


def test_text_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(VALID)[:-40])
    with pytest.raises(QuantbenchError, match=rf"^{path}: not valid JSON \(.*line 1 column \d+.*\): fix the annotations$"):
        load_dataset(str(path), str(tmp_path))


def test_a_file_over_the_size_cap_is_refused(tmp_path, monkeypatch):
    path = _write(tmp_path, VALID)
    size = path.stat().st_size
    monkeypatch.setenv("QUANTBENCH_MAX_ANNOTATIONS_BYTES", str(size - 1))
    with pytest.raises(QuantbenchError) as refused:
        load_dataset(str(path), str(tmp_path / "images"))
    assert str(refused.value) == (f"{path} is {size:,} bytes, over the {size - 1:,}-byte limit on annotation files "
                                  "(QUANTBENCH_MAX_ANNOTATIONS_BYTES): pass the right file, or raise the limit if it is")
    with pytest.raises(QuantbenchError, match="over the"):
        read_annotations(str(path))
    monkeypatch.setenv("QUANTBENCH_MAX_ANNOTATIONS_BYTES", str(size))
    assert len(load_dataset(str(path), str(tmp_path / "images")).images) == 2


def test_the_size_cap_applies_to_annotations_in_s3(s3_env, tmp_path, monkeypatch):
    open_store("s3://quantbench/cap").write_bytes("instances.json", json.dumps(VALID).encode())
    size = len(json.dumps(VALID).encode())
    monkeypatch.setenv("QUANTBENCH_MAX_ANNOTATIONS_BYTES", "100")
    with pytest.raises(QuantbenchError) as refused:
        load_dataset("s3://quantbench/cap/instances.json", "s3://quantbench/cap")
    assert str(refused.value).startswith(f"s3://quantbench/cap/instances.json is {size:,} bytes, over the 100-byte limit")


def test_a_size_cap_that_is_not_a_number_is_refused(tmp_path, monkeypatch):
    path = _write(tmp_path, VALID)
    monkeypatch.setenv("QUANTBENCH_MAX_ANNOTATIONS_BYTES", "2GB")
    with pytest.raises(QuantbenchError) as refused:
        load_dataset(str(path), str(tmp_path / "images"))
    assert str(refused.value) == "QUANTBENCH_MAX_ANNOTATIONS_BYTES must be a whole number of bytes, at least 1, got '2GB'"
