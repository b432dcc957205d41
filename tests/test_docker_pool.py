"""Shards as containers: a real Prefect server, the `quantbench-docker` work pool from
deployments/work-pools/docker.json (host networking, the local quantbench:full image), a real
`docker`-type worker (prefect-docker) on this host, and SeaweedFS as the S3 store that holds the
images, the converted models and every result. The benchmark flow runs each (variant, shard) as a
flow run of the shard deployment, which the worker runs as its own container. The S3 keys are in
Prefect Secret blocks: each run's job variables hold only references to them, which the worker
resolves as it starts a container."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests import docker_engine
from tests.oracle import build_oracle_model, oracle_tables, write_oracle_dataset
from tests.prefect_server import PREFECT, REPO, Cluster, read_report, wait_for
from tests.s3server import running_s3_server

VARIANTS = ["float32", "int8"]
KEY_BLOCKS = {"AWS_ACCESS_KEY_ID": "quantbench-s3-access-key-id", "AWS_SECRET_ACCESS_KEY": "quantbench-s3-secret-access-key"}
"""The Secret block holding each S3 key (a string each: Prefect 3.9 shows a JSON-valued Secret in clear)."""
KEY_REFERENCES = {name: f"{{{{ prefect.blocks.secret.{block} }}}}" for name, block in KEY_BLOCKS.items()}


@pytest.fixture(scope="module")
def stack(container_images, tmp_path_factory):
    """Server, S3 with the dataset uploaded, the docker pool, the shard deployment on it, a docker worker."""
    root = tmp_path_factory.mktemp("docker-pool")
    annotations = write_oracle_dataset(root / "data", [(960, 720)] * 24, seed=11)  # ~0.1 s per image
    model = build_oracle_model(root / "model", oracle_tables(annotations), None)
    (root / "s3").mkdir()
    with running_s3_server(root / "s3") as s3, pytest.MonkeyPatch.context() as env:
        for name, value in s3.env().items():  # this process reads the reports from S3 too
            env.setenv(name, value)
        cluster = Cluster(root)
        cluster.env.update(s3.env())
        try:
            cluster.start_server()
            cluster.run(sys.executable, "-c", (  # the operator's step: the keys, from its environment, into Secret blocks
                "import json, os, sys; from prefect.blocks.system import Secret\n"
                "for name, block in json.loads(sys.argv[1]).items(): Secret(value=os.environ[name]).save(block, overwrite=True)"),
                json.dumps(KEY_BLOCKS))
            cluster.run(sys.executable, "-c", (
                "import sys; from pathlib import Path; from tasks.store.object_store import open_store\n"
                "store = open_store('s3://quantbench/data')\n"
                "for path in Path(sys.argv[1]).iterdir(): store.write_bytes(path.name, path.read_bytes())"), str(annotations.parent))
            cluster.run(PREFECT, "work-pool", "create", "quantbench-docker", "--type", "docker",
                        "--base-job-template", str(REPO / "deployments" / "work-pools" / "docker.json"))
            cluster.env["QUANTBENCH_CODE_DIR"] = "/opt/quantbench"  # the images' WORKDIR (prefect.yaml pull step)
            cluster.run(PREFECT, "--no-prompt", "deploy", "--prefect-file", str(REPO / "deployments" / "prefect.yaml"),
                        "--name", "shard", "--pool", "quantbench-docker")
            cluster.spawn("docker-worker", PREFECT, "worker", "start", "--pool", "quantbench-docker", "--type", "docker",
                          "--name", "docker-worker")
            yield {"cluster": cluster, "s3": s3, "model": str(model), "root": root}
        finally:
            cluster.stop()
            docker_engine.remove_containers()


def _config(stack: dict, prefix: str, **changes) -> dict:
    return {"model": stack["model"], "annotations": "s3://quantbench/data/instances.json", "images": "s3://quantbench/data",
            "variants": VARIANTS, "latency_images": 3, "store": f"s3://quantbench/{prefix}", **changes}


def _in_containers(stack: dict, prefix: str, **changes) -> dict:
    # The containers get the S3 endpoint and references to the Secret blocks of the keys through the
    # run's job variables, merged over the shard deployment's environment (its heartbeat setting),
    # and this session's label.
    s3 = stack["s3"].env()
    env = {"AWS_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"], "AWS_DEFAULT_REGION": s3["AWS_DEFAULT_REGION"], **KEY_REFERENCES}
    job_variables = {"env": env, "labels": docker_engine.LABELS}
    return _config(stack, prefix, execution="deployment", job_variables=job_variables, **changes)


def _detections(report: dict) -> dict[str, list]:
    return {v["variant"]: sorted(read_report(v["detections"]), key=json.dumps) for v in report["variants"]}


def _shard_runs(cluster: Cluster, before: set[str]) -> list[dict]:
    return [r for r in cluster.flow_runs("quantbench-shard") if r["id"] not in before]


def _container_of(flow_run_id: str) -> list[str]:
    return docker_engine.labelled_containers(docker_engine.LABEL, f"label=io.prefect.flow-run-id={flow_run_id}")


def test_every_shard_runs_in_its_own_container_two_at_once_with_local_modes_results(stack):
    cluster = stack["cluster"]
    before = {r["id"] for r in cluster.flow_runs("quantbench-shard")}
    local = cluster.benchmark(_config(stack, "local", shard_size=6))
    in_containers = cluster.benchmark(_in_containers(stack, "containers", shard_size=6, workers=2), timeout=600)
    runs = _shard_runs(cluster, before)
    assert in_containers["shards"] == {"total": 8, "computed": 8, "reused": 0}
    assert len(runs) == 8 and all(r["state_type"] == "COMPLETED" and r["work_pool_name"] == "quantbench-docker" for r in runs)
    assert [v["bbox"] for v in in_containers["variants"]] == [v["bbox"] for v in local["variants"]]
    assert _detections(in_containers) == _detections(local)

    containers = {r["id"]: docker_engine.inspect(_container_of(r["id"])[0]) for r in runs}  # one container per shard run
    assert {c["Config"]["Image"] for c in containers.values()} == {"quantbench:full"}
    assert {c["HostConfig"]["NetworkMode"] for c in containers.values()} == {"host"}
    assert {c["Config"]["User"] for c in containers.values()} == {"10001:10001"}
    assert all(c["State"]["ExitCode"] == 0 for c in containers.values())
    s3 = stack["s3"]
    for r in runs:  # the flow runs hold the references; the worker gave each container the keys
        assert {k: r["job_variables"]["env"][k] for k in KEY_REFERENCES} == KEY_REFERENCES
        assert s3.secret_key not in json.dumps(r) and s3.access_key not in json.dumps(r)
        assert {f"AWS_ACCESS_KEY_ID={s3.access_key}", f"AWS_SECRET_ACCESS_KEY={s3.secret_key}"} <= set(containers[r["id"]]["Config"]["Env"])
    blocks = httpx.post(f"{cluster.api}/block_documents/filter", json={}, timeout=10).text  # what the UI shows
    assert s3.secret_key not in blocks and s3.access_key not in blocks
    spans = [(docker_engine.timestamp(c["State"]["StartedAt"]), docker_engine.timestamp(c["State"]["FinishedAt"])) for c in containers.values()]
    most_at_once = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    assert most_at_once >= 2, spans
    # Per-shard container overhead: the container's life minus its flow run's Running..Completed time.
    overheads, pickups = [], []
    for r in runs:
        run = cluster.get(f"/flow_runs/{r['id']}")
        started, finished = (docker_engine.timestamp(containers[r["id"]]["State"][k]) for k in ("StartedAt", "FinishedAt"))
        overheads.append((finished - started) - run["total_run_time"])
        pickups.append(started - docker_engine.timestamp(run["expected_start_time"]))
    print(f"\ncontainers: {len(runs)} shard containers, at most {most_at_once} at once; overhead per shard container "
          f"(life minus flow-run run time) median {sorted(overheads)[len(overheads) // 2]:.1f} s, max {max(overheads):.1f} s; "
          f"scheduled-to-container-start median {sorted(pickups)[len(pickups) // 2]:.1f} s")


def test_a_shard_container_killed_mid_shard_is_retried_and_the_run_completes(stack):
    cluster = stack["cluster"]
    before = {r["id"] for r in cluster.flow_runs("quantbench-shard")}
    config = _in_containers(stack, "killed", shard_size=24, workers=1)
    script = ("import json, sys; from flows.benchmark import BenchmarkConfig, benchmark; "
              "print(benchmark(BenchmarkConfig(**json.loads(sys.argv[1]))))")
    runner = subprocess.Popen([sys.executable, "-c", script, json.dumps(config)], env=cluster.env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: [r for r in _shard_runs(cluster, before) if r["state_type"] == "RUNNING"], 300,
                 "a shard flow run to be running in its container")
        [victim] = [r for r in _shard_runs(cluster, before) if r["state_type"] == "RUNNING"]
        [container] = _container_of(victim["id"])
        docker_engine.docker("kill", container)
        output, _ = runner.communicate(timeout=600)
    finally:
        cluster.kill(runner)
    assert runner.returncode == 0, output[-3000:]
    assert docker_engine.inspect(container)["State"]["ExitCode"] == 137  # SIGKILL
    assert cluster.get(f"/flow_runs/{victim['id']}")["state_type"] == "CRASHED"
    runs = _shard_runs(cluster, before)
    redone = [r for r in runs if r["id"] != victim["id"] and r["parameters"]["job"]["variant"] == victim["parameters"]["job"]["variant"]]
    assert [r["state_type"] for r in redone] == ["COMPLETED"]
    report = read_report(output.strip().splitlines()[-1])
    assert report["shards"] == {"total": 2, "computed": 2, "reused": 0}
    assert all(v["bbox"]["AP"] == 1.0 and v["images"] == 24 and v["failed_images"] == 0 for v in report["variants"])
