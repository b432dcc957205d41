"""Model pinning (``quantbench run --model-sha256``): a SavedModel is a program, so a model whose
digest is not the pinned one is refused before anything loads, converts or runs it, and before
anything reaches the results store; a plain http:// model must be pinned."""
import json
import re
import socket
from pathlib import Path

import pytest

import flows.benchmark
from flows.cli import main
from tasks.model.sources import PinMismatch
from tasks.model.variants import directory_digest


def _one_error_line(capture) -> str:
    out, err = capture.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    return err.strip()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def malicious_model(tmp_path_factory) -> tuple[Path, Path]:
    """(a SavedModel whose serving signature writes a file, that file's path): an OD API-shaped
    detector that passes quantbench's checks and calls ``tf.io.write_file`` when run."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("malicious")
    written = root / "written-by-the-model.txt"

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 96, 160, 3], tf.uint8)])
        def serve(self, images):
            with tf.control_dependencies([tf.io.write_file(str(written), "the model ran")]):
                boxes = tf.zeros([1, 1, 4]) + tf.reduce_mean(tf.cast(images, tf.float32)) * 0
            return {"detection_boxes": boxes, "detection_scores": tf.ones([1, 1]), "detection_classes": tf.ones([1, 1])}

    module = Writer()
    tf.saved_model.save(module, str(root / "model"), signatures={"serving_default": module.serve})
    return root / "model", written


def test_the_malicious_fixture_writes_its_file_when_run(malicious_model):
    """What a pin guards against: running the model's signature writes a file of its choosing."""
    import tensorflow as tf

    model, written = malicious_model
    tf.saved_model.load(str(model)).signatures["serving_default"](tf.zeros([1, 96, 160, 3], tf.uint8))
    assert written.read_text() == "the model ran"
    written.unlink()


def test_a_model_that_is_not_the_pinned_one_is_never_loaded(capfd, monkeypatch, malicious_model, oracle_data, oracle_models, tmp_path):
    model, written = malicious_model
    loaded, parse = [], flows.benchmark.model_io  # the first step that parses a model: recorded, then run
    monkeypatch.setattr(flows.benchmark, "model_io", lambda resolved: loaded.append(resolved) or parse(resolved))
    benign = directory_digest(oracle_models["fixed"])
    store = tmp_path / "store"
    assert main(["run", "--model", str(model), "--model-sha256", benign, "--annotations", str(oracle_data),
                 "--images", str(oracle_data.parent), "--variants", "saved_model", "float32", "--store", str(store)]) == 2
    assert _one_error_line(capfd) == (
        f"error: model {model} does not match --model-sha256: expected {benign}, got {directory_digest(model)}; nothing was "
        "loaded or run (check the source, or pin the digest 'quantbench digest --model' prints for a model you trust)"
    )
    assert loaded == [] and not written.exists()
    assert [p for p in store.rglob("*")] == []  # no converted model, no shard, no report


def test_a_flow_run_pinned_to_another_model_never_runs_it(prefect_backend, malicious_model, oracle_data, oracle_models, tmp_path):
    """The flow parameter, as a deployment or the UI sets it: refused at the inputs stage."""
    model, written = malicious_model
    benign = directory_digest(oracle_models["fixed"])
    config = flows.benchmark.BenchmarkConfig(model=str(model), model_sha256=benign, annotations=str(oracle_data),
                                             images=str(oracle_data.parent), variants=["saved_model"], latency_images=2,
                                             store=str(tmp_path / "store"))
    with pytest.raises(PinMismatch, match=re.escape(f"expected {benign}, got {directory_digest(model)};")):
        flows.benchmark.benchmark(config)
    assert not written.exists()
    assert [p for p in (tmp_path / "store").rglob("*")] == []


def test_the_pinned_model_runs_and_its_report_gives_the_digest(capfd, prefect_backend, oracle_data, oracle_models, tmp_path):
    model = oracle_models["fixed"]
    assert main(["digest", "--model", str(model)]) == 0
    digest = directory_digest(model)
    assert capfd.readouterr().out == f"{digest}  saved_model {model}\n"
    store = tmp_path / "store"
    assert main(["run", "--model", str(model), "--model-sha256", digest.upper(), "--annotations", str(oracle_data),
                 "--images", str(oracle_data.parent), "--variants", "float32", "--latency-images", "2", "--store", str(store)]) == 0
    reports = list(store.glob("runs/*/report.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["model"]["digest"] == digest


def test_plain_http_model_needs_a_pin_and_uses_no_network(capfd, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/models/ssd.tar.gz"  # any connection attempt would be refused
    assert main(["run", "--model", url, "--store", str(tmp_path / "store")]) == 2
    assert _one_error_line(capfd) == f"error: model source {url} is plain http: pass --model-sha256 to pin it (or use https)"


@pytest.mark.parametrize("pin", ["abc", "g" * 64, "0" * 63])
def test_a_pin_that_is_not_a_sha256_is_refused(capfd, pin, tmp_path):
    assert main(["run", "--model-sha256", pin, "--store", str(tmp_path / "store")]) == 2
    assert _one_error_line(capfd) == (f"error: --model-sha256: Value error, {pin!r} is not a SHA-256 digest: "
                                      "give 64 hex digits, as 'quantbench digest --model X' prints them")
