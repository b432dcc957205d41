"""Instance masks: box-relative TF OD API masks → image masks → COCO RLE → segm evaluation.

Hand-computed reframing cases in both sampling conventions, equality with TensorFlow's own
``reframe_box_masks_to_image_masks`` arithmetic, the mask oracle on the real coco-mini annotations
(AP = 1.0 exactly, see tests/mask_oracle.py for why it is exact) and on synthetic shapes, RLE/JSON
sanity, and the segm evaluation details (mask areas, empty results, evaluate_all/evaluate_task).
"""
import contextlib
import io
import json
import time

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from tasks.data.coco_format import coco_to_od_api_boxes, od_api_to_coco
from tasks.score.evaluation import evaluate, evaluate_all, ground_truth
from tasks.score.steps import evaluate_task
from tasks.data.masks import encode_rle, reframe_box_masks
from tests.mask_oracle import ground_truth_as_mask_model_outputs, ground_truth_mask_detections

BOTH = pytest.mark.parametrize("align_corners", [True, False], ids=["tf", "half_pixel"])


def _filled(height, width, rows, cols):
    out = np.zeros((height, width), np.uint8)
    out[rows, cols] = 1
    return out


# --- reframe_box_masks on hand-computed cases -------------------------------------------------


@BOTH
def test_full_box_mask_fills_the_box(align_corners):
    # 8 rows x 10 cols; box y in [0.25, 0.75], x in [0.2, 0.6].
    # tf: rows i/7 in range -> 2..5, cols j/9 -> 2..5; half-pixel: (i+.5)/8 -> 2..5, (j+.5)/10 -> 2..5.
    [mask] = reframe_box_masks(np.ones((1, 33, 33)), [[0.25, 0.2, 0.75, 0.6]], 8, 10, align_corners=align_corners)
    assert mask.dtype == np.uint8 and mask.shape == (8, 10)
    np.testing.assert_array_equal(mask, _filled(8, 10, slice(2, 6), slice(2, 6)))


@BOTH
def test_left_half_mask_fills_the_left_half_of_the_box(align_corners):
    # mh != mw: 3x4 mask, columns [1, 1, 0, 0]: value > 0.5 iff box-relative u < 0.5 (both conventions).
    # 6x12 image, box x in [0.25, 0.75] = pixels 3..8 (either convention), all rows; left half = 3..5.
    masks = np.tile([1.0, 1.0, 0.0, 0.0], (1, 3, 1))
    [mask] = reframe_box_masks(masks, [[0.0, 0.25, 1.0, 0.75]], 6, 12, align_corners=align_corners)
    np.testing.assert_array_equal(mask, _filled(6, 12, slice(0, 6), slice(3, 6)))


@pytest.mark.parametrize(
    "align_corners,cols,column_values",
    [
        # tf: rows i/4 -> v = (i/4 - .2)/.8 = .0625, .375, .6875, 1 -> cell v*(2-1) -> value 1 - cell.
        (True, slice(2, 6), [0.0, 0.9375, 0.625, 0.3125, 0.0]),
        # half-pixel: rows (i+.5)/5 -> v = .125, .375, .625, .875 -> cell 2v - .5 clamped = 0, .25, .75, 1.
        (False, slice(1, 6), [0.0, 1.0, 0.75, 0.25, 0.0]),
    ],
    ids=["tf", "half_pixel"],
)
def test_non_square_image_and_mask_values_by_hand(align_corners, cols, column_values):
    # 5x12 image, 2x5 mask (top row 1, bottom row 0), box y in [0.2, 1.0], x in [0.1, 0.5].
    # Columns inside: tf j/11 in [.1, .5] -> 2..5; half-pixel (j+.5)/12 in [.1, .5] -> 1..5.
    masks = np.array([[[1.0] * 5, [0.0] * 5]])
    box = [[0.2, 0.1, 1.0, 0.5]]
    [soft] = reframe_box_masks(masks, box, 5, 12, align_corners=align_corners, threshold=None)
    expected = np.zeros((5, 12), np.float32)
    expected[:, cols] = np.array(column_values)[:, None]
    np.testing.assert_allclose(soft, expected, atol=1e-6)
    [binary] = reframe_box_masks(masks, box, 5, 12, align_corners=align_corners)
    np.testing.assert_array_equal(binary, expected > 0.5)  # rows 1 and 2


