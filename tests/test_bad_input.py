"""Bad input: a clear one-line error naming the input, or — for a bad image — a recorded failure
while the run goes on."""
import io
import json
import shutil
from urllib.parse import urlparse

import pytest
from PIL import Image

from flows.benchmark import BenchmarkConfig, benchmark
from flows.cli import main


def _cli_error(capsys, *args) -> str:
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_missing_annotations_file(capsys, oracle_models, tmp_path):
    missing = tmp_path / "nope" / "instances_val2017.json"
    error = _cli_error(capsys, "--model", str(oracle_models["fixed"]), "--annotations", str(missing), "--images", str(tmp_path))
    assert error.startswith("error: annotations file not found:") and str(missing) in error


def test_annotations_that_are_not_coco(capsys, oracle_models, tmp_path):
    bad = tmp_path / "instances.json"
    bad.write_text(json.dumps({"images": [{"id": 1}]}))
    error = _cli_error(capsys, "--model", str(oracle_models["fixed"]), "--annotations", str(bad), "--images", str(tmp_path))
    assert str(bad) in error and "COCO instances JSON" in error


def test_missing_image_folder(capsys, oracle_data, oracle_models, tmp_path):
    error = _cli_error(capsys, "--model", str(oracle_models["fixed"]), "--annotations", str(oracle_data), "--images", str(tmp_path / "no-such-dir"))
    assert "image folder not found" in error and "no-such-dir" in error


def test_model_dir_that_is_not_a_saved_model(capsys, tmp_path):
    error = _cli_error(capsys, "--model", str(tmp_path))
    assert f"no TensorFlow SavedModel in {tmp_path}: no saved_model.pb" in error


def test_model_without_serving_signature(capsys, tmp_path):
    import tensorflow as tf

    class NoServing(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.uint8)])
        def detect(self, images):
            return {"detection_boxes": tf.zeros([1, 1, 4])}

    module = NoServing()
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"detect": module.detect})
    error = _cli_error(capsys, "--model", str(tmp_path / "m"))
    assert "no 'serving_default' serving signature" in error and "detect" in error and str(tmp_path / "m") in error


def test_half_a_dataset_is_refused(capsys, oracle_data):
    error = _cli_error(capsys, "--annotations", str(oracle_data))
    assert "give both annotations and images" in error


def test_missing_and_corrupt_images_are_recorded_and_the_run_goes_on(prefect_backend, oracle_data, oracle_models, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(oracle_data.parent, images)
    document = json.loads(oracle_data.read_text())
    first, second = sorted(document["images"], key=lambda i: i["id"])[:2]
    (images / first["file_name"]).unlink()
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(jpeg, "JPEG")
    (images / second["file_name"]).write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])  # truncated
    config = BenchmarkConfig(
        model=str(oracle_models["dynamic"]), annotations=str(oracle_data), images=str(images),
        variants=["float32"], shard_size=4, latency_images=3, store=str(tmp_path / "store"),
    )
    report = json.loads(open(urlparse(benchmark(config)).path).read())
    [entry] = report["variants"]
    assert entry["images"] == 6 and entry["failed_images"] == 2
    reasons = {f["image_id"]: f["reason"] for f in entry["failures"]}
    assert "not found" in reasons[first["id"]] and first["file_name"] in reasons[first["id"]]
    assert "truncated" in reasons[second["id"]].lower() or "OSError" in reasons[second["id"]]
    assert entry["bbox"]["AP"] == 1.0  # the 6 good images, evaluated as such
    report_md = (tmp_path / "store" / "runs" / report["run_id"] / "report.md").read_text()
    assert f"image {first['id']}" in report_md and f"image {second['id']}" in report_md
