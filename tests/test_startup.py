"""``quantbench run``'s start-up (issue 20): without PREFECT_API_URL the CLI starts Prefect's ephemeral
server early (``flows.prefect_api``) and without automations or block registration, unless the user set
those settings (environment or Prefect profile: the user's setting wins); with PREFECT_API_URL the run is
recorded on that server and no ephemeral server is started. The demo run's flow and task runs, artifacts
and events in the ephemeral server's database: tests/test_demo.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.prefect_server import PREFECT, REPO, Cluster, wait_for

# Starts the server as `quantbench run` does, then asks it (GET /api/admin/settings) what it runs with.
SERVER_SETTINGS = """
import json, os, httpx
from flows.prefect_api import ONE_RUN_SERVER_SETTINGS, start_ephemeral_server
start = start_ephemeral_server()
start.wait()
server = httpx.get(start.server.api_url + "/admin/settings", timeout=30).json()["server"]
print(json.dumps({"triggers": server["services"]["triggers"]["enabled"], "register_blocks": server["register_blocks_on_start"],
                  "memoize_blocks": server["memoize_block_auto_registration"],
                  "client_env": sorted(name for name in os.environ if name in ONE_RUN_SERVER_SETTINGS)}))
"""


def _ephemeral_server_settings(tmp_path, **env) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "home"),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **env}
    for name in ("PREFECT_API_URL", "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "PREFECT_SERVER_REGISTER_BLOCKS_ON_START",
                 "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION", "QUANTBENCH_FAST_START"):
        if name not in env:
            environment.pop(name, None)
    result = subprocess.run([sys.executable, "-c", SERVER_SETTINGS], env=environment, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_ephemeral_server_runs_without_automations_and_block_registration(tmp_path):
    settings = _ephemeral_server_settings(tmp_path)
    assert settings["triggers"] is False and settings["register_blocks"] is False and settings["memoize_blocks"] is False
    assert settings["client_env"] == []  # spawned: the settings are out of the CLI's environment again


def test_a_users_own_settings_win_from_the_environment_and_the_profile(tmp_path):
    home = tmp_path / "home"
    profile = subprocess.run([PREFECT, "config", "set", "PREFECT_SERVER_REGISTER_BLOCKS_ON_START=true"],
                             env={**os.environ, "PREFECT_HOME": str(home)}, capture_output=True, text=True, timeout=120)
    assert profile.returncode == 0, profile.stderr
    settings = _ephemeral_server_settings(tmp_path, PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED="true")
    assert settings["triggers"] is True  # the environment's
    assert settings["register_blocks"] is True  # the profile's
    assert settings["memoize_blocks"] is False  # not set by the user: the CLI's
    assert settings["client_env"] == ["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"]  # the user's variable stays


def test_fast_start_off_keeps_prefects_defaults(tmp_path):
    """``QUANTBENCH_FAST_START=0``: no early server (Prefect starts it when the flow needs it, with its defaults)."""
    script = "from flows.prefect_api import start_ephemeral_server; print(start_ephemeral_server())"
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "home"), "QUANTBENCH_FAST_START": "0"}
    environment.pop("PREFECT_API_URL", None)
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "None", result.stderr[-3000:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("startup-server"))
    try:
        cluster.start_server()
        yield cluster
    finally:
        cluster.stop()


def test_with_prefect_api_url_the_run_is_recorded_there_and_no_ephemeral_server_starts(cluster, tmp_path):
    command = [sys.executable, "-m", "flows.cli", "run", "--store", str(tmp_path / "store"), "--limit", "8", "--variants", "float32",
               "--latency-images", "2", "--bootstrap-resamples", "20"]
    result = subprocess.run(command, env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting temporary server" not in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("report: file://")
    [run] = cluster.flow_runs("quantbench-benchmark")
    assert run["state"]["type"] == "COMPLETED"

    def task_runs() -> list[dict]:  # recorded by the server from the run's events, as they arrive
        return httpx.post(f"{cluster.api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}, timeout=10).json()

    def all_recorded_completed() -> bool:
        tasks = task_runs()
        names = {task["name"] for task in tasks}
        return {"convert-float32", "infer-float32-shard-0"} <= names and {task["state_type"] for task in tasks} == {"COMPLETED"}

    wait_for(all_recorded_completed, 60, "the run's task runs on the server, all completed")
