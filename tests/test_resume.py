"""Content-addressed results: a rerun reuses every stored shard, recomputes only what is missing,
and never mixes results of different settings; datasets and results in S3."""
import json
import shutil
from collections import Counter

import pytest

from flows.benchmark import BenchmarkConfig, benchmark
from tasks.store.object_store import open_store, split_url


def _report(url: str) -> dict:
    store, key = split_url(url)
    return store.read_json(key)


def _detections_per_image(report: dict) -> dict[str, Counter]:
    result = {}
    for entry in report["variants"]:
        store, key = split_url(entry["detections"])
        result[entry["variant"]] = Counter(d["image_id"] for d in store.read_json(key))
    return result


@pytest.fixture
def config(oracle_data, oracle_models, tmp_path) -> BenchmarkConfig:
    return BenchmarkConfig(model=str(oracle_models["fixed"]), annotations=str(oracle_data), images=str(oracle_data.parent),
                           variants=["float32", "int8"], shard_size=2, latency_images=3, store=str(tmp_path / "store"))


def test_a_rerun_recomputes_nothing_and_a_partial_one_only_what_is_missing(prefect_backend, config, tmp_path):
    first = _report(benchmark(config))
    assert first["shards"] == {"total": 8, "computed": 8, "reused": 0}
    second = _report(benchmark(config))
    assert second["shards"] == {"total": 8, "computed": 0, "reused": 8}
    assert second["run_id"] != first["run_id"]
    for shard in sorted((tmp_path / "store" / "shards" / "int8").glob("*.json"))[:3]:  # outputs, not their digest records
        shard.unlink()
    third = _report(benchmark(config))
    assert third["shards"] == {"total": 8, "computed": 3, "reused": 5}
    for report in (second, third):
        assert [v["bbox"] for v in report["variants"]] == [v["bbox"] for v in first["variants"]]
        assert _detections_per_image(report) == _detections_per_image(first)


def test_a_fixed_image_is_recomputed_and_the_rerun_equals_a_clean_run(prefect_backend, config, oracle_data, tmp_path):
    """A truncated image, then the good file put back; a missing image, then added: the rerun must
    recompute those shards (image content is part of the shard key, failures are never reused)
    and report exactly what a clean run reports."""
    images = tmp_path / "images"
    shutil.copytree(oracle_data.parent, images)
    names = sorted(p.name for p in images.glob("*.png"))
    truncated, missing = images / names[0], images / names[5]
    good_truncated, good_missing = truncated.read_bytes(), missing.read_bytes()
    truncated.write_bytes(good_truncated[: len(good_truncated) // 2])
    missing.unlink()
    broken = config.model_copy(update={"images": str(images)})
    first = _report(benchmark(broken))
    assert [v["failed_images"] for v in first["variants"]] == [2, 2]
    truncated.write_bytes(good_truncated)
    missing.write_bytes(good_missing)
    fixed = _report(benchmark(broken))
    assert [v["failed_images"] for v in fixed["variants"]] == [0, 0]
    assert fixed["shards"] == {"total": 8, "computed": 4, "reused": 4}  # shards 0 and 2 of both variants
    clean = _report(benchmark(config))
    assert [v["bbox"] for v in fixed["variants"]] == [v["bbox"] for v in clean["variants"]]
    assert _detections_per_image(fixed) == _detections_per_image(clean)
    assert fixed["dataset"]["digest"] == clean["dataset"]["digest"] != first["dataset"]["digest"]


def test_a_shard_with_failed_images_is_never_reused(prefect_backend, config, oracle_data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(oracle_data.parent, images)
    (images / sorted(p.name for p in images.glob("*.png"))[0]).write_bytes(b"")
    broken = config.model_copy(update={"images": str(images)})
    benchmark(broken)
    again = _report(benchmark(broken))  # the same bad file: its shards are computed again, the rest reused
    assert again["shards"] == {"total": 8, "computed": 2, "reused": 6}
    assert [f["reason"] for v in again["variants"] for f in v["failures"]] == ["empty file", "empty file"]


def test_different_settings_never_reuse_each_others_shards(prefect_backend, config):
    benchmark(config)
    changed = _report(benchmark(config.model_copy(update={"min_score": 0.5})))
    assert changed["shards"]["reused"] == 0


def test_dataset_read_from_s3_and_results_written_there(prefect_backend, s3_env, oracle_data, oracle_models):
    data = open_store("s3://quantbench/datasets/oracle")
    for path in oracle_data.parent.iterdir():
        data.write_bytes(path.name, path.read_bytes())
    config = BenchmarkConfig(model=str(oracle_models["dynamic"]), annotations="s3://quantbench/datasets/oracle/instances.json",
                             images="s3://quantbench/datasets/oracle", variants=["float32", "int8"], shard_size=3,
                             latency_images=3, store="s3://quantbench/results-from-s3-data")
    report = _report(benchmark(config))
    assert report["dataset"]["images"] == 8
    assert [v["bbox"]["AP"] for v in report["variants"]] == [1.0, 1.0]
    annotations = json.loads(oracle_data.read_text())["annotations"]
    expected = Counter(a["image_id"] for a in annotations)
    assert all(per_image == expected for per_image in _detections_per_image(report).values())


def test_no_secret_in_logs_artifacts_or_stored_objects(prefect_backend, s3_env, oracle_data, oracle_models, caplog, capsys):
    from prefect.artifacts import Artifact

    config = BenchmarkConfig(model=str(oracle_models["fixed"]), annotations=str(oracle_data), images=str(oracle_data.parent),
                             variants=["float32"], latency_images=3, store="s3://quantbench/secret-scan")
    with caplog.at_level("DEBUG"):
        url = benchmark(config)
    secret = s3_env.secret_key
    captured = capsys.readouterr()
    assert secret not in caplog.text and secret not in captured.out + captured.err
    artifact = Artifact.get("quantbench-report")
    assert url in artifact.description and secret not in artifact.description + json.dumps(artifact.data)
    store = open_store("s3://quantbench/secret-scan")
    keys = store.list_keys()
    assert any(k.endswith("report.json") for k in keys) and any(k.startswith("shards/") for k in keys)
    for key in keys:
        assert secret.encode() not in store.read_bytes(key), key
        assert s3_env.access_key.encode() not in store.read_bytes(key), key


def test_large_objects_go_up_in_parts(s3_env):
    from tasks.store.object_store import MULTIPART_BYTES

    store = open_store("s3://quantbench/multipart")
    data = bytes(range(256)) * (MULTIPART_BYTES // 256 + 4096)
    store.write_bytes("big.bin", data)
    assert store.read_bytes("big.bin") == data
    etag = store.client.head_object(Bucket="quantbench", Key="multipart/big.bin")["ETag"]
    assert etag.strip('"').endswith("-2")  # an S3 multipart ETag: md5-of-parts, dash, part count


def test_unreachable_endpoint_is_a_clear_retryable_error(s3_env, monkeypatch):
    import socket

    from tasks.store.errors import TransientError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    with pytest.raises(TransientError, match=f"cannot reach S3 at http://127.0.0.1:{closed} for s3://quantbench/x/a") as raised:
        open_store("s3://quantbench/x").read_bytes("a")
    assert s3_env.secret_key not in str(raised.value)
