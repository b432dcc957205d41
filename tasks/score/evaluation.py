"""Evaluation: COCO mAP of a variant's detections with pycocotools ``COCOeval`` (bbox, and segm
when the detections carry ``segmentation`` RLEs from a mask model).

Only the images the variant actually processed are evaluated (``params.imgIds``); images that
failed to decode are listed in the report instead of counting as misses. An empty detection list
is evaluated as such (AP 0 where there is ground truth) instead of crashing ``loadRes``.

Each IoU type sees only its own geometry: ``COCO.loadRes`` takes a result's ``area`` (which decides
small/medium/large and so which unmatched detections are ignored per area range) from ``bbox``
whenever a result has one, even when evaluating masks. So for ``segm`` the results are passed
without ``bbox`` (area = mask area, box = the mask's bounding box, as detectron2 does), and for
``bbox`` without ``segmentation`` (same numbers as before, minus copying the RLEs).

Two evaluation backends (``EVAL_BACKENDS``): ``pycocotools`` (the reference, the default) and
``faster-coco-eval`` (the optional extra ``quantbench[fast-eval]``: the same matching and
accumulation in C++, several times faster). Both get the same results from :func:`_results` and
give the same per-image matching, recalls and scores (tests/test_eval_backends.py). Precision
differs in one place only: pycocotools computes ``tp / (tp + fp + np.spacing(1))``, faster-coco-eval
``tp / (tp + fp)``, equal except at ``tp = 1, fp = 0``: a category whose top-ranked detection is a
true positive and the next one is not has precision 1 - 2**-52 in pycocotools, 1.0 in
faster-coco-eval, at the recalls that detection reaches. So an AP can differ in its last bit
(~1e-16); nothing larger.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.store.errors import QuantbenchError
from tasks.score.matching import per_image_from_evaluator

logger = logging.getLogger(__name__)

# COCOeval.stats, in order (maxDets 100 unless named otherwise).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


EVAL_BACKENDS = ("pycocotools", "faster-coco-eval")


def _check_backend(backend: str) -> None:
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"backend must be one of {EVAL_BACKENDS}, not {backend!r}")


def require_backend(backend: str) -> None:
    """Fail with one line when ``backend``'s package is not installed (before any work is done)."""
    _check_backend(backend)
    if backend == "faster-coco-eval":
        _faster_coco_eval()


def _faster_coco_eval():
    """The ``faster_coco_eval`` module, or a one-line error saying how to install it."""
    try:
        import faster_coco_eval
    except ImportError:
        raise QuantbenchError(
            "the faster-coco-eval evaluation backend needs the faster-coco-eval package, which is not installed here: "
            "pip install 'quantbench[fast-eval]' (or use the default backend, pycocotools)"
        ) from None
    return faster_coco_eval


def backend_ground_truth(gt, backend: str = "pycocotools"):
    """``gt`` as the backend's own ``COCO`` object (``gt`` itself when it already is one).

    A pycocotools ``gt`` becomes a faster-coco-eval ``COCO`` over a deep copy of its dataset, so
    that neither backend sees the other's in-place additions to the annotations."""
    _check_backend(backend)
    if backend == "pycocotools":
        if not isinstance(gt, COCO):
            raise TypeError(f"the pycocotools backend needs a pycocotools COCO ground truth, not {type(gt).__name__}")
        return gt
    return gt if isinstance(gt, _faster_coco_eval().COCO) else ground_truth(gt.dataset, backend)


def ground_truth(document: dict, backend: str = "pycocotools", owned: bool = False):
    """The annotations ``document`` as ``backend``'s ``COCO``: over a deep copy (evaluation adds to
    it), or over ``document`` itself when the caller ``owned`` it (read for this evaluation only)."""
    _check_backend(backend)
    coco = COCO() if backend == "pycocotools" else _faster_coco_eval().COCO()
    coco.dataset = document if owned else copy.deepcopy(document)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


IOU_TYPES = ("bbox", "segm")


def has_segmentation(detections: list[dict]) -> bool:
    """Whether the detections carry ``segmentation`` (all of them, or none: mixed lists are refused)."""
    with_masks = sum("segmentation" in d for d in detections)
    if 0 < with_masks < len(detections):
        raise ValueError(f"only {with_masks} of {len(detections)} detections have a segmentation")
    return with_masks > 0


def _results(gt, detections: list[dict], iou_type: str = "bbox", owned: bool = False):
    """The detections as a results ``COCO`` of ``gt``'s own class (pycocotools' or
    faster-coco-eval's), each IoU type with only its own geometry (see the module docstring).

    ``loadRes`` adds keys to each detection dict (``id``, ``area``, ``iscrowd``; for boxes a
    polygon ``segmentation``) and changes nothing nested in it, so it gets a new dict per
    detection, or, when the caller ``owned`` the list and its dicts carry no other geometry,
    the dicts themselves (the detections of one evaluation read from the store: no second copy)."""
    if detections:
        other = "bbox" if iou_type == "segm" else "segmentation"
        if iou_type == "segm" and not has_segmentation(detections):
            raise ValueError("segm evaluation needs detections with a 'segmentation' (RLE)")
        if owned and not any(other in d for d in detections):
            own = detections
        elif iou_type == "segm":
            own = [{k: v for k, v in d.items() if k != "bbox"} for d in detections]
        else:
            own = [{k: v for k, v in d.items() if k != "segmentation"} if "bbox" in d else dict(d) for d in detections]
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(own)
    empty = type(gt)()
    empty.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def defined(value: float) -> float | None:
    """A COCOeval number, or None where COCO defines none (its -1 sentinel): never compute with -1."""
    return float(value) if value > -1 else None


