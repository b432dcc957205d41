"""A Dask cluster of containers on this host's network: one ``dask scheduler`` and N ``dask worker``
containers of a quantbench image (quantbench:slim by default), as infra/compose.yaml runs them, on
127.0.0.1 with a free scheduler port. Each container carries the test session's label
(tests/docker_engine.py), so a session's clean-up removes them even if ``stop`` is never reached.

    with ContainerCluster(workers=2, env=s3_server.env()) as cluster:
        benchmark(BenchmarkConfig(..., execution="dask", dask_address=cluster.address))

Usable from a bench as well (``from tests.dask_containers import ContainerCluster``); needs a Docker
engine (``tests.docker_engine.engine_problem()``) and the image built (``make images``).
"""
from __future__ import annotations

import os
import time
import uuid

from distributed import Client

from tests import docker_engine
from tests.prefect_server import free_port


class ContainerCluster:
    """Scheduler and single-threaded worker containers (no nanny: a worker is its container's process)."""

    def __init__(self, image: str = "quantbench:slim", workers: int = 2, env: dict[str, str] | None = None):
        self.image, self.workers, self.env = image, workers, dict(env or {})
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.prefix = f"quantbench-dask-{uuid.uuid4().hex[:8]}"
        self.containers: list[str] = []  # names, scheduler first
        self.start_s: float | None = None  # seconds from `docker run` of the scheduler to every worker registered

    def _run(self, name: str, *command: str, env: dict[str, str] | None = None) -> None:
        args = ["run", "--detach", "--network", "host", "--label", docker_engine.LABEL, "--name", name]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        docker_engine.docker(*args, self.image, *command, timeout=120)
        self.containers.append(name)

    def start(self, timeout_s: float = 180) -> str:
        """Start the containers and wait (at most ``timeout_s``) for every worker; returns the address."""
        started = time.monotonic()
        port = self.address.rsplit(":", 1)[1]
        self._run(f"{self.prefix}-scheduler", "dask", "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard")
        for index in range(1, self.workers + 1):
            self._run(f"{self.prefix}-worker-{index}", "dask", "worker", self.address, "--name", f"worker-{index}", "--host", "127.0.0.1",
                      "--nworkers", "1", "--nthreads", "1", "--no-nanny", "--no-dashboard", "--death-timeout", "60", env=self.env)
        try:
            with Client(self.address, timeout=max(10.0, timeout_s / 2)) as client:
                client.wait_for_workers(self.workers, timeout=max(10.0, timeout_s - (time.monotonic() - started)))
        except Exception as error:
            raise RuntimeError(f"the Dask containers did not come up within {timeout_s:.0f} s: {error}\n{self.logs()}") from error
        self.start_s = time.monotonic() - started
        return self.address

    def worker_processes(self) -> dict[str, dict]:
        """Per worker name: its pid (in its container's PID namespace), its PID 1's command line and the
        number of tasks it has executed."""
        def identity(dask_worker) -> dict:
            with open("/proc/1/cmdline", "rb") as init:
                return {"pid": os.getpid(), "init": init.read().split(b"\0")[0].decode(), "executed": dask_worker.state.executed_count}

        with Client(self.address, timeout=30) as client:
            names = {address: info["name"] for address, info in client.scheduler_info(n_workers=-1)["workers"].items()}
            return {names[address]: found for address, found in client.run(identity).items()}

    def logs(self, tail: int = 40) -> str:
        """The last ``tail`` lines of each container's log (dask logs to stderr)."""
        parts = []
        for name in self.containers:
            result = docker_engine.docker("logs", "--tail", str(tail), name, check=False)
            parts.append(f"--- {name}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.containers:
            docker_engine.docker("rm", "--force", *self.containers, check=False, timeout=120)
            self.containers = []

    def __enter__(self) -> "ContainerCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
