"""Paired bootstrap of COCO AP (tasks/score/significance.py) on the shared COCO sample, against pycocotools."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tasks.score.evaluation import evaluate, ground_truth
from tasks.score.significance import paired_bootstrap_delta_ap, per_image_evaluation, resampled_ap, resampled_aps


@pytest.fixture(scope="module")
def document(coco_mini) -> dict:
    return json.loads((coco_mini / "instances_train2017_subset.json").read_text())


@pytest.fixture(scope="module")
def gt(document):
    return ground_truth(document)


@pytest.fixture(scope="module")
def image_ids(document) -> list[int]:
    return [image["id"] for image in document["images"]]


def noisy_detections(document: dict, seed: int = 0) -> list[dict]:
    """Ground-truth boxes, 20% dropped, the rest jittered by ~5% of their size, plus one or
    two random false positives per image; continuous random scores (no ties)."""
    rng = np.random.default_rng(seed)
    detections = []
    for annotation in document["annotations"]:
        if rng.random() < 0.2:
            continue
        x, y, w, h = annotation["bbox"]
        dx, dy, dw, dh = rng.normal(0, 0.05, 4) * [w, h, w, h]
        detections.append({"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                           "bbox": [x + dx, y + dy, max(w + dw, 1.0), max(h + dh, 1.0)], "score": float(rng.random())})
    category_ids = [c["id"] for c in document["categories"]]
    for image in document["images"]:
        for _ in range(rng.integers(1, 3)):
            w, h = rng.uniform(10, image["width"] / 2), rng.uniform(10, image["height"] / 2)
            detections.append({"image_id": image["id"], "category_id": int(rng.choice(category_ids)),
                               "bbox": [rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h), w, h],
                               "score": float(rng.random())})
    return detections


@pytest.fixture(scope="module")
def detections(document) -> list[dict]:
    return noisy_detections(document)


@pytest.fixture(scope="module")
def base(gt, detections, image_ids):
    return per_image_evaluation(gt, detections, image_ids)


def pycocotools_ap(gt, detections, image_ids, iou_type="bbox") -> float:
    return evaluate(gt, detections, image_ids, iou_type)["stats"]["AP"]


def test_full_set_is_pycocotools_ap(gt, detections, image_ids, base):
    expected = pycocotools_ap(gt, detections, image_ids)
    assert 0.2 < expected < 0.8  # noisy enough to be a real test
    assert base.image_ids == tuple(sorted(image_ids))
    assert resampled_ap(base, np.ones(len(image_ids))) == pytest.approx(expected, abs=1e-12)


def test_full_set_is_pycocotools_ap_for_masks(gt, document, image_ids):
    """segm goes through the same results handling as tasks.score.evaluation (mask areas, no bbox)."""
    rng = np.random.default_rng(1)
    detections = []
    for annotation in document["annotations"]:
        if rng.random() < 0.8:
            rle = gt.annToRLE(annotation)
            detections.append({"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                               "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                               "score": float(rng.random())})
    per_image = per_image_evaluation(gt, detections, image_ids, "segm")
    expected = pycocotools_ap(gt, detections, image_ids, "segm")
    assert resampled_ap(per_image, np.ones(len(image_ids))) == pytest.approx(expected, abs=1e-12)


def literal_copies(document: dict, detections: list[dict], image_ids: list[int], weights: np.ndarray):
    """The resample as pycocotools would need it: image ``image_ids[i]`` copied ``weights[i]``
    times under new ids, with its annotations and detections. Returns (document, detections, ids)."""
    annotations, results = {}, {}
    for annotation in document["annotations"]:
        annotations.setdefault(annotation["image_id"], []).append(annotation)
    for detection in detections:
        results.setdefault(detection["image_id"], []).append(detection)
    images = {image["id"]: image for image in document["images"]}
    copied = {**document, "images": [], "annotations": []}
    copied_detections = []
    new_id = 0
    for image_id, count in zip(image_ids, weights):
        for _ in range(int(count)):
            new_id += 1
            copied["images"].append({**images[image_id], "id": new_id})
            for annotation in annotations.get(image_id, []):
                copied["annotations"].append({**copy.deepcopy(annotation), "image_id": new_id, "id": len(copied["annotations"]) + 1})
            copied_detections += [{**detection, "image_id": new_id} for detection in results.get(image_id, [])]
    return copied, copied_detections, list(range(1, new_id + 1))


def test_resample_with_duplicates_is_pycocotools_on_literal_copies(document, detections, base):
    ids = list(base.image_ids)
    weights = np.random.default_rng(3).multinomial(len(ids), np.full(len(ids), 1 / len(ids)))
    assert weights.max() >= 3 and (weights == 0).sum() > 30  # duplicates and absent images
    copied, copied_detections, copied_ids = literal_copies(document, detections, ids, weights)
    expected = pycocotools_ap(ground_truth(copied), copied_detections, copied_ids)
    assert resampled_ap(base, weights) == pytest.approx(expected, abs=1e-9)
    assert resampled_ap(base, weights) != pytest.approx(resampled_ap(base, np.ones(len(ids))), abs=1e-6)


def test_many_resamples_at_once_are_pycocotools_on_literal_copies(document, detections, base, monkeypatch):
    """resampled_aps weights blocks of resamples at once: each row is pycocotools' AP on that
    resample's literal copies, and the same number as the row alone, bit for bit."""
    import tasks.score.significance as significance

    ids = list(base.image_ids)
    draws = np.random.default_rng(5).multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=5)
    monkeypatch.setattr(significance, "CHUNK_RESAMPLES", 2)  # blocks of 2, 2 and 1
    values = resampled_aps(base, draws)
    for weights, value in zip(draws, values):
        copied, copied_detections, copied_ids = literal_copies(document, detections, ids, weights)
        assert value == pytest.approx(pycocotools_ap(ground_truth(copied), copied_detections, copied_ids), abs=1e-12)
        assert value == resampled_ap(base, weights)
    assert len(set(values)) == len(values)