def make_evaluator(gt, detections: list[dict], image_ids: list[int], iou_type: str = "bbox", backend: str = "pycocotools",
                   per_image: bool = False, owned: bool = False):
    """A COCOeval of ``backend`` for ``detections`` on ``image_ids``, not yet run (:func:`run_evaluator`).

    ``gt`` is a pycocotools ``COCO`` (:func:`ground_truth`) or already the backend's own
    (:func:`backend_ground_truth`). faster-coco-eval keeps its per-image matching only when
    ``per_image`` (``separate_eval``: evaluate, then accumulate, as pycocotools does; without it
    the two are one C++ call). ``owned``: see :func:`_results`."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, not {iou_type!r}")
    gt = backend_ground_truth(gt, backend)
    results = _results(gt, detections, iou_type, owned)
    if backend == "pycocotools":
        evaluator = COCOeval(gt, results, iou_type)
    else:
        evaluator = _faster_coco_eval().COCOeval_faster(gt, results, iou_type, print_function=logger.debug, separate_eval=per_image)
    evaluator.params.imgIds = sorted(image_ids)
    return evaluator


def run_evaluator(evaluator) -> None:
    """``evaluate()``, ``accumulate()``, ``summarize()``, printing nothing. Afterwards
    ``evaluator.stats`` holds the 12 numbers of :data:`STAT_NAMES` (-1 where undefined) and
    ``evaluator.eval["precision"]`` the precision array [IoU, recall, category, area, maxDets]."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()


def summary(evaluator) -> dict:
    """``{"stats": {name: value}, "per_category_AP": {category name: AP}}`` of an evaluator that
    has run (:func:`run_evaluator`); None where COCO defines no value (its -1)."""
    precision = evaluator.eval["precision"]  # [IoU, recall, category, area, maxDets]
    per_category = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_category[evaluator.cocoGt.cats[category_id]["name"]] = float(np.mean(values)) if values.size else None
    return {"stats": {name: defined(value) for name, value in zip(STAT_NAMES, evaluator.stats)}, "per_category_AP": per_category}


def evaluate(gt, detections: list[dict], image_ids: list[int], iou_type: str = "bbox", per_image: bool = False,
             backend: str = "pycocotools", owned: bool = False) -> dict:
    """The 12 COCO summary stats and per-category AP (IoU .5:.95, all areas, 100 dets).

    ``iou_type`` is ``"bbox"`` or ``"segm"`` (the detections' ``segmentation`` RLEs, judged with
    mask areas). Returns ``{"stats": {name: value}, "per_category_AP": {category name: AP},
    "images": n}``; a value is None where COCO defines none (pycocotools' -1: no ground truth in
    that area range or category), and every stat is None when no image was evaluated. With
    ``per_image``, also ``"per_image"``: the same evaluation's per-image matching
    (:class:`tasks.score.matching.PerImageEval`, None without images), for bootstrap CIs.
    ``backend`` is one of :data:`EVAL_BACKENDS` (``gt`` as for :func:`make_evaluator`): the same
    numbers, up to the last bit (see the module docstring). ``owned``: the caller hands over the
    detections (read for this evaluation only; see :func:`_results`).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, not {iou_type!r}")
    gt = backend_ground_truth(gt, backend)
    if not image_ids:
        return {"stats": dict.fromkeys(STAT_NAMES), "per_category_AP": {c["name"]: None for c in gt.dataset["categories"]}, "images": 0,
                **({"per_image": None} if per_image else {})}
    evaluator = make_evaluator(gt, detections, image_ids, iou_type, backend, per_image, owned)
    run_evaluator(evaluator)
    result = {**summary(evaluator), "images": len(image_ids)}
    if per_image:
        result["per_image"] = per_image_from_evaluator(evaluator)
    return result


def evaluate_all(gt, detections: list[dict], image_ids: list[int], segm: bool | None = None, per_image: bool = False,
                 backend: str = "pycocotools", owned: bool = False) -> dict:
    """``{"bbox": evaluate(..., "bbox"), "segm": evaluate(..., "segm")}``; ``"segm"`` is there when
    ``segm`` is true, or (``segm=None``) when the detections carry segmentations. Pass ``segm=True``
    for a mask model so that a run with no detections at all still reports (zero) mask AP.
    ``backend`` and ``owned`` as for :func:`evaluate` (the ground truth is converted to the backend once for both)."""
    if segm is None:
        segm = has_segmentation(detections)
    gt = backend_ground_truth(gt, backend)
    results = {"bbox": evaluate(gt, detections, image_ids, "bbox", per_image, backend, owned)}
    if segm:
        results["segm"] = evaluate(gt, detections, image_ids, "segm", per_image, backend, owned)
    return results