@pytest.mark.parametrize("align_corners,values", [(True, [0, 0.25, 0.5, 0.75, 1]), (False, [0, 0.1, 0.5, 0.9, 1])], ids=["tf", "half_pixel"])
def test_bilinear_ramp_and_strict_threshold(align_corners, values):
    # 2x2 mask [0, 1] per row over the whole 3x5 image: tf samples u = j/4, half-pixel u = (j+.5)/5
    # at cell 2u - .5 (clamped). A value of exactly 0.5 is background (> 0.5, as the TF OD API).
    masks = np.array([[[0.0, 1.0], [0.0, 1.0]]])
    [soft] = reframe_box_masks(masks, [[0, 0, 1, 1]], 3, 5, align_corners=align_corners, threshold=None)
    np.testing.assert_allclose(soft, np.tile(values, (3, 1)), atol=1e-6)
    [binary] = reframe_box_masks(masks, [[0, 0, 1, 1]], 3, 5, align_corners=align_corners)
    np.testing.assert_array_equal(binary[0], [0, 0, 0, 1, 1])


@BOTH
def test_boxes_past_the_image_border_are_clipped_by_the_image_grid(align_corners):
    # Box [-0.5, 0.5] on both axes of a 4x6 image: its visible part is its bottom-right quarter,
    # rows 0..1 and cols 0..2 (tf: i/3, j/5 <= .5; half-pixel: (i+.5)/4, (j+.5)/6 <= .5).
    box = [[-0.5, -0.5, 0.5, 0.5]]
    [full] = reframe_box_masks(np.ones((1, 5, 7)), box, 4, 6, align_corners=align_corners)
    np.testing.assert_array_equal(full, _filled(4, 6, slice(0, 2), slice(0, 3)))
    # A left-half mask is entirely in the invisible half: nothing (clipping the box first would
    # wrongly paint the left half of the visible part).
    [left] = reframe_box_masks(np.tile([1.0, 1.0, 0.0, 0.0], (1, 4, 1)), box, 4, 6, align_corners=align_corners)
    assert not left.any()
    # A box wholly outside the image, and no boxes at all.
    assert not reframe_box_masks(np.ones((1, 3, 3)), [[1.2, 0.1, 1.5, 0.9]], 4, 6, align_corners=align_corners).any()
    assert reframe_box_masks(np.zeros((0, 33, 33)), np.zeros((0, 4)), 4, 6).shape == (0, 4, 6)


def test_the_conventions_differ_by_up_to_half_a_pixel_at_the_border():
    # Box y in [0.1, 0.35] on a 4-row image = pixel rows [0.4, 1.4]: pixel 0's centre (0.5) is in
    # the box, so half-pixel paints row 0; TF samples row i at i/3 and paints row 1 (1/3 = 0.333).
    tf = reframe_box_masks(np.ones((1, 2, 2)), [[0.1, 0.0, 0.35, 1.0]], 4, 1)
    half = reframe_box_masks(np.ones((1, 2, 2)), [[0.1, 0.0, 0.35, 1.0]], 4, 1, align_corners=False)
    assert tf[0, :, 0].tolist() == [0, 1, 0, 0]
    assert half[0, :, 0].tolist() == [1, 0, 0, 0]


def test_shape_errors():
    with pytest.raises(ValueError, match="one mask per box"):
        reframe_box_masks(np.ones((2, 3, 3)), np.zeros((3, 4)), 4, 4)
    with pytest.raises(ValueError, match="one mask per box"):
        reframe_box_masks(np.ones((3, 3)), np.zeros((1, 4)), 4, 4)


