"""Bad input: a clear one-line error naming the input, or — for a bad image — a recorded failure
while the run goes on."""
import io
import json
import shutil
import time
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from flows.benchmark import BenchmarkConfig, benchmark
from flows.cli import main


def _cli_error(capture, *args) -> str:
    """Run the CLI in-process: exit 2, exactly one line on stderr, no traceback anywhere."""
    assert main(["run", *args]) == 2
    out, err = capture.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    return err.strip()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_missing_annotations_file(capsys, oracle_models, tmp_path):
    missing = tmp_path / "nope" / "instances_val2017.json"
    error = _cli_error(capsys, "--model", str(oracle_models["fixed"]), "--annotations", str(missing), "--images", str(tmp_path))
    assert error.startswith("error: annotations file not found:") and str(missing) in error


def test_annotations_that_are_not_coco(capsys, oracle_models, tmp_path):
    bad = tmp_path / "instances.json"
    bad.write_text(json.dumps({"images": [{"id": 1}]}))
    error = _cli_error(capsys, "--model", str(oracle_models["fixed"]), "--annotations", str(bad), "--images", str(tmp_path))
    assert error == f"error: {bad}: $.images[0].file_name is missing (must be a non-empty string): fix the annotations"


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


def test_corrupt_saved_model_pb(capfd, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "saved_model.pb").write_bytes(np.random.default_rng(0).bytes(4096))
    error = _cli_error(capfd, "--model", str(tmp_path / "model"))
    assert error.startswith(f"error: {tmp_path / 'model' / 'saved_model.pb'} is not a valid SavedModel"), error


def test_random_bytes_as_tflite_with_quantizer_variants(capfd, oracle_data, tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(np.random.default_rng(1).bytes(1 << 16))
    error = _cli_error(capfd, "--model", str(model), "--variants", "float32", "weight_only_wi8_afp32",
                       "--annotations", str(oracle_data), "--images", str(oracle_data.parent), "--store", str(tmp_path / "store"))
    assert error.startswith(f"error: {model} is not a valid .tflite model"), error


def test_empty_model_folder(capfd, tmp_path):
    (tmp_path / "empty").mkdir()
    error = _cli_error(capfd, "--model", str(tmp_path / "empty"))
    assert "no saved_model.pb" in error and str(tmp_path / "empty") in error


def test_a_folder_given_as_annotations(capfd, oracle_data, oracle_models):
    error = _cli_error(capfd, "--model", str(oracle_models["fixed"]), "--annotations", str(oracle_data.parent),
                       "--images", str(oracle_data.parent))
    assert error == f"error: --annotations {oracle_data.parent} is a folder: pass the COCO instances JSON file (e.g. instances_val2017.json)"


def test_a_missing_bucket_is_refused_up_front_even_where_a_put_would_create_it(capfd, s3_env, oracle_data, oracle_models):
    import boto3
    from botocore.exceptions import ClientError

    started = time.monotonic()
    error = _cli_error(capfd, "--model", str(oracle_models["fixed"]), "--annotations", str(oracle_data),
                       "--images", str(oracle_data.parent), "--store", "s3://missing-bucket-8/results")
    assert time.monotonic() - started < 30
    assert error.startswith("error: bucket does not exist: s3://missing-bucket-8"), error
    client = boto3.client("s3", endpoint_url=s3_env.endpoint_url)
    with pytest.raises(ClientError):  # SeaweedFS creates a bucket on the first PUT: none was made
        client.head_bucket(Bucket="missing-bucket-8")


def test_an_unreachable_store_fails_up_front_in_seconds(capfd, s3_env, monkeypatch, oracle_data, oracle_models):
    port = _closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    error = _cli_error(capfd, "--model", str(oracle_models["fixed"]), "--annotations", str(oracle_data),
                       "--images", str(oracle_data.parent), "--store", "s3://quantbench/x")
    assert time.monotonic() - started < 10
    assert error.startswith(f"error: cannot reach S3 at http://127.0.0.1:{port} for s3://quantbench/x"), error
    assert s3_env.secret_key not in error


def test_calibration_copies_of_evaluation_images_are_refused_by_content(capfd, oracle_data, oracle_models, tmp_path):
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for k, image in enumerate(sorted(oracle_data.parent.glob("*.png"))[:3]):
        shutil.copy(image, calibration / f"calib-{k}.png")  # other names, other folder, same content
    error = _cli_error(capfd, "--model", str(oracle_models["fixed"]), "--annotations", str(oracle_data),
                       "--images", str(oracle_data.parent), "--variants", "float32", "int8_full",
                       "--calibration-images", str(calibration), "--store", str(tmp_path / "store"))
    assert "calibration images overlap the evaluation images: calib-0.png" in error and "img" in error


def test_empty_and_unreadable_image_files_have_readable_reasons():
    from tasks.data.dataset import decode_rgb
    from tasks.store.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="^empty file$"):
        decode_rgb(b"")
    with pytest.raises(ImageDecodeError) as raised:
        decode_rgb(b"this is not an image")
    assert "object at 0x" not in str(raised.value) and "not an image" in str(raised.value)


