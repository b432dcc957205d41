"""The two evaluation backends (tasks.score.evaluation.EVAL_BACKENDS) on the embedded demo (the demo
detector's real detections; masks derived from the ground truth) and on the real COCO sample
(../shared/coco-mini: detections derived from its ground truth with seeded noise), bbox and segm:
the same per-image matching, recalls and scores, and the same 12 stats bit for bit in 3 of the 4
cases.

The one difference, pinned exactly: pycocotools computes precision as ``tp / (tp + fp +
np.spacing(1))``, faster-coco-eval (C++) as ``tp / (tp + fp)``. The two agree for ``tp + fp >= 2``
(adding 2**-52 to an integer >= 2 rounds back to it) and differ only where a category's top-ranked
detection is a true positive and the next one is not: pycocotools 1 - 2**-52, faster-coco-eval 1.0.
Averaged into an AP this can change its last bit (coco-mini segm: APs).
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from demo import DEMO_MODEL_DIR
from demo.synthetic import VAL, generate
from tasks.model.conversion import convert
from tasks.data.dataset import load_dataset, make_shards
from tasks.score.evaluation import (
    EVAL_BACKENDS,
    evaluate,
    evaluate_all,
    ground_truth,
    make_evaluator,
    run_evaluator,
    summary,
)
from tasks.run.inference import ShardJob, infer_shard
from tasks.score.matching import image_results
from tasks.score.steps import evaluate_task

REPO = Path(__file__).resolve().parents[1]
FAST = "faster-coco-eval"
# pycocotools' precision of one true positive out of one detection: 1 / (1 + np.spacing(1)).
PYCOCOTOOLS_ONE = 1 / (1 + np.spacing(1))


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx) pixels; what leaves the image is lost, what enters is 0."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _eroded(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` eroded ``pixels`` times with the 4-neighbourhood (outside the image counts as 0)."""
    for _ in range(pixels):
        padded = np.pad(mask, 1)
        mask = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


