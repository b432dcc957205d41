"""The distributed path, for real: a Prefect server on 127.0.0.1 (SQLite), the `quantbench-process`
work pool from deployments/work-pools/process.json, the deployments of deployments/prefect.yaml,
and worker processes. Shards run as flow runs of the per-shard deployment, each executed by a
worker; the results must equal local mode's."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.oracle import build_oracle_model, oracle_tables, write_oracle_dataset
from tests.prefect_server import PREFECT, REPO, Cluster, read_report as _read_report, wait_for as _wait
from tests.report_checks import check_inference


def _detections(report: dict) -> dict[str, list]:
    return {v["variant"]: sorted(_read_report(v["detections"]), key=json.dumps) for v in report["variants"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    cluster.spawn("server", PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(cluster.port))

    def healthy() -> bool:
        try:
            return httpx.get(f"{cluster.api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait(healthy, 90, "the Prefect server to be healthy")
        for pool, kind in (("quantbench-process", "process"), ("quantbench-docker", "docker"), ("quantbench-k8s", "kubernetes")):
            cluster.run(PREFECT, "work-pool", "create", pool, "--type", kind,
                        "--base-job-template", str(REPO / "deployments" / "work-pools" / f"{kind}.json"))
        cluster.run(PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(REPO / "deployments" / "prefect.yaml"))
        cluster.run(str(Path(sys.executable).with_name("quantbench")), "crash-detection", "install")
        yield cluster
    finally:
        for process in reversed(cluster.processes):
            cluster.kill(process)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("distributed-case")
    annotations = write_oracle_dataset(root / "data", [(640, 480), (480, 640), (800, 600), (300, 200)] * 3, seed=5)
    model = build_oracle_model(root / "model", oracle_tables(annotations), None)
    return {"model": str(model), "annotations": str(annotations), "images": str(annotations.parent),
            "variants": ["float32", "int8"], "latency_images": 3, "root": root}


@pytest.fixture(scope="module")
def slow_case(tmp_path_factory) -> dict:
    """24 large images (~0.1 s each: the oracle's conv at full resolution), one shard per variant:
    a shard runs for seconds, so a kill seen Running lands before its output is stored."""
    root = tmp_path_factory.mktemp("distributed-slow")
    annotations = write_oracle_dataset(root / "data", [(960, 720)] * 24, seed=7)
    model = build_oracle_model(root / "model", oracle_tables(annotations), None)
    return {"model": str(model), "annotations": str(annotations), "images": str(annotations.parent),
            "variants": ["float32", "int8"], "latency_images": 3, "root": root}


def _config(case: dict, store: Path, **changes) -> dict:
    config = {k: v for k, v in case.items() if k != "root"}
    return {**config, "store": str(store), **changes}


def test_the_deployments_are_registered_with_the_nightly_schedule(cluster):
    nightly = cluster.get("/deployments/name/quantbench-benchmark/nightly")
    [schedule] = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC" and schedule["active"]
    assert nightly["work_pool_name"] == "quantbench-process"
    assert nightly["parameters"]["config"]["execution"] == "deployment" and nightly["parameters"]["config"]["fail_on_regression"] is True
    shard = cluster.get("/deployments/name/quantbench-shard/shard")
    assert shard["entrypoint"] == "flows/shard.py:shard_flow"
    assert shard["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]


def test_the_container_work_pools_accept_their_job_templates(cluster):
    docker = cluster.get("/work_pools/quantbench-docker")["base_job_template"]
    kubernetes = cluster.get("/work_pools/quantbench-k8s")["base_job_template"]
    (container,) = kubernetes["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert docker["job_configuration"]["image"] == container["image"] == "quantbench:full"
    assert kubernetes["variables"]["properties"]["memory_request"]["default"] == "4Gi" and kubernetes["job_configuration"]["namespace"] == "quantbench"
    assert all("QUANTBENCH_STORE" in pool["variables"]["properties"]["env"]["default"] for pool in (docker, kubernetes))


def _post(url: str, body: dict, attempts: int = 5) -> httpx.Response:
    """POST to the Prefect API as Prefect's own client does: a 503 (the server's "errors clients can
    retry on", e.g. its SQLite database busy under load) or a 429 is retried after a pause, a bounded
    number of times."""
    for attempt in range(attempts):
        response = httpx.post(url, json=body, timeout=10)
        if response.status_code not in (429, 503) or attempt == attempts - 1:
            return response
        time.sleep(1 + attempt)


def _deployment_on(cluster: Cluster, pool: str) -> str:
    """A deployment on ``pool`` of a flow of its own (no worker runs it; the shard flow's runs stay countable)."""
    flow = _post(f"{cluster.api}/flows/", {"name": "job-variable-checks"}).json()
    deployment = _post(f"{cluster.api}/deployments/", {
        "name": pool, "flow_id": flow["id"], "work_pool_name": pool, "entrypoint": "flows/shard.py:shard_flow"})
    assert deployment.status_code in (200, 201), deployment.text
    return deployment.json()["id"]


@pytest.mark.parametrize(("pool", "job_variables"), [
    ("quantbench-process", {"command": "sh -c id"}), ("quantbench-docker", {"privileged": True}),
    ("quantbench-docker", {"volumes": ["/:/host"]}), ("quantbench-k8s", {"image": "evil:latest"})])
def test_the_server_refuses_a_run_with_job_variables_its_pool_does_not_offer(cluster, pool, job_variables):
    deployment = _deployment_on(cluster, pool)
    create = f"{cluster.api}/deployments/{deployment}/create_flow_run"
    refused = _post(create, {"job_variables": job_variables})
    (key,) = job_variables
    assert refused.status_code == 422 and f"'{key}' was unexpected" in refused.json()["detail"], refused.text


def test_the_server_accepts_the_job_variables_a_pool_offers(cluster):
    # On the Docker pool, which no worker serves here: the flow run stays Scheduled.
    create = f"{cluster.api}/deployments/{_deployment_on(cluster, 'quantbench-docker')}/create_flow_run"
    job_variables = {"env": {"QUANTBENCH_STORE": "s3://bucket/runs"}, "labels": {"team": "cv"}, "mem_limit": "8g"}
    accepted = _post(create, {"job_variables": job_variables})
    assert accepted.status_code == 201 and accepted.json()["job_variables"] == job_variables, accepted.text


def test_every_shard_runs_as_a_worker_flow_run_and_results_equal_local_mode(cluster, case):
    workers = [cluster.start_worker("worker-1"), cluster.start_worker("worker-2")]
    try:
        distributed = cluster.benchmark(_config(case, case["root"] / "store-distributed", execution="deployment", shard_size=3, workers=2))
    finally:
        for worker in workers:
            cluster.kill(worker)
    local = cluster.benchmark(_config(case, case["root"] / "store-local", shard_size=3))
    assert distributed["shards"] == {"total": 8, "computed": 8, "reused": 0}
    check_inference(distributed, variants=2, shards_per_variant=4)
    # Each shard ran alone in its flow-run process: its CPU time is that process's, TensorFlow or not.
    assert all(v["inference"]["cpu_s"] > 0 for v in distributed["variants"])
    runs = cluster.flow_runs("quantbench-shard")
    assert len(runs) == 8 and all(run["state_type"] == "COMPLETED" for run in runs)
    assert all(run["work_pool_name"] == "quantbench-process" and run["parent_task_run_id"] for run in runs)
    assert [v["bbox"] for v in distributed["variants"]] == [v["bbox"] for v in local["variants"]]
    assert _detections(distributed) == _detections(local)


def test_a_diagnosis_runs_its_sweep_shards_on_the_work_pool_with_the_numbers_of_local_mode(cluster, case):
    diagnosis = {"variants": ["float32"], "diagnose": "dynamic_wi8_afp32", "diagnose_ops": 2, "diagnose_images": 6, "shard_size": 12,
                 "bootstrap_resamples": 20}
    before = {run["id"] for run in cluster.flow_runs("quantbench-shard")}
    workers = [cluster.start_worker("worker-d1"), cluster.start_worker("worker-d2")]
    try:
        distributed = cluster.benchmark(_config(case, case["root"] / "store-diagnosis", execution="deployment", **diagnosis))
    finally:
        for worker in workers:
            cluster.kill(worker)
    local = cluster.benchmark(_config(case, case["root"] / "store-diagnosis-local", **diagnosis))
    swept = [op["index"] for op in distributed["diagnosis"]["ops"]]
    assert swept and distributed["diagnosis"]["images"] == 6  # the oracle model has one quantized op or two
    runs = [run for run in cluster.flow_runs("quantbench-shard") if run["id"] not in before]
    assert all(run["state_type"] == "COMPLETED" and run["work_pool_name"] == "quantbench-process" for run in runs)
    ran = {run["parameters"]["job"]["variant"] for run in runs}
    assert {f"dynamic_wi8_afp32-float_op{index}" for index in swept} <= ran  # each swept op's shard ran as a flow run on the pool
    timings = ("build_s", "score_s")
    assert [{k: v for k, v in op.items() if k not in timings} for op in distributed["diagnosis"]["ops"]] == [
        {k: v for k, v in op.items() if k not in timings} for op in local["diagnosis"]["ops"]]
    assert distributed["diagnosis"]["errors"] == local["diagnosis"]["errors"]


def _same_shard(run: dict, other: dict) -> bool:
    """Two shard flow runs of the same (variant, shard)? (Names are only set once a run starts.)"""
    job, other_job = run["parameters"]["job"], other["parameters"]["job"]
    return (job["variant"], job["shard"]["index"]) == (other_job["variant"], other_job["shard"]["index"])


def test_a_worker_killed_mid_shard_is_found_by_its_silent_heartbeats_and_the_shard_resubmitted(cluster, slow_case):
    """The shipped settings: heartbeats every 30 s (prefect.yaml) and the crash-detection automation;
    shard_timeout_s stays at its default (3600 s), so only the heartbeats can find the dead worker."""
    shard = cluster.get("/deployments/name/quantbench-shard/shard")
    assert shard["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    [automation] = httpx.post(f"{cluster.api}/automations/filter", json={}, timeout=10).json()
    assert automation["name"] == "quantbench-crash-silent-shards" and automation["trigger"]["within"] == 90
    before = {run["id"] for run in cluster.flow_runs("quantbench-shard")}
    first = cluster.start_worker("worker-doomed")
    config = _config(slow_case, slow_case["root"] / "store-killed", execution="deployment", shard_size=24, workers=1)
    script = ("import json, sys; from flows.benchmark import BenchmarkConfig, benchmark; "
              "print(benchmark(BenchmarkConfig(**json.loads(sys.argv[1]))))")
    runner = subprocess.Popen([sys.executable, "-c", script, json.dumps(config)], env=cluster.env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait(lambda: [r for r in cluster.flow_runs("quantbench-shard", ["RUNNING"]) if r["id"] not in before], 120,
              "a shard flow run to be running on the first worker")
        [victim] = [r for r in cluster.flow_runs("quantbench-shard", ["RUNNING"]) if r["id"] not in before]
        # A dead machine: the shard's process and its worker die at once, with no chance to report.
        cluster.kill_flow_run_processes(victim["id"])
        cluster.kill(first)
        killed_at = time.time()
        replacement = cluster.start_worker("worker-replacement")
        _wait(lambda: cluster.get(f"/flow_runs/{victim['id']}")["state_type"] != "RUNNING", 240,
              "the killed shard's flow run to be marked Crashed")
        crashed_after = time.time() - killed_at
        _wait(lambda: [r for r in cluster.flow_runs("quantbench-shard") if r["id"] not in before and r["id"] != victim["id"]
                       and _same_shard(r, victim)], 60, "the shard to be submitted again")
        resubmitted_after = time.time() - killed_at
        output, _ = runner.communicate(timeout=300)
    finally:
        cluster.kill(runner)
    print(f"\ndead worker: shard flow run Crashed {crashed_after:.0f} s after the kill, resubmitted after {resubmitted_after:.0f} s")
    assert runner.returncode == 0, output[-3000:]
    victim_now = cluster.get(f"/flow_runs/{victim['id']}")
    assert victim_now["state_type"] == "CRASHED" and "No heartbeat for 90 s" in victim_now["state"]["message"]
    assert resubmitted_after <= 180  # the target with the shipped settings
    report = _read_report(output.strip().splitlines()[-1])
    runs = [r for r in cluster.flow_runs("quantbench-shard") if r["id"] not in before]
    completed = [r["name"] for r in runs if r["state_type"] == "COMPLETED"]
    assert len(completed) == len(set(completed)) == 2  # every shard completed once, the killed one by its resubmission
    assert report["shards"] == {"total": 2, "computed": 2, "reused": 0}
    assert all(v["bbox"]["AP"] == 1.0 and v["images"] == 24 for v in report["variants"])
    cluster.kill(replacement)


def test_a_run_triggered_like_the_ui_completes_with_its_report_in_the_store(cluster, case):
    workers = [cluster.start_worker("worker-ui-1"), cluster.start_worker("worker-ui-2")]
    store = case["root"] / "store ui ü"  # a path with a space and a non-ASCII character, through a deployment
    parameters = _config(case, store, execution="deployment", shard_size=4)
    try:
        output = cluster.run(PREFECT, "deployment", "run", "quantbench-benchmark/nightly", "--param", f"config={json.dumps(parameters)}")
        flow_run_id = next(word for line in output.splitlines() if "UUID" in line for word in line.split() if word.count("-") == 4)
        _wait(lambda: cluster.get(f"/flow_runs/{flow_run_id}")["state_type"] in ("COMPLETED", "FAILED", "CRASHED"), 300,
              "the triggered benchmark run to finish")
    finally:
        for worker in workers:
            cluster.kill(worker)
    assert cluster.get(f"/flow_runs/{flow_run_id}")["state_type"] == "COMPLETED"
    [report_path] = store.glob("runs/*/report.json")
    report = json.loads(report_path.read_text())
    assert report["settings"]["execution"] == "deployment" and all(v["bbox"]["AP"] == 1.0 for v in report["variants"])