def test_a_variant_with_no_evaluated_image_fails_the_run_without_a_report(capfd, prefect_backend, oracle_data, oracle_models, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(oracle_data.parent, images)
    for image in images.glob("*.png"):
        image.write_bytes(b"")
    calibration = tmp_path / "calibration"  # readable images elsewhere, so only the evaluation fails
    calibration.mkdir()
    Image.new("RGB", (64, 48), "blue").save(calibration / "blue.png")
    store = tmp_path / "store"
    assert main(["run", "--model", str(oracle_models["fixed"]), "--annotations", str(oracle_data), "--images", str(images),
                 "--variants", "float32", "--latency-images", "3", "--calibration-images", str(calibration),
                 "--store", str(store)]) == 2
    out, err = capfd.readouterr()
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: float32: none of the 8 images could be evaluated") and "empty file" in last, last
    assert "Traceback" not in out + err
    assert not list(store.glob("runs/*/report.json"))
    no_calibration = ["run", "--model", str(oracle_models["fixed"]), "--annotations", str(oracle_data), "--images", str(images),
                      "--variants", "float32", "--store", str(store)]
    assert main(no_calibration) == 2  # then the comparison batch finds no readable image first
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: none of the 8 images in {images} can be read and decoded") and "empty file" in last, last


def test_undefined_ap_gives_undefined_deltas_never_a_sentinel():
    from tasks.score.evaluation import evaluate, ground_truth
    from tasks.publish.report import difference, format_table

    document = {"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}], "annotations": [],
                "categories": [{"id": 1, "name": "thing"}]}
    nothing = evaluate(ground_truth(document), [], [])
    assert set(nothing["stats"].values()) == {None} and nothing["images"] == 0
    no_ground_truth = evaluate(ground_truth(document), [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5}], [1])
    assert no_ground_truth["stats"]["AP"] is None  # pycocotools says -1: no ground truth at all
    assert difference(0.5, None) is None and difference(None, 0.5) is None and difference(0.5, 0.25) == 0.25
    import pandas as pd

    table = format_table(pd.DataFrame([{"variant": "int8", "AP": 0.5, "dAP_vs_fp32": difference(0.5, None)}]))
    assert "n/a" in table and "+1.0000" not in table


def test_half_a_dataset_fails_a_flow_run_at_its_start(prefect_backend, oracle_data):
    """As a deployment run from the UI would: parameter validation fails before any task runs."""
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="give both annotations and images, or neither"):
        benchmark({"annotations": str(oracle_data)})


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
    Image.new("RGB", (second["width"], second["height"]), "red").save(jpeg, "JPEG")  # the annotation's size: only truncated
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