def noisy_mask_detections(gt, seed: int) -> list[dict]:
    """Detections carrying ``bbox`` and an RLE ``segmentation``, as a mask model's, from ``gt``'s
    non-crowd objects: 15% missed; the rest shifted by ~4% of their size (box and mask alike), the
    mask eroded by 0-2 pixels, the box scaled by ~5%; a third of them also detected twice (a
    duplicate, lower score); 1-3 false positives per image (a random whole-pixel box and its filled
    mask, a random category). Scores are multiples of 1/256, as an int8 model's: many ties."""
    rng = np.random.default_rng(seed)
    category_ids = sorted(gt.cats)
    detections = []

    def add(image_id, category_id, bbox, mask):
        detections.append({"image_id": image_id, "category_id": category_id, "bbox": [round(float(v), 3) for v in bbox],
                           "segmentation": _rle(mask), "score": int(rng.integers(1, 257)) / 256})

    for image_id in sorted(gt.imgs):
        image = gt.imgs[image_id]
        for annotation in gt.imgToAnns[image_id]:
            if annotation["iscrowd"] or rng.random() < 0.15:
                continue
            x, y, w, h = annotation["bbox"]
            dx, dy = np.round(rng.normal(0, 0.04, 2) * [w, h]).astype(int)
            mask = _eroded(_shifted(gt.annToMask(annotation).astype(bool), int(dy), int(dx)), int(rng.integers(0, 3)))
            for _ in range(1 + (rng.random() < 1 / 3)):
                add(image_id, annotation["category_id"], [x + dx, y + dy, w * np.exp(rng.normal(0, 0.05)), h * np.exp(rng.normal(0, 0.05))], mask)
        for _ in range(rng.integers(1, 4)):
            w, h = rng.integers(4, [image["width"] // 2, image["height"] // 2], endpoint=True)
            x, y = rng.integers(0, [image["width"] - w, image["height"] - h], endpoint=True)
            filled = np.zeros((image["height"], image["width"]), bool)
            filled[y:y + h, x:x + w] = True
            add(image_id, int(rng.choice(category_ids)), [x, y, w, h], filled)
    return detections


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """The demo validation split (200 images), the demo detector's float32 LiteRT detections
    on it (100 per image, boxes only) and masks derived from its ground truth."""
    root = tmp_path_factory.mktemp("demo-eval")
    annotations = generate(root / "data", VAL)
    dataset = load_dataset(str(annotations), str(annotations.parent))
    model = root / "float32.tflite"
    model.write_bytes(convert(DEMO_MODEL_DIR, "float32"))
    store = root / "store"
    [shard] = make_shards(dataset, len(dataset.images))
    output = infer_shard(ShardJob("float32", str(model), "demo", dataset.annotations_digest, dataset.images_url, shard,
                                  store.as_uri(), category_ids=dataset.category_ids))
    document = json.loads(annotations.read_text())
    gt = ground_truth(document)
    return {"document": document, "gt": gt, "image_ids": [i["id"] for i in document["images"]],
            "bbox": json.loads((store / output.key).read_text())["detections"], "segm": noisy_mask_detections(gt, seed=0)}


@pytest.fixture(scope="module")
def mini(coco_mini) -> dict:
    """The real COCO sample (160 images, crowd regions included) and noisy mask detections."""
    document = json.loads((coco_mini / "instances_train2017_subset.json").read_text())
    gt = ground_truth(document)
    detections = noisy_mask_detections(gt, seed=1)
    return {"document": document, "gt": gt, "image_ids": [i["id"] for i in document["images"]], "bbox": detections, "segm": detections}


def assert_same_matching(expected, actual) -> None:
    """Two :class:`tasks.score.matching.PerImageEval` hold the same per-image matching."""
    assert actual.image_ids == expected.image_ids and actual.category_ids == expected.category_ids
    assert np.array_equal(actual.recall_thresholds, expected.recall_thresholds)
    assert np.array_equal(actual.iou_thresholds, expected.iou_thresholds)
    assert len(actual.rankings) == len(expected.rankings) == len(expected.category_ids)
    for k, (ranking, other) in enumerate(zip(expected.rankings, actual.rankings)):
        assert ranking.detections == other.detections, k
        for field in ranking._fields:
            assert np.array_equal(getattr(ranking, field), getattr(other, field)), (k, field)


def assert_same_image_results(expected: dict, actual: dict) -> None:
    """Two :func:`tasks.score.matching.image_results` hold the same matching, pair by pair."""
    assert actual.keys() == expected.keys()
    for pair, result in expected.items():
        other = actual[pair]
        assert result.ground_truths == other.ground_truths, pair
        for field in ("scores", "matched", "ignored"):
            assert np.array_equal(getattr(result, field), getattr(other, field)), (pair, field)


CASES = [("demo", "bbox"), ("demo", "segm"), ("mini", "bbox"), ("mini", "segm")]


def _evaluators(dataset: dict, iou_type: str) -> dict:
    """Both backends' evaluators of ``dataset`` for ``iou_type``, run (as tasks.score.evaluation.evaluate does)."""
    evaluators = {}
    for backend in EVAL_BACKENDS:
        evaluators[backend] = make_evaluator(dataset["gt"], dataset[iou_type], dataset["image_ids"], iou_type, backend, per_image=True)
        run_evaluator(evaluators[backend])
    return evaluators


@pytest.mark.parametrize(("name", "iou_type"), CASES)
def test_per_image_matching_is_identical(request, name, iou_type):
    dataset = request.getfixturevalue(name)
    gt, detections, image_ids = dataset["gt"], dataset[iou_type], dataset["image_ids"]
    reference = evaluate(gt, detections, image_ids, iou_type, per_image=True)
    fast = evaluate(gt, detections, image_ids, iou_type, per_image=True, backend=FAST)
    assert 0.2 < reference["stats"]["AP"] < 0.95  # a real test: neither all wrong nor all right
    assert fast["images"] == reference["images"] == len(image_ids)
    assert_same_matching(reference["per_image"], fast["per_image"])
    evaluators = _evaluators(dataset, iou_type)
    assert_same_image_results(image_results(evaluators["pycocotools"]), image_results(evaluators[FAST]))
    assert sum(r.detections for r in reference["per_image"].rankings) == sum(r.scores.size for r in image_results(evaluators[FAST]).values())


@pytest.mark.parametrize(("name", "iou_type", "max_ulp"), [
    *((*case, 0) for case in CASES[:3]),
    # APs differs in its last bit: pycocotools 0.3087766810812997, faster-coco-eval 0.30877668108129963
    # (pycocotools' precision epsilon, see test_accumulated_arrays_differ_only_by_pycocotools_epsilon).
    (*CASES[3], 1),
])
def test_the_12_stats_are_identical_to_the_last_bit(request, name, iou_type, max_ulp):
    evaluators = _evaluators(request.getfixturevalue(name), iou_type)
    fast, reference = evaluators[FAST].stats, evaluators["pycocotools"].stats
    if max_ulp == 0:
        assert np.array_equal(fast, reference)
    else:
        np.testing.assert_array_max_ulp(fast, reference, maxulp=max_ulp)
        assert not np.array_equal(fast, reference)  # the known difference is still there: keep this case honest


@pytest.mark.parametrize(("name", "iou_type"), CASES)
def test_accumulated_arrays_differ_only_by_pycocotools_epsilon(request, name, iou_type):
    """recall and scores are identical; precision differs only where pycocotools has 1 - 2**-52."""
    reference, fast = (evaluator.eval for evaluator in _evaluators(request.getfixturevalue(name), iou_type).values())
    assert np.array_equal(fast["recall"], reference["recall"])
    assert np.array_equal(fast["scores"], reference["scores"])
    assert fast["precision"].shape == reference["precision"].shape
    differ = fast["precision"] != reference["precision"]
    assert np.all(reference["precision"][differ] == PYCOCOTOOLS_ONE) and np.all(fast["precision"][differ] == 1.0)


@pytest.mark.parametrize(("name", "iou_type"), CASES)
def test_results_are_pycocotools_without_its_epsilon(request, name, iou_type):
    """faster-coco-eval's stats and per-category APs, with or without per-image results (one C++
    call), are bit for bit pycocotools' once its 1 - 2**-52 precisions are made 1.0."""
    dataset = request.getfixturevalue(name)
    reference = _evaluators(dataset, iou_type)["pycocotools"]
    precision = reference.eval["precision"]
    precision[precision == PYCOCOTOOLS_ONE] = 1.0
    with contextlib.redirect_stdout(io.StringIO()):
        reference.summarize()
    expected = {**summary(reference), "images": len(dataset["image_ids"])}
    for per_image in (False, True):
        fast = evaluate(dataset["gt"], dataset[iou_type], dataset["image_ids"], iou_type, per_image, backend=FAST)
        assert {k: v for k, v in fast.items() if k != "per_image"} == expected


def test_no_detections_evaluate_alike(mini):
    for iou_type in ("bbox", "segm"):
        reference = evaluate(mini["gt"], [], mini["image_ids"], iou_type)
        assert evaluate(mini["gt"], [], mini["image_ids"], iou_type, backend=FAST) == reference
        assert reference["stats"]["AP"] == 0.0


def test_evaluate_task_takes_the_backend(mini, tmp_path):
    """The Prefect task's positional call is unchanged; ``backend`` selects faster-coco-eval."""
    annotations, detections = tmp_path / "instances.json", tmp_path / "detections.json"
    annotations.write_text(json.dumps(mini["document"]))
    detections.write_text(json.dumps(mini["segm"]))
    reference = evaluate_task.fn(str(annotations), str(detections), mini["image_ids"])
    fast = evaluate_task.fn(str(annotations), str(detections), mini["image_ids"], backend=FAST)
    for iou_type in ("bbox", "segm"):
        assert_same_matching(reference["per_image"][iou_type], fast["per_image"][iou_type])
    direct = evaluate_all(ground_truth(mini["document"]), mini["segm"], mini["image_ids"], backend=FAST)
    assert {k: v for k, v in fast.items() if k not in ("segm", "per_image", "resampled", "process")} == direct["bbox"] and fast["segm"] == direct["segm"]


def test_unknown_backend_is_refused(mini):
    with pytest.raises(ValueError, match="backend must be one of"):
        evaluate(mini["gt"], [], mini["image_ids"], backend="cocoapi")


def test_without_the_package_the_error_says_how_to_install_it():
    """In a Python where faster_coco_eval cannot be imported, choosing it is a one-line error;
    the default backend still works."""
    script = textwrap.dedent("""
        import sys
        sys.modules["faster_coco_eval"] = None  # import faster_coco_eval now raises ImportError
        from tasks.store.errors import QuantbenchError
        from tasks.score.evaluation import evaluate, ground_truth
        gt = ground_truth({"images": [{"id": 1, "width": 10, "height": 10}], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
        print(evaluate(gt, [], [1])["images"])
        try:
            evaluate(gt, [], [1], backend="faster-coco-eval")
        except QuantbenchError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "1",
        ("the faster-coco-eval evaluation backend needs the faster-coco-eval package, which is not installed here: "
         "pip install 'quantbench[fast-eval]' (or use the default backend, pycocotools)"),
    ]


def test_the_backend_benchmark_runs_on_a_few_images():
    """bench/evaluation.py on 20 synthetic images (5000 by default: minutes)."""
    from bench.evaluation import compare_backends

    rows = compare_backends(images=20)
    assert [row["iou_type"] for row in rows] == ["bbox", "segm"]
    for row in rows:
        assert row["images"] == 20 and row["detections"] == 20 * 100
        assert row["pycocotools_s"] > 0 and row["faster_coco_eval_s"] > 0 and isinstance(row["identical"], bool)
