"""Dask execution on containers: a ``dask scheduler`` and two ``dask worker`` containers of quantbench:slim
(built from this checkout by ``make images``, as tests/test_containers.py builds it) on the host's network,
as infra/compose.yaml runs them. The store and the demo dataset are on the tests' S3 server, which the
workers reach with the keys given as environment (as compose and infra/k8s/40-dask.yaml give them); no
folder of this host is mounted. The demo's shards run in the containers, this process sends them with
``execution="dask"``; the report must equal local execution's."""
from __future__ import annotations

import os
import uuid

import boto3
import pytest

pytest.importorskip("prefect_dask", reason="dask execution needs the dask extra")

from flows.benchmark import BenchmarkConfig, benchmark  # noqa: E402
from tests.dask_containers import ContainerCluster  # noqa: E402
from tests.prefect_server import read_report  # noqa: E402
from tests.test_dask import _content, _counts, _detections  # noqa: E402

LIMIT, SHARD_SIZE, VARIANTS = 24, 3, ["float32", "int8"]  # builtin-op variants: what the slim image runs


@pytest.fixture(scope="module")
def s3_environment(s3_server):
    """The S3 server's endpoint and keys in this process's environment for the module (as a user sets them)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env().items():
            patch.setenv(name, value)
        yield s3_server


@pytest.fixture(scope="module")
def demo_on_s3(s3_environment, tmp_path_factory) -> dict:
    """The demo's validation split uploaded to S3 (annotations and images); its calibration split stays
    here (conversion runs in this process)."""
    from demo import synthetic

    root = tmp_path_factory.mktemp("demo-data")
    annotations = synthetic.generate(root, synthetic.VAL)
    calibration = synthetic.generate(root, synthetic.CALIBRATION).parent
    server, prefix = s3_environment, f"dask-containers-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                      aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key)
    for path in annotations.parent.iterdir():
        s3.upload_file(str(path), server.bucket, f"{prefix}/val/{path.name}")
    base = f"s3://{server.bucket}/{prefix}"
    return {"annotations": f"{base}/val/{annotations.name}", "images": f"{base}/val", "calibration_images": str(calibration),
            "store": base}


def _config(demo: dict, store: str, **execution) -> BenchmarkConfig:
    return BenchmarkConfig(annotations=demo["annotations"], images=demo["images"], calibration_images=demo["calibration_images"],
                           variants=VARIANTS, limit=LIMIT, shard_size=SHARD_SIZE, latency_images=3, store=store, **execution)


def _shard_documents(store_url: str) -> dict[str, dict]:
    """Stored shard outputs by key (content-addressed: the same key in both modes)."""
    from tasks.store.object_store import open_store

    store = open_store(store_url)
    return {key: store.read_json(key) for key in store.list_keys("shards/") if key.endswith(".json")}


def test_the_demos_shards_run_on_slim_worker_containers_with_the_results_of_local_execution(container_images, prefect_backend,
                                                                                            demo_on_s3, s3_server):
    local_store, dask_store = f"{demo_on_s3['store']}/local", f"{demo_on_s3['store']}/dask"
    local = read_report(benchmark(_config(demo_on_s3, local_store)))
    with ContainerCluster("quantbench:slim", workers=2, env=s3_server.env()) as cluster:
        on_dask = read_report(benchmark(_config(demo_on_s3, dask_store, execution="dask", dask_address=cluster.address,
                                                shard_timeout_s=300)))  # a shard hung in a container fails the run
        workers = cluster.worker_processes()
    jobs = LIMIT // SHARD_SIZE * len(VARIANTS)
    assert on_dask["shards"] == local["shards"] == {"total": jobs, "computed": jobs, "reused": 0}
    assert on_dask["settings"]["execution"] == "dask" and on_dask["run_id"].split("-")[1] == local["run_id"].split("-")[1]
    assert [v["variant"] for v in on_dask["variants"]] == VARIANTS
    assert [v["bbox"] for v in on_dask["variants"]] == [v["bbox"] for v in local["variants"]]
    assert _counts(on_dask) == _counts(local) and all(images == LIMIT for _, images, _, _ in _counts(on_dask))
    assert _detections(on_dask) == _detections(local)
    shards, local_shards = _shard_documents(dask_store), _shard_documents(local_store)
    assert len(shards) == jobs and {k: _content(d) for k, d in shards.items()} == {k: _content(d) for k, d in local_shards.items()}
    # Computed in the containers: their workers executed every shard (each is PID 1 tini's child in
    # its own PID namespace), and the shard outputs carry those workers' pids, not this process's.
    assert set(workers) == {"worker-1", "worker-2"} and {w["init"] for w in workers.values()} == {"/usr/bin/tini"}
    assert sum(w["executed"] for w in workers.values()) >= jobs
    assert {d["usage"]["pid"] for d in local_shards.values()} == {os.getpid()}
    assert {d["usage"]["pid"] for d in shards.values()} <= {w["pid"] for w in workers.values()}
    assert os.getpid() not in {w["pid"] for w in workers.values()}
    print(f"\ndask containers: up in {cluster.start_s:.1f} s; {jobs} shards, inference stage {on_dask['stages']['wall_s']['inference']} s "
          f"(local, 2 threads: {local['stages']['wall_s']['inference']} s)")
