"""Dask execution, for real: a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1
(this venv's, the repo on their PYTHONPATH), the benchmark's shards sent to them as Prefect tasks
through prefect-dask's DaskTaskRunner; the results must equal local execution's."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("prefect_dask", reason="dask execution needs the dask extra")

from distributed import Client  # noqa: E402

from flows.benchmark import BenchmarkConfig, benchmark  # noqa: E402
from tasks.data.dataset import load_dataset, make_shards  # noqa: E402
from tasks.run.inference import ShardJob  # noqa: E402
from tasks.store.errors import QuantbenchError  # noqa: E402
from tests.oracle import build_oracle_model, oracle_tables, write_oracle_dataset  # noqa: E402
from tests.prefect_server import REPO, free_port, read_report, wait_for  # noqa: E402

DASK = str(Path(sys.executable).with_name("dask"))


class DaskCluster:
    """A scheduler and its single-threaded worker processes (no nanny: a worker is its own process)."""

    def __init__(self, root: Path):
        self.root, self.address = root, f"tcp://127.0.0.1:{free_port()}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_TEMPORARY_DIRECTORY": str(root)}  # their scratch space: not /tmp's
        self.processes: dict[str, subprocess.Popen] = {}
        self._spawn("scheduler", DASK, "scheduler", "--host", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1], "--no-dashboard")

    def _spawn(self, name: str, *command: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        self.processes[name] = subprocess.Popen(command, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        return self.processes[name]

    def start_worker(self, name: str) -> subprocess.Popen:
        return self._spawn(name, DASK, "worker", self.address, "--name", name, "--host", "127.0.0.1", "--nworkers", "1",
                           "--nthreads", "1", "--no-nanny", "--no-dashboard", "--death-timeout", "60")

    def wait_for_workers(self, count: int) -> None:
        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(count, timeout=90)

    def processing(self) -> dict[str, list]:
        """Keys being processed, per worker address."""
        with Client(self.address, timeout=30) as client:
            return {worker: keys for worker, keys in client.processing().items() if keys}

    def worker_name(self, address: str) -> str:
        with Client(self.address, timeout=30) as client:
            return client.scheduler_info(n_workers=-1)["workers"][address]["name"]

    def kill(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.kill(name)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        cluster.start_worker("worker-1")
        cluster.start_worker("worker-2")
        cluster.wait_for_workers(2)
        yield cluster
    finally:
        cluster.stop()


def _case(root: Path, sizes: list[tuple[int, int]], seed: int) -> dict:
    annotations = write_oracle_dataset(root / "data", sizes, seed=seed)
    model = build_oracle_model(root / "model", oracle_tables(annotations), None)
    return {"model": str(model), "annotations": str(annotations), "images": str(annotations.parent),
            "variants": ["float32", "int8"], "latency_images": 3}


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    return _case(tmp_path_factory.mktemp("dask-case"), [(640, 480), (480, 640), (800, 600), (300, 200)] * 3, seed=5)


@pytest.fixture(scope="module")
def slow_case(tmp_path_factory) -> dict:
    """48 large images (~0.06-0.1 s each: the oracle's conv at full resolution), one shard per variant:
    a shard runs for seconds, so a kill once its task run is Running lands before its output is stored."""
    return _case(tmp_path_factory.mktemp("dask-slow"), [(960, 720)] * 48, seed=7)


def _detections(report: dict) -> dict[str, list]:
    return {v["variant"]: sorted(read_report(v["detections"]), key=json.dumps) for v in report["variants"]}


def _counts(report: dict) -> list[tuple]:
    return [(v["variant"], v["images"], v["failed_images"], v["detections_count"]) for v in report["variants"]]


def _shard_documents(store: Path) -> dict[str, dict]:
    """Stored shard outputs by key (content-addressed: the same key in both modes)."""
    return {str(path.relative_to(store)): json.loads(path.read_text()) for path in store.glob("shards/*/*.json")}


def _content(document: dict) -> dict:
    """A shard output but for who computed it and when (its usage) and the store it was written to."""
    job = {**document["job"], "store_url": None, "model_url": document["job"]["model_url"].rsplit("/", 1)[-1]}
    return {**{k: v for k, v in document.items() if k != "usage"}, "job": job}


def _infer_task_runs() -> dict[str, dict]:
    """Every infer-shard task run the Prefect API knows: id -> {name, state}."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="infer-")), limit=200)
    return {str(run.id): {"name": run.name, "state": run.state_type.value if run.state_type else None} for run in runs}


def test_a_shard_job_pickles_as_plain_data(case):
    dataset = load_dataset(case["annotations"], case["images"], None)
    shard = make_shards(dataset, 3)[0]
    job = ShardJob("float32", "file:///store/float32.tflite", "d" * 64, dataset.annotations_digest, dataset.images_url, shard,
                   "file:///store", category_ids=dataset.category_ids, label_map=(1, 2), spec={"head": "odapi"})
    again = pickle.loads(pickle.dumps(job))
    assert again == job and again.output_key() == job.output_key()


def test_dask_address_is_an_execution_setting_not_part_of_the_run_identity(case):
    plain = BenchmarkConfig(**case, store="/tmp/store")
    on_dask = BenchmarkConfig(**case, store="/tmp/store", execution="dask", dask_address="tcp://127.0.0.1:8786")
    assert plain.result_settings() == on_dask.result_settings()


@pytest.fixture(scope="module")
def local_run(prefect_backend, case, tmp_path_factory) -> dict:
    """The case under local execution: its report and its store's folder."""
    store = tmp_path_factory.mktemp("local-run")
    return {"report": read_report(benchmark(BenchmarkConfig(**case, store=str(store), shard_size=3))), "store": store}


def _check_equal_to_local(on_dask: dict, store: Path, local_run: dict) -> dict[str, dict]:
    """The report's numbers, detections and shard outputs equal local execution's; returns the shard outputs."""
    local = local_run["report"]
    assert on_dask["shards"] == local["shards"] == {"total": 8, "computed": 8, "reused": 0}
    identity = on_dask["run_id"].split("-")[1]  # <UTC time>-<identity>-<random>
    assert identity == local["run_id"].split("-")[1] and on_dask["settings"]["execution"] == "dask"
    assert [v["bbox"] for v in on_dask["variants"]] == [v["bbox"] for v in local["variants"]]
    assert _counts(on_dask) == _counts(local)
    assert _detections(on_dask) == _detections(local)
    shards, local_shards = _shard_documents(store), _shard_documents(local_run["store"])
    assert len(shards) == 8 and {k: _content(d) for k, d in shards.items()} == {k: _content(d) for k, d in local_shards.items()}
    assert {d["usage"]["pid"] for d in local_shards.values()} == {os.getpid()}
    return shards


def test_shards_run_as_prefect_tasks_on_the_dask_workers_with_the_results_of_local_execution(prefect_backend, dask_cluster, case,
                                                                                              local_run, tmp_path):
    before = set(_infer_task_runs())
    on_dask = read_report(benchmark(BenchmarkConfig(**case, store=str(tmp_path / "dask"), shard_size=3, execution="dask",
                                                    dask_address=dask_cluster.address)))
    shards = _check_equal_to_local(on_dask, tmp_path / "dask", local_run)
    # Both worker processes computed shards, this process none.
    assert {d["usage"]["pid"] for d in shards.values()} == {dask_cluster.processes["worker-1"].pid, dask_cluster.processes["worker-2"].pid}
    # Each shard was a Prefect task run, reported Completed from its worker (task run events land asynchronously).
    wait_for(lambda: sum(r["state"] == "COMPLETED" for i, r in _infer_task_runs().items() if i not in before) >= 8, 60,
             "the 8 infer-shard task runs to be Completed")
    runs = {i: r for i, r in _infer_task_runs().items() if i not in before}
    assert len(runs) == 8 and all(r["state"] == "COMPLETED" for r in runs.values())
    print(f"\ndask: 8 shards on 2 workers, inference stage {on_dask['stages']['wall_s']['inference']} s "
          f"(local, 2 threads: {local_run['report']['stages']['wall_s']['inference']} s)")


def test_with_no_address_the_shards_run_on_a_local_cluster_of_worker_processes(prefect_backend, case, local_run, tmp_path):
    on_dask = read_report(benchmark(BenchmarkConfig(**case, store=str(tmp_path / "dask"), shard_size=3, execution="dask", workers=2)))
    shards = _check_equal_to_local(on_dask, tmp_path / "dask", local_run)
    pids = {d["usage"]["pid"] for d in shards.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # the cluster's two worker processes, gone with the run


def test_a_worker_killed_mid_shard_has_its_shard_run_on_another_and_the_report_is_local_executions(prefect_backend, dask_cluster,
                                                                                                     slow_case, tmp_path):
    """Runs last: it kills one of the module's two workers. A dead machine: SIGKILL, no chance to report."""
    before = set(_infer_task_runs())
    config = BenchmarkConfig(**slow_case, store=str(tmp_path / "dask"), shard_size=48, execution="dask", dask_address=dask_cluster.address)
    outcome: dict = {}
    run = threading.Thread(target=lambda: outcome.update(url=benchmark(config)), daemon=True)
    run.start()
    wait_for(lambda: sum(r["state"] == "RUNNING" for i, r in _infer_task_runs().items() if i not in before) == 2 or not run.is_alive(),
             180, "both shards' task runs to be Running on the workers")
    [victim, *_] = dask_cluster.processing()
    name = dask_cluster.worker_name(victim)
    dask_cluster.kill(name)
    run.join(timeout=300)
    assert not run.is_alive() and "url" in outcome, "the run did not complete after the worker was killed"
    on_dask = read_report(outcome["url"])
    local = read_report(benchmark(BenchmarkConfig(**slow_case, store=str(tmp_path / "local"), shard_size=48)))
    assert on_dask["shards"] == local["shards"] == {"total": 2, "computed": 2, "reused": 0}
    assert [v["bbox"] for v in on_dask["variants"]] == [v["bbox"] for v in local["variants"]]
    assert _counts(on_dask) == _counts(local) and _detections(on_dask) == _detections(local)
    shards = _shard_documents(tmp_path / "dask")
    survivors = {p.pid for n, p in dask_cluster.processes.items() if n.startswith("worker-") and n != name}
    assert len(shards) == 2 and {d["usage"]["pid"] for d in shards.values()} <= survivors  # the killed worker stored nothing
    # No task run left Running: the killed shard's task run was run again, to Completed, by the survivor.
    wait_for(lambda: all(r["state"] == "COMPLETED" for i, r in _infer_task_runs().items() if i not in before)
             and len(set(_infer_task_runs()) - before) >= 4, 60, "the infer-shard task runs (2 on Dask, 2 local) to be Completed")
    assert len(set(_infer_task_runs()) - before) == 4


def test_a_cluster_without_workers_fails_the_run_in_one_line_instead_of_waiting_for_ever(prefect_backend, case, tmp_path):
    """A scheduler whose workers are gone (or never started: an image without this code) runs no shard; a
    shard's own timeout only starts on a worker. The run fails once the cluster has had no worker for
    shard_timeout_s, naming the scheduler, and leaves nothing published."""
    (tmp_path / "cluster").mkdir()
    cluster = DaskCluster(tmp_path / "cluster")
    try:
        with Client(cluster.address, timeout=60) as client:
            assert client.nthreads() == {}
        config = BenchmarkConfig(**case, store=str(tmp_path / "store"), shard_size=3, execution="dask", dask_address=cluster.address,
                                 shard_timeout_s=6)
        started = time.monotonic()
        with pytest.raises(QuantbenchError, match=rf"shards never finished: the Dask cluster at {cluster.address} has had no worker "
                                                  r"for \d+ s \(shard_timeout_s\)"):
            benchmark(config)
        assert time.monotonic() - started < 120
        assert not list((tmp_path / "store").glob("runs/*/report.json"))
    finally:
        cluster.stop()