def test_same_values_as_tensorflow_reframe_box_masks_to_image_masks():
    """The TF OD API's ops.reframe_box_masks_to_image_masks (crop_and_resize of the box masks with
    the image corners expressed relative to each box), run by TensorFlow, vs ours."""
    tf = pytest.importorskip("tensorflow")

    def tf_reframe(box_masks, boxes, height, width):  # object_detection/utils/ops.py, verbatim logic
        ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
        box_h, box_w = tf.maximum(ymax - ymin, 1e-4), tf.maximum(xmax - xmin, 1e-4)
        corners = tf.stack([(0 - ymin) / box_h, (0 - xmin) / box_w, (1 - ymin) / box_h, (1 - xmin) / box_w], axis=1)
        crops = tf.image.crop_and_resize(
            box_masks[..., None], corners, tf.range(tf.shape(box_masks)[0]), [height, width], extrapolation_value=0
        )
        return crops[..., 0].numpy()

    rng = np.random.default_rng(1)
    for height, width, mh, mw in [(37, 53, 33, 33), (120, 31, 15, 7), (64, 64, 2, 3), (1, 9, 5, 5)]:
        n = 12
        low = rng.uniform(-0.3, 0.9, (n, 2))
        high = low + rng.uniform(0.02, 0.8, (n, 2))
        boxes = np.stack([low[:, 0], low[:, 1], high[:, 0], high[:, 1]], axis=1).astype(np.float32)
        masks = rng.uniform(0, 1, (n, mh, mw)).astype(np.float32)
        expected = tf_reframe(tf.constant(masks), tf.constant(boxes), height, width)
        soft = reframe_box_masks(masks, boxes, height, width, threshold=None)
        np.testing.assert_allclose(soft, expected, atol=2e-5)
        decided = np.abs(expected - 0.5) > 1e-4  # float32 rounding may only flip exact ties
        binary = reframe_box_masks(masks, boxes, height, width)
        np.testing.assert_array_equal(binary[decided], (expected > 0.5)[decided])
        assert (expected > 0).any()


def test_100_masks_on_a_1024_image_are_fast():
    rng = np.random.default_rng(2)
    n = 100
    low = rng.uniform(0, 0.5, (n, 2))
    high = low + rng.uniform(0.3, 0.5, (n, 2))  # large boxes: 300-1000 px a side
    boxes = np.stack([low[:, 0], low[:, 1], high[:, 0], high[:, 1]], axis=1)
    masks = rng.uniform(0, 1, (n, 33, 33)).astype(np.float32)
    started = time.perf_counter()
    image_masks = reframe_box_masks(masks, boxes, 1024, 1024)
    reframe_s = time.perf_counter() - started
    started = time.perf_counter()
    detections = od_api_to_coco(1, 1024, 1024, boxes, np.ones(n), np.ones(n), masks=masks)
    convert_s = time.perf_counter() - started
    assert image_masks.shape == (n, 1024, 1024) and len(detections) == n
    print(f"100 masks on 1024x1024: reframe {reframe_s:.3f} s, od_api_to_coco (reframe + RLE) {convert_s:.3f} s")
    assert reframe_s < 5 and convert_s < 5  # ~0.1 s each here; generous for shared CI machines


# --- RLE and the COCO conversion --------------------------------------------------------------


