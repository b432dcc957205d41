"""A real Prefect server for tests: ``prefect server start`` on 127.0.0.1 (SQLite under a temporary
PREFECT_HOME, with its services: triggers, actions, event persister…), and the processes started
against it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> None:
    """Poll ``condition`` every 0.5 s; fail the test if it is not truthy within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {seconds} s waiting for {what}")


class Cluster:
    """A server, its API URL, and the worker processes started against it."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {**os.environ, "PREFECT_HOME": str(root / "home"), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
                    "QUANTBENCH_CACHE": str(root / "cache"), "QUANTBENCH_CODE_DIR": str(REPO)}
        self.processes: list[subprocess.Popen] = []

    def spawn(self, name: str, *command: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        process = subprocess.Popen(command, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def start_server(self, timeout: float = 90) -> None:
        """Start ``prefect server start`` on this cluster's port; wait until it is healthy."""
        self.spawn("server", PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port))
        wait_for(self.healthy, timeout, "the Prefect server to be healthy")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def run(self, *command: str, timeout: float = 300) -> str:
        result = subprocess.run(command, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    def get(self, path: str) -> dict:
        return httpx.get(f"{self.api}{path}", timeout=10).json()

    def flow_runs(self, flow_name: str, states: list[str] | None = None) -> list[dict]:
        body = {"flows": {"name": {"any_": [flow_name]}}}
        if states:
            body["flow_runs"] = {"state": {"type": {"any_": states}}}
        return httpx.post(f"{self.api}/flow_runs/filter", json=body, timeout=10).json()

    def start_worker(self, name: str) -> subprocess.Popen:
        return self.spawn(name, PREFECT, "worker", "start", "--pool", "quantbench-process", "--name", name)

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """SIGKILL the process and everything it started (a worker and its flow-run processes)."""
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    @staticmethod
    def kill_flow_run_processes(flow_run_id: str) -> list[int]:
        """SIGKILL every process executing that flow run (PREFECT__FLOW_RUN_ID in its environment:
        a process worker runs each flow run in a process of its own, in a session of its own)."""
        marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
        killed = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if marker in environ.read_bytes().split(b"\0"):
                    os.kill(int(environ.parent.name), signal.SIGKILL)
                    killed.append(int(environ.parent.name))
            except (OSError, ProcessLookupError):
                continue
        assert killed, f"no process is running flow run {flow_run_id}"
        return killed

    def benchmark(self, config: dict, timeout: float = 400) -> dict:
        """Run the benchmark flow in a process of its own against the server; return its report."""
        script = ("import json, sys; from flows.benchmark import BenchmarkConfig, benchmark; "
                  "print(benchmark(BenchmarkConfig(**json.loads(sys.argv[1]))))")
        output = self.run(sys.executable, "-c", script, json.dumps(config), timeout=timeout)
        return read_report(output.strip().splitlines()[-1])

    def stop(self) -> None:
        """Kill every process started against the server, the server last."""
        for process in reversed(self.processes):
            self.kill(process)


def read_report(url: str) -> dict:
    """The JSON document at a store URL (a run's report.json, a variant's detections)."""
    from tasks.store.object_store import split_url

    store, key = split_url(url)
    return store.read_json(key)
