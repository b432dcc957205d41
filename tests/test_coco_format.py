"""The TF OD API → COCO conversion, on numbers worked out by hand."""
import numpy as np

from tasks.data.coco_format import coco_to_od_api_boxes, od_api_to_coco


def test_normalised_yxyx_becomes_pixel_xywh_of_the_original_image():
    # A 640x480 image; box from (x=64, y=48) to (x=320, y=240).
    boxes = np.array([[0.1, 0.1, 0.5, 0.5]])  # ymin, xmin, ymax, xmax
    [detection] = od_api_to_coco(7, 640, 480, boxes, np.array([0.9]), np.array([18.0]))
    assert detection == {"image_id": 7, "category_id": 18, "bbox": [64.0, 48.0, 256.0, 192.0], "score": 0.9}


def test_x_comes_from_xmin_and_y_from_ymin():
    # Asymmetric box: would land elsewhere if the axes were swapped.
    [detection] = od_api_to_coco(1, 200, 100, np.array([[0.2, 0.5, 0.6, 0.75]]), np.array([1.0]), np.array([1.0]))
    assert detection["bbox"] == [100.0, 20.0, 50.0, 40.0]


def test_num_detections_slices_padding_and_min_score_filters():
    boxes = np.array([[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4], [0.0, 0.0, 0.0, 0.0]])
    scores, classes = np.array([0.8, 0.2, 0.0]), np.array([1.0, 2.0, 0.0])
    assert [d["category_id"] for d in od_api_to_coco(1, 10, 10, boxes, scores, classes, num_detections=2)] == [1, 2]
    assert [d["category_id"] for d in od_api_to_coco(1, 10, 10, boxes, scores, classes, num_detections=2, min_score=0.5)] == [1]


def test_boxes_are_clipped_to_the_image_and_empty_ones_dropped():
    boxes = np.array([[-0.1, -0.2, 0.5, 1.3], [0.7, 0.7, 0.7, 0.9]])
    detections = od_api_to_coco(1, 100, 50, boxes, np.array([0.5, 0.5]), np.array([3.0, 3.0]))
    assert [d["bbox"] for d in detections] == [[0.0, 0.0, 100.0, 25.0]]


def test_round_trip_with_the_inverse():
    xywh = np.array([[10.5, 20.25, 30.0, 40.75], [0.0, 0.0, 333.0, 222.0]])
    back = od_api_to_coco(3, 333, 222, coco_to_od_api_boxes(xywh, 333, 222), np.ones(2), np.ones(2))
    np.testing.assert_allclose([d["bbox"] for d in back], xywh, atol=1e-3)


def test_classes_outside_the_dataset_are_counted_not_kept():
    from tasks.run.inference import keep_dataset_categories

    detections = [{"category_id": c, "score": 1.0} for c in (2, 5, 7, 7)]
    outside: dict[str, int] = {}
    kept = keep_dataset_categories(detections, None, (2, 5, 90), outside)
    assert [d["category_id"] for d in kept] == [2, 5] and outside == {"7": 2}


def test_index0_classes_map_to_sorted_category_ids():
    from tasks.run.inference import keep_dataset_categories

    detections = [{"category_id": c, "score": 1.0} for c in (0, 2, 3, 1)]
    outside: dict[str, int] = {}
    kept = keep_dataset_categories(detections, (2, 5, 90), (2, 5, 90), outside)
    assert [d["category_id"] for d in kept] == [2, 90, 5] and outside == {"3": 1}