def test_encode_rle_round_trips_and_is_json():
    rng = np.random.default_rng(3)
    masks = (rng.uniform(size=(3, 17, 29)) > 0.6).astype(np.uint8)
    rles = encode_rle(masks)
    assert [r["size"] for r in rles] == [[17, 29]] * 3
    assert all(isinstance(r["counts"], str) for r in rles)
    json.dumps(rles)
    decoded = mask_utils.decode([{**r, "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(np.moveaxis(decoded, -1, 0), masks)
    # bool and 0/255 masks mean the same; one [H, W] mask is a list of one.
    assert encode_rle(masks.astype(bool)) == rles == encode_rle(masks * 255)
    assert encode_rle(masks[1]) == [rles[1]]


def test_od_api_to_coco_masks_follow_their_rows():
    """Masks are sliced by num_detections and filtered with their boxes; each mask is reframed
    with its own (unclipped) box; everything else is exactly what it is without masks."""
    boxes = np.array([
        [0.1, 0.1, 0.6, 0.5],   # kept
        [0.2, 0.2, 0.4, 0.4],   # score below min_score
        [1.1, 0.2, 1.3, 0.4],   # nothing left after clipping
        [-0.5, 0.5, 0.5, 1.5],  # kept: clipped box, mask reframed with the unclipped one
        [0.0, 0.0, 1.0, 1.0],   # padding past num_detections
    ])
    scores, classes = np.array([0.9, 0.2, 0.8, 0.7, 0.99]), np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    rng = np.random.default_rng(4)
    masks = rng.uniform(0, 1, (5, 9, 6)).astype(np.float32)
    without = od_api_to_coco(3, 40, 30, boxes, scores, classes, num_detections=4, min_score=0.5)
    with_masks = od_api_to_coco(3, 40, 30, boxes, scores, classes, num_detections=4, min_score=0.5, masks=masks)
    assert [d["category_id"] for d in with_masks] == [1, 4]
    assert [{k: v for k, v in d.items() if k != "segmentation"} for d in with_masks] == without
    expected = encode_rle(reframe_box_masks(masks[[0, 3]], boxes[[0, 3]], 30, 40))
    assert [d["segmentation"] for d in with_masks] == expected
    assert all(d["segmentation"]["size"] == [30, 40] for d in with_masks)
    # The half-pixel convention is the same plumbing with the other sampling.
    half = od_api_to_coco(3, 40, 30, boxes, scores, classes, num_detections=4, min_score=0.5, masks=masks, mask_align_corners=False)
    assert [d["segmentation"] for d in half] == encode_rle(reframe_box_masks(masks[[0, 3]], boxes[[0, 3]], 30, 40, align_corners=False))
    with pytest.raises(ValueError, match="3 masks for 4 detections"):
        od_api_to_coco(3, 40, 30, boxes, scores, classes, num_detections=4, masks=masks[:3])


def test_a_1024x1024_mask_detection_is_a_small_json_record():
    yy, xx = np.mgrid[0:33, 0:33]
    ring = ((yy - 16) ** 2 + (xx - 16) ** 2 < 15**2) & ((yy - 16) ** 2 + (xx - 16) ** 2 > 6**2)
    [detection] = od_api_to_coco(5, 1024, 1024, np.array([[0.02, 0.03, 0.97, 0.99]]), np.array([0.9]), np.array([1.0]),
                                 masks=ring[None].astype(np.float32))
    assert isinstance(detection["segmentation"]["counts"], str)
    assert detection["segmentation"]["size"] == [1024, 1024]
    text = json.dumps(detection)
    assert len(text) < 4000, len(text)  # ~2 kB: RLE, not a polygon or a bitmap
    area = mask_utils.area({**detection["segmentation"], "counts": detection["segmentation"]["counts"].encode()})
    assert 0.5e6 < area < 0.7e6  # the ring covers ~60 % of the box


# --- the mask oracle on real COCO annotations -------------------------------------------------


@pytest.fixture(scope="module")
def coco_mini_gt(coco_mini):
    document = json.loads((coco_mini / "instances_train2017_subset.json").read_text())
    return document, ground_truth(document)


def test_oracle_masks_reframe_to_every_coco_mini_annotation_pixel_for_pixel(coco_mini_gt):
    """Polygons (multi-part ones too) and crowd RLEs: box-relative oracle masks → reframe_box_masks
    (half-pixel) gives back pycocotools' annToMask bit for bit."""
    document, gt = coco_mini_gt
    checked = 0
    for image in document["images"]:
        out = ground_truth_as_mask_model_outputs(gt, image, include_crowd=True)
        n = out["num_detections"]
        back = reframe_box_masks(out["detection_masks"][:n], out["detection_boxes"][:n], image["height"], image["width"], align_corners=False)
        np.testing.assert_array_equal(back, out["image_masks"], err_msg=f"image {image['id']}")
        checked += n
    assert checked == len(document["annotations"]) == 1444


def test_ground_truth_masks_through_the_conversion_score_ap_1(coco_mini_gt):
    document, gt = coco_mini_gt
    crowd = [a for a in document["annotations"] if a["iscrowd"]]
    assert crowd and all(isinstance(a["segmentation"], dict) for a in crowd)  # crowd RLE regions in the GT
    assert all(isinstance(a["segmentation"], list) for a in document["annotations"] if not a["iscrowd"])  # polygons
    detections = ground_truth_mask_detections(gt)
    assert len(detections) == len(document["annotations"]) - len(crowd)
    assert all(d["segmentation"]["size"] == [gt.imgs[d["image_id"]]["height"], gt.imgs[d["image_id"]]["width"]] for d in detections)
    results = evaluate_all(gt, detections, [i["id"] for i in document["images"]])
    for iou_type in ("segm", "bbox"):
        stats = results[iou_type]["stats"]
        assert stats["AP"] == 1.0, (iou_type, stats)
        assert stats["AP50"] == stats["AP75"] == stats["AR100"] == 1.0, (iou_type, stats)
        assert stats["APs"] == stats["APm"] == stats["APl"] == 1.0, (iou_type, stats)


def test_tf_trained_masks_need_the_tf_convention(coco_mini_gt):
    """Box masks made the way the TF OD API makes its Mask R-CNN training targets
    (``crop_and_resize`` of the ground-truth image masks to 33x33 with the normalised boxes): the
    default (TF) reframing recovers them (AP ~0.98, the 33x33 ceiling); the half-pixel convention
    loses ~9 AP points on the same masks. This is why ``align_corners=True`` is the default."""
    tf = pytest.importorskip("tensorflow")
    document, gt = coco_mini_gt
    image_ids = sorted(gt.imgs)[:40]
    detections = {True: [], False: []}
    for image_id in image_ids:
        image = gt.imgs[image_id]
        annotations = [a for a in gt.imgToAnns[image_id] if not a["iscrowd"]]
        if not annotations:
            continue
        boxes = coco_to_od_api_boxes([a["bbox"] for a in annotations], image["width"], image["height"]).astype(np.float32)
        image_masks = np.stack([gt.annToMask(a) for a in annotations]).astype(np.float32)[..., None]
        targets = tf.image.crop_and_resize(image_masks, boxes, tf.range(len(annotations)), [33, 33])[..., 0].numpy()
        for align_corners in (True, False):
            detections[align_corners] += od_api_to_coco(
                image_id, image["width"], image["height"], boxes, np.linspace(1, 0.5, len(annotations)),
                np.array([a["category_id"] for a in annotations], np.float32), masks=targets, mask_align_corners=align_corners,
            )
    tf_ap = evaluate(gt, detections[True], image_ids, "segm")["stats"]["AP"]
    half_pixel_ap = evaluate(gt, detections[False], image_ids, "segm")["stats"]["AP"]
    print(f"TF-style 33x33 targets, segm AP: tf convention {tf_ap:.4f}, half-pixel {half_pixel_ap:.4f}")
    assert tf_ap > 0.97
    assert tf_ap - half_pixel_ap > 0.05


# --- the mask oracle on synthetic shapes ------------------------------------------------------


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO crowd style: ``counts`` a list of run lengths, column-major, starting with zeros."""
    flat = mask.flatten(order="F").astype(bool)
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": [0] + runs if flat[0] else runs}


def _polygon_annotation(id_, image_id, category_id, polygons):
    xs = [x for p in polygons for x in p[0::2]]
    ys = [y for p in polygons for y in p[1::2]]
    bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return {"id": id_, "image_id": image_id, "category_id": category_id, "segmentation": polygons, "bbox": bbox,
            "area": bbox[2] * bbox[3] / 2, "iscrowd": 0}


def _rle_annotation(id_, image_id, category_id, mask, iscrowd):
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    segmentation = _uncompressed_rle(mask) if iscrowd else {"size": list(mask.shape), "counts": compressed["counts"].decode()}
    return {"id": id_, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
            "bbox": mask_utils.toBbox(compressed).tolist(), "area": float(mask_utils.area(compressed)), "iscrowd": iscrowd}


@pytest.fixture(scope="module")
def synthetic():
    """Non-square images: a two-part polygon instance, a ring with a hole (non-crowd compressed
    RLE), a thin diagonal sliver, a crowd region (uncompressed RLE), a tiny instance, an empty image."""
    yy, xx = np.mgrid[0:45, 0:61]
    radius2 = (yy - 26) ** 2 + (xx - 38) ** 2
    ring = (radius2 <= 12**2) & (radius2 > 5**2)
    crowd = np.zeros((45, 61), bool)
    crowd[30:45, 0:16] = True
    annotations = [
        _polygon_annotation(1, 1, 1, [[3.2, 4.1, 20.7, 6.3, 8.4, 19.9], [30.5, 2.5, 40.25, 2.5, 40.25, 11.75, 30.5, 11.75]]),
        _rle_annotation(2, 1, 2, ring, iscrowd=0),
        _polygon_annotation(3, 1, 1, [[2.0, 43.0, 5.5, 43.0, 58.0, 2.0, 55.5, 2.0]]),
        _rle_annotation(4, 1, 2, crowd, iscrowd=1),
        _polygon_annotation(5, 3, 3, [[10.3, 80.7, 60.0, 12.2, 120.9, 50.5, 70.0, 90.1], [100.0, 85.0, 126.5, 85.0, 126.5, 95.5]]),
        _polygon_annotation(6, 3, 3, [[20.4, 20.6, 23.1, 20.6, 23.1, 23.3]]),
    ]
    document = {
        "images": [{"id": 1, "file_name": "1.png", "width": 61, "height": 45}, {"id": 2, "file_name": "2.png", "width": 20, "height": 30},
                   {"id": 3, "file_name": "3.png", "width": 128, "height": 96}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "shape"}, {"id": 2, "name": "ring"}, {"id": 3, "name": "blob"}],
    }
    return document, ground_truth(document)


def test_synthetic_shapes_round_trip_exactly_and_score_ap_1(synthetic):
    document, gt = synthetic
    for image in document["images"]:
        out = ground_truth_as_mask_model_outputs(gt, image, include_crowd=True)
        n = out["num_detections"]
        back = reframe_box_masks(out["detection_masks"][:n], out["detection_boxes"][:n], image["height"], image["width"], align_corners=False)
        np.testing.assert_array_equal(back, out["image_masks"])
    assert gt.annToMask(gt.anns[2])[26, 38] == 0  # the hole is a hole
    detections = ground_truth_mask_detections(gt)
    assert len(detections) == 5
    results = evaluate_all(gt, detections, [1, 2, 3])
    assert results["segm"]["stats"]["AP"] == results["bbox"]["stats"]["AP"] == 1.0
    # pycocotools' precision is tp / (tp + fp + np.spacing(1)): with a single instance ("ring")
    # the best possible value is 1 / (1 + eps) = 1 - 2.2e-16, not 1.0.
    assert results["segm"]["per_category_AP"] == {"shape": 1.0, "ring": 1 / (1 + np.spacing(1)), "blob": 1.0}


def test_a_mirrored_mask_would_be_caught(synthetic):
    """Same boxes, masks flipped left-right inside them: bbox AP stays 1, mask AP collapses."""
    _, gt = synthetic
    results = evaluate_all(gt, ground_truth_mask_detections(gt, mask_transform=lambda m: m[:, :, ::-1]), [1, 2, 3])
    assert results["bbox"]["stats"]["AP"] == 1.0
    assert results["segm"]["stats"]["AP"] < 0.7


# --- segm evaluation --------------------------------------------------------------------------


def test_no_detections_evaluate_to_zero_for_masks_too(synthetic):
    document, gt = synthetic
    result = evaluate(gt, [], [1, 2, 3], "segm")
    assert result["stats"]["AP"] == 0.0 and result["stats"]["AR100"] == 0.0
    assert set(result["per_category_AP"]) == {"shape", "ring", "blob"}
    assert set(evaluate_all(gt, [], [1, 2, 3])) == {"bbox"}
    assert evaluate_all(gt, [], [1, 2, 3], segm=True)["segm"] == result


def test_segm_uses_mask_areas_not_box_areas():
    """A false positive whose mask is small (a thin diagonal, < 32² px) but whose box is medium
    (80x80 px). pycocotools' loadRes would take the area from ``bbox`` and ignore it for APs;
    evaluate(..., "segm") passes results without ``bbox`` so the mask area counts, as it should."""
    square = np.zeros((100, 100), np.uint8)
    square[10:20, 10:20] = 1
    diagonal = np.zeros((100, 100), np.uint8)
    for i in range(80):
        diagonal[15 + i, 15 + i] = 1
    document = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [_rle_annotation(1, 1, 1, square, iscrowd=0)],
        "categories": [{"id": 1, "name": "thing"}],
    }
    gt = ground_truth(document)
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [15.0, 15.0, 80.0, 80.0], "score": 0.95, "segmentation": encode_rle(diagonal)[0]},
        {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 10.0, 10.0], "score": 0.9, "segmentation": encode_rle(square)[0]},
    ]
    stats = evaluate(gt, detections, [1], "segm")["stats"]
    naive = COCOeval(gt, gt.loadRes(json.loads(json.dumps(detections))), "segm")  # bbox kept: box areas
    with contextlib.redirect_stdout(io.StringIO()):
        naive.evaluate(), naive.accumulate(), naive.summarize()
    assert naive.stats[3] == pytest.approx(1.0)  # APs: the false positive was filed as "medium" and ignored
    assert stats["APs"] == pytest.approx(0.5)  # the false positive (ranked first) counts
    assert stats["AP"] == naive.stats[0] == pytest.approx(0.5)


def test_segm_needs_segmentations(synthetic):
    _, gt = synthetic
    box_only = {"image_id": 1, "category_id": 1, "bbox": [1.0, 1.0, 5.0, 5.0], "score": 0.5}
    with pytest.raises(ValueError, match="needs detections with a 'segmentation'"):
        evaluate(gt, [box_only], [1], "segm")
    with_mask = {**box_only, "segmentation": encode_rle(np.ones((45, 61), np.uint8))[0]}
    with pytest.raises(ValueError, match="only 1 of 2 detections"):
        evaluate_all(gt, [with_mask, box_only], [1])
    with pytest.raises(ValueError, match="iou_type"):
        evaluate(gt, [box_only], [1], "keypoints")
    # bbox evaluation ignores the masks: same numbers with or without them.
    assert evaluate(gt, [with_mask], [1]) == evaluate(gt, [box_only], [1])


def test_evaluate_task_adds_segm_only_for_mask_detections(synthetic, tmp_path):
    document, gt = synthetic
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(document))
    detections = ground_truth_mask_detections(gt)
    with_masks, boxes_only = tmp_path / "masks.json", tmp_path / "boxes.json"
    with_masks.write_text(json.dumps(detections))
    boxes_only.write_text(json.dumps([{k: v for k, v in d.items() if k != "segmentation"} for d in detections]))
    plain = evaluate_task.fn(str(annotations), str(boxes_only), [1, 2, 3])
    assert list(plain.pop("per_image")) == list(plain.pop("resampled")) == ["bbox"]
    assert set(plain.pop("process")) == {"wall_s", "peak_rss_mb"}
    assert plain == evaluate(gt, json.loads(boxes_only.read_text()), [1, 2, 3])  # unchanged shape and numbers
    assert set(plain) == {"stats", "per_category_AP", "images"}
    both = evaluate_task.fn(str(annotations), str(with_masks), [1, 2, 3])
    assert list(both.pop("per_image")) == list(both.pop("resampled")) == ["bbox", "segm"]
    both.pop("process")
    assert {k: v for k, v in both.items() if k != "segm"} == plain
    assert both["segm"]["stats"]["AP"] == 1.0 and set(both["segm"]) == {"stats", "per_category_AP", "images"}


def test_coco_to_od_api_boxes_stay_float64_for_the_oracle():
    # The oracle's exactness at bbox edges relies on float64 boxes (18 coco-mini instances have a
    # pixel centre exactly on the bbox edge); float32 boxes could move the edge past that centre.
    assert coco_to_od_api_boxes([[0.5, 1.5, 2.0, 3.0]], 7, 9).dtype == np.float64
