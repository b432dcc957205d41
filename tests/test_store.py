"""The object store: local folder and a real S3-compatible server (SeaweedFS on 127.0.0.1)."""
import json
from pathlib import Path

import pytest

from flows.benchmark import BenchmarkConfig, benchmark
from tasks.store.errors import QuantbenchError
from tasks.store.object_store import open_store, split_url


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store(tmp_path.as_uri())
    request.getfixturevalue("s3_env")
    return open_store(f"s3://quantbench/tests/{tmp_path.name}")


def test_round_trip_and_urls(store, tmp_path):
    url = store.write_json("runs/r1/report.json", {"AP": 0.5})
    assert url == store.url_for("runs/r1/report.json")
    assert store.exists("runs/r1/report.json") and not store.exists("runs/r1/missing.json")
    assert store.read_json("runs/r1/report.json") == {"AP": 0.5}
    object_store, key = split_url(url)
    assert object_store.read_bytes(key) == json.dumps({"AP": 0.5}).encode()
    assert store.local_path("runs/r1/report.json", tmp_path / "cache").read_bytes() == json.dumps({"AP": 0.5}).encode()


def test_list_keys_under_a_prefix(store):
    for key in ("m/saved_model.pb", "m/variables/variables.index", "m2/other", "top"):
        store.write_bytes(key, b"x")
    assert store.list_keys("m") == ["m/saved_model.pb", "m/variables/variables.index"]
    assert store.list_keys() == ["m/saved_model.pb", "m/variables/variables.index", "m2/other", "top"]
    assert store.list_keys("absent") == []


def test_missing_object_names_its_url(store):
    with pytest.raises(QuantbenchError, match=f"not found: {store.url_for('nothing/here.json')}"):
        store.read_bytes("nothing/here.json")


def test_missing_bucket_and_bad_credentials_are_clear_and_leak_no_secret(s3_env, monkeypatch):
    with pytest.raises(QuantbenchError, match="bucket does not exist: s3://no-such-bucket"):
        open_store("s3://no-such-bucket/x").read_bytes("a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(QuantbenchError, match="access denied to s3://quantbench/x/a") as raised:
        open_store("s3://quantbench/x").write_bytes("a", b"1")
    assert "wrong-secret-value" not in str(raised.value)


@pytest.mark.parametrize("folder", ["my work", "données ü", "a%20b"])
def test_local_store_urls_with_spaces_and_non_ascii_round_trip(tmp_path, folder):
    root = tmp_path / folder / "quantbench results"
    for url in (str(root), root.as_uri()):
        store = open_store(url)
        assert store.root == root and open_store(store.url).root == root
        written = store.write_json("runs/r 1/report ü.json", {"AP": 0.5})
        assert (root / "runs" / "r 1" / "report ü.json").is_file() and " " not in written
        again, key = split_url(written)
        assert again.root == root / "runs" / "r 1" and key == "report ü.json" and again.read_json(key) == {"AP": 0.5}


def test_a_writer_killed_mid_write_leaves_no_partial_object(tmp_path):
    """SIGKILL a process in the middle of writing a large object: the key is absent, never partial."""
    import signal
    import subprocess
    import sys
    import time

    script = ("import sys; from tasks.store.object_store import open_store; "
              "open_store(sys.argv[1]).write_bytes('big/object.bin', b'x' * (1 << 30))")
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=str(Path(__file__).parents[1]))
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 0 for p in (tmp_path / "big").glob(".object.bin.*")) if (tmp_path / "big").is_dir() else True:
        assert writer.poll() is None and time.monotonic() < deadline, "the writer ended before it was caught mid-write"
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert not (tmp_path / "big" / "object.bin").exists()
    assert not open_store(str(tmp_path)).exists("big/object.bin") and open_store(str(tmp_path)).list_keys() == []


def test_local_writes_leave_no_partial_objects(tmp_path):
    store = open_store(str(tmp_path))
    store.write_bytes("a/b.bin", b"x" * 1000)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]


def test_benchmark_with_results_in_s3(prefect_backend, s3_env, oracle_data, oracle_models):
    config = BenchmarkConfig(
        model=str(oracle_models["fixed"]), annotations=str(oracle_data), images=str(oracle_data.parent),
        variants=["float32", "int8"], shard_size=4, latency_images=3, store="s3://quantbench/bench",
    )
    url = benchmark(config)
    assert url.startswith("s3://quantbench/bench/runs/") and url.endswith("/report.json")
    store, key = split_url(url)
    report = store.read_json(key)
    assert [v["bbox"]["AP"] for v in report["variants"]] == [1.0, 1.0]
    for entry in report["variants"]:
        assert entry["detections"].startswith("s3://quantbench/bench/runs/")
        assert entry["model"].startswith("s3://quantbench/bench/models/")
    assert store.exists(key.replace("report.json", "report.csv"))


def test_parallel_downloads_of_one_object_do_not_collide(s3_env, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = open_store("s3://quantbench/parallel")
    store.write_bytes("model.tflite", b"m" * 2_000_000)
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: store.local_path("model.tflite", tmp_path / "cache"), range(8)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == b"m" * 2_000_000
    assert [p.name for p in paths[0].parent.iterdir()] == ["model.tflite"]