def test_identical_variant_has_zero_interval(gt, detections, image_ids, base):
    same = per_image_evaluation(gt, copy.deepcopy(detections), image_ids)
    result = paired_bootstrap_delta_ap(base, same, resamples=50, seed=7)
    assert result == {"delta": 0.0, "ci": [0.0, 0.0], "resamples": 50, "seed": 7}


def without_images(detections: list[dict], dropped: set[int]) -> list[dict]:
    return [d for d in detections if d["image_id"] not in dropped]


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_interval_holds_true_delta(gt, detections, image_ids, base, fraction):
    """other = base with every detection of some images removed: the full-set delta is
    pycocotools' and lies in the interval; a large degradation's interval excludes 0."""
    rng = np.random.default_rng(11)
    dropped = set(rng.choice(image_ids, int(fraction * len(image_ids)), replace=False).tolist())
    degraded = without_images(detections, dropped)
    other = per_image_evaluation(gt, degraded, image_ids)
    true_delta = pycocotools_ap(gt, degraded, image_ids) - pycocotools_ap(gt, detections, image_ids)
    result = paired_bootstrap_delta_ap(base, other, resamples=200, seed=0)
    assert result["delta"] == pytest.approx(true_delta, abs=1e-12)
    low, high = result["ci"]
    assert low <= true_delta <= high
    assert high < 0
    if fraction == 0.5:
        assert high < -0.1


def test_seed_reproducibility(gt, detections, image_ids, base):
    other = per_image_evaluation(gt, without_images(detections, set(image_ids[::7])), image_ids)
    first = paired_bootstrap_delta_ap(base, other, resamples=50, seed=1)
    assert paired_bootstrap_delta_ap(base, other, resamples=50, seed=1) == first
    second = paired_bootstrap_delta_ap(base, other, resamples=50, seed=2)
    assert second["ci"] != first["ci"] and second["delta"] == first["delta"]
    assert all(isinstance(value, float) for value in [first["delta"], *first["ci"]])


def test_different_images_are_refused(gt, detections, image_ids, base):
    fewer = per_image_evaluation(gt, detections, image_ids[:-1])
    with pytest.raises(ValueError, match="same image ids"):
        paired_bootstrap_delta_ap(base, fewer)


@pytest.mark.parametrize("case", ["no annotations", "no images"])
def test_no_ground_truth_gives_no_delta(gt, case):
    if case == "no images":
        per_image = per_image_evaluation(gt, [], [])
    else:
        empty = ground_truth({"images": [{"id": 1, "width": 10, "height": 10}], "annotations": [],
                              "categories": [{"id": 1, "name": "thing"}]})
        per_image = per_image_evaluation(empty, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}], [1])
    assert resampled_ap(per_image, np.ones(len(per_image.image_ids))) == -1.0
    assert paired_bootstrap_delta_ap(per_image, per_image) == {"delta": None, "ci": None, "resamples": 200, "seed": 0}
