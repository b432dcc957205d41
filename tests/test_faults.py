"""Faults during a run: a worker killed with SIGKILL mid-shard, the S3 server stopped and started
again (results store, or the images themselves). Each disturbed run must end (after a rerun if
need be) with the same AP and the same detections per image as an undisturbed run: nothing lost,
nothing duplicated, and an outage never recorded as a bad image."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tasks.store.object_store import open_store, split_url
from tests.oracle import build_oracle_model, oracle_tables, write_oracle_dataset
from tests.s3server import S3Process

SHARDS = 12  # 24 images, 2 per shard


@pytest.fixture(scope="module")
def slow_case(tmp_path_factory) -> dict:
    """Large oracle images (~0.1 s per image: a conv at full resolution), so shards take a while."""
    root = tmp_path_factory.mktemp("slow")
    annotations = write_oracle_dataset(root / "data", [(960, 720)] * 24, seed=3)
    model = build_oracle_model(root / "model", oracle_tables(annotations), None)
    return {"annotations": annotations, "model": model, "root": root}


def _cli(case: dict, store: str, work: Path, env: dict | None = None) -> subprocess.Popen:
    arguments = ["run", "--model", str(case["model"]), "--annotations", str(case["annotations"]),
                 "--images", str(case["images"] if "images" in case else case["annotations"].parent), "--variants", "float32", "--shard-size", "2",
                 "--workers", "1", "--latency-images", "3", "--store", store]
    environment = {**os.environ, **(env or {}), "PREFECT_HOME": str(work / "prefect"), "QUANTBENCH_CACHE": str(work / "cache")}
    environment.pop("PREFECT_API_URL", None)
    work.mkdir(parents=True, exist_ok=True)
    # Own process group: killing it takes the ephemeral Prefect server child down too.
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *arguments], env=environment, cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(process: subprocess.Popen, seconds: float = 300) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"run did not finish in {seconds} s:\n{output[-3000:]}")
    return process.returncode, output


def _wait_for_shards(count_shards, at_least: int, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if count_shards() >= at_least:
            return
        if process.poll() is not None:
            pytest.fail(f"run ended before {at_least} shards were stored:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"fewer than {at_least} shards stored after {seconds} s")


def _results(output: str) -> tuple[dict, Counter]:
    report_url = output.strip().splitlines()[-1].removeprefix("report: ")
    store, key = split_url(report_url)
    report = store.read_json(key)
    [entry] = report["variants"]
    detections_store, detections_key = split_url(entry["detections"])
    per_image = Counter(d["image_id"] for d in detections_store.read_json(detections_key))
    return report, per_image


@pytest.fixture(scope="module")
def undisturbed(slow_case, tmp_path_factory) -> tuple[dict, Counter]:
    work = tmp_path_factory.mktemp("undisturbed")
    code, output = _finish(_cli(slow_case, str(work / "store"), work))
    assert code == 0, output[-3000:]
    return _results(output)


def test_worker_killed_mid_run_then_rerun_gives_the_same_results(slow_case, undisturbed, tmp_path):
    store = tmp_path / "store"
    shards = store / "shards" / "float32"
    process = _cli(slow_case, str(store), tmp_path / "killed")
    _wait_for_shards(lambda: len(list(shards.glob("*.json"))) if shards.is_dir() else 0, 3, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    stored = sorted(shards.glob("*.json"))
    assert 3 <= len(stored) < SHARDS and not list(store.glob("runs/*/report.json"))
    for shard in stored:  # whatever is under a final key is complete: it parses, with every image
        assert len(json.loads(shard.read_text())["done_image_ids"]) == 2
    code, output = _finish(_cli(slow_case, str(store), tmp_path / "rerun"))
    assert code == 0, output[-3000:]
    report, per_image = _results(output)
    assert report["shards"]["reused"] == len(stored) and report["shards"]["computed"] == SHARDS - len(stored)
    assert report["variants"][0]["bbox"] == undisturbed[0]["variants"][0]["bbox"]
    assert per_image == undisturbed[1] and sum(per_image.values()) == report["variants"][0]["detections_count"]


def test_s3_server_stopped_and_restarted_during_a_run(slow_case, undisturbed, tmp_path, monkeypatch):
    (tmp_path / "s3").mkdir()
    server = S3Process(tmp_path / "s3")
    for name, value in server.start().env().items():
        monkeypatch.setenv(name, value)  # this process and the runs it starts use the server
    store_url = "s3://quantbench/restart"

    def stored_shards() -> int:
        try:
            return len(open_store(store_url).list_keys("shards/float32"))
        except Exception:  # the server may not answer yet
            return 0

    try:
        process = _cli(slow_case, store_url, tmp_path / "run")
        _wait_for_shards(stored_shards, 2, process)
        server.stop()
        time.sleep(3)
        server.start()
        code, output = _finish(process)
        if code != 0:  # it may fail clearly instead of riding the outage out; then a rerun resumes
            assert output.strip().splitlines()[-1].startswith("error: "), output[-3000:]
            code, output = _finish(_cli(slow_case, store_url, tmp_path / "rerun"))
        assert code == 0, output[-3000:]
        report, per_image = _results(output)
    finally:
        server.stop()
    assert report["variants"][0]["bbox"] == undisturbed[0]["variants"][0]["bbox"]
    assert per_image == undisturbed[1]


def test_s3_hosted_images_through_a_15_s_outage_are_never_recorded_as_bad(slow_case, undisturbed, tmp_path, monkeypatch):
    """Images and annotations in S3; the server stopped for 15 s while shards run, then restarted.
    The run rides it out through the task retries, or fails with one line having stored no shard
    output with failures; either way the (re)run's report equals the undisturbed run's."""
    (tmp_path / "s3").mkdir()
    server = S3Process(tmp_path / "s3")
    for name, value in server.start().env().items():
        monkeypatch.setenv(name, value)
    data = open_store("s3://quantbench/coco")
    for path in slow_case["annotations"].parent.iterdir():
        data.write_bytes(path.name, path.read_bytes())
    case = {**slow_case, "annotations": "s3://quantbench/coco/instances.json", "images": "s3://quantbench/coco"}
    store = tmp_path / "store"
    shards = store / "shards" / "float32"
    try:
        process = _cli(case, str(store), tmp_path / "run")
        _wait_for_shards(lambda: len(list(shards.glob("*.json"))) if shards.is_dir() else 0, 1, process)
        server.stop()
        time.sleep(15)
        server.start()
        code, output = _finish(process)
        assert "cannot reach S3" in output, "the outage did not hit the run"
        for shard in shards.glob("*.json"):
            assert json.loads(shard.read_text())["failed"] == [], shard
        if code != 0:
            assert output.strip().splitlines()[-1].startswith("error: cannot reach S3"), output[-3000:]
            assert not list(store.glob("runs/*/report.json"))
            code, output = _finish(_cli(case, str(store), tmp_path / "rerun"))
        assert code == 0, output[-3000:]
        report, per_image = _results(output)
    finally:
        server.stop()
    assert report["variants"][0]["failed_images"] == 0
    assert report["variants"][0]["bbox"] == undisturbed[0]["variants"][0]["bbox"]
    assert per_image == undisturbed[1]


def test_an_unreachable_image_store_fails_the_shard_and_stores_nothing(s3_env, monkeypatch, oracle_data, oracle_models, tmp_path):
    from tasks.data.dataset import load_dataset, make_shards
    from tasks.store.errors import TransientError
    from tasks.run.inference import ShardJob, infer_shard

    dataset = load_dataset(str(oracle_data), str(oracle_data.parent))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    job = ShardJob("saved_model", str(oracle_models["fixed"]), "oracle", dataset.annotations_digest, "s3://quantbench/images",
                   make_shards(dataset, 4)[0], (tmp_path / "store").as_uri())
    with pytest.raises(TransientError, match="cannot reach S3"):
        infer_shard(job)
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.json"))
