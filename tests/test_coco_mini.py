"""Real COCO images and annotations (../shared/coco-mini: 160 train2017 images, crowd included)."""
import json

import numpy as np

from demo import DEMO_MODEL_DIR
from tasks.data.coco_format import coco_to_od_api_boxes, od_api_to_coco
from tasks.data.dataset import load_dataset, make_shards
from tasks.score.evaluation import evaluate, ground_truth
from tasks.run.inference import ShardJob, infer_shard
from tasks.model.conversion import convert


def _ground_truth_as_model_outputs(document: dict) -> list[dict]:
    """Every non-crowd GT box as TF OD API outputs (normalised yxyx, float classes), converted back
    by the same function the inference task uses."""
    detections = []
    for image in document["images"]:
        gt = [a for a in document["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        boxes = coco_to_od_api_boxes([a["bbox"] for a in gt], image["width"], image["height"]).astype(np.float32)
        scores = np.linspace(1.0, 0.5, len(gt), dtype=np.float32)
        classes = np.array([a["category_id"] for a in gt], dtype=np.float32)
        detections += od_api_to_coco(image["id"], image["width"], image["height"], boxes, scores, classes, num_detections=len(gt))
    return detections


def test_ground_truth_through_the_conversion_scores_ap_1(coco_mini):
    document = json.loads((coco_mini / "instances_train2017_subset.json").read_text())
    assert sum(a["iscrowd"] for a in document["annotations"]) > 0  # crowd regions are part of the test
    detections = _ground_truth_as_model_outputs(document)
    result = evaluate(ground_truth(document), detections, [i["id"] for i in document["images"]])
    assert result["stats"]["AP"] == 1.0
    assert result["stats"]["AP50"] == result["stats"]["AP75"] == result["stats"]["AR100"] == 1.0


def test_demo_model_runs_over_every_coco_mini_image(coco_mini, tmp_path):
    """Real JPEGs (incl. grayscale ones) of many sizes, resized to the demo model's fixed input."""
    dataset = load_dataset(str(coco_mini / "instances_train2017_subset.json"), str(coco_mini / "train2017"))
    assert len(dataset.images) == 160
    model = tmp_path / "int8.tflite"
    model.write_bytes(convert(DEMO_MODEL_DIR, "int8"))
    store = tmp_path / "store"
    outputs = [
        infer_shard(ShardJob("int8", str(model), "demo", dataset.annotations_digest, dataset.images_url, shard, store.as_uri()))
        for shard in make_shards(dataset, 80)
    ]
    assert sum(o.images_done for o in outputs) == 160
    assert sum(o.images_failed for o in outputs) == 0
    assert sum(o.detections for o in outputs) > 0
