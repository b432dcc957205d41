"""Per-shard orchestration overhead of every execution mode, in one table.

    .venv/bin/python -m bench.overhead [--images 24] [--rounds 2] [--with-containers]

The same workload in every mode: the demo detector (float32 only) on the first K images of the
demo's val split (``--images``), run by the benchmark flow (``flows.benchmark``) in a process of
its own against one real Prefect server, once as K one-image shards ("many") and once as W shards
of K/W images ("few"), W = 2 shards in flight. Each run writes to a fresh store (nothing reused;
the converted model is copied in beforehand where the store is a folder), and its inference
stage's wall seconds are read from report.json (``stages.wall_s.inference``): start-up, server and
conversion are outside them.

Per-shard overhead, seconds: with W shards in flight, many takes K/W rounds of (c + o) and few one
round of (K/W)·c + o (c: compute per image, o: overhead per shard), so

    o = (T_many − T_few) × W / (K − S_few)        S_few = W shards in the few run

It holds all a shard costs beyond its images' compute: dispatch, the model's load and interpreter,
storing its output, Prefect's task or flow run, and for the pools the worker's pickup (polling every
1 s here), the process or container start and its imports. Each round runs many then few (the next
round few then many); the median over rounds is shown, with its range.

Modes: local threads (``execution="local"``, W threads); Dask (a ``dask scheduler`` and W
single-thread ``dask worker`` processes on 127.0.0.1; one unmeasured few run first warms the workers);
Dask workers in ``quantbench:slim`` containers (``--with-containers``; host networking, this run's
folder mounted at its own path); the process work pool (``execution="deployment"``, W process
workers, ``bench.performance.process_pool_server``); the Docker work pool (``--with-containers``;
``quantbench:full`` containers, a SeaweedFS S3 store holding the images, models and results, as
tests/test_docker_pool.py). The container modes are skipped, with the reason, where no Docker
engine answers or the image is missing (or lacks ``dask``).

Prints a markdown table and writes it, with the machine and the load average at start and end, to
``bench/results/overhead.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.performance import REPO, process_pool_server, table

RESULTS = REPO / "bench" / "results" / "overhead.md"
IN_FLIGHT = 2  # W: shards at once, in every mode
DASK = str(Path(sys.executable).with_name("dask"))
SLIM, FULL = "quantbench:slim", "quantbench:full"


# ---------------------------------------------------------------------------------------------
# one measurement
# ---------------------------------------------------------------------------------------------
def inference_seconds(cluster, config: dict) -> float:
    """The benchmark flow in a process of its own against the server; its inference stage, wall s."""
    report = cluster.benchmark(config, timeout=900)
    assert report["shards"]["reused"] == 0, report["shards"]
    return report["stages"]["wall_s"]["inference"]


def overhead_s(many_s: float, few_s: float, images: int) -> float:
    """Per-shard overhead, s: (T_many − T_few) × W / (K − S_few), S_few = W (module docstring)."""
    return (many_s - few_s) * IN_FLIGHT / (images - IN_FLIGHT)


def measure(mode: str, cluster, new_config, images: int, rounds: int, notes: str, warm_up: bool) -> dict:
    """``rounds`` paired (many, few) runs; ``new_config(shard_size)`` gives a fresh-store config."""
    few_size = -(-images // IN_FLIGHT)
    if warm_up:
        print(f"{mode}: warm-up run …", file=sys.stderr)
        inference_seconds(cluster, new_config(few_size))
    many, few = [], []
    for n in range(rounds):
        for size in ((1, few_size) if n % 2 == 0 else (few_size, 1)):
            seconds = inference_seconds(cluster, new_config(size))
            (many if size == 1 else few).append(seconds)
            print(f"{mode}: round {n + 1}, shards of {size}: inference {seconds:.2f} s", file=sys.stderr)
    overheads = [overhead_s(m, f, images) for m, f in zip(many, few)]
    return {"mode": mode, "overhead": statistics.median(overheads), "range": f"{min(overheads):.2f}–{max(overheads):.2f}",
            "many": statistics.median(many), "few": statistics.median(few), "notes": notes}


def skipped(mode: str, reason: str) -> dict:
    print(f"{mode}: skipped: {reason}", file=sys.stderr)
    return {"mode": mode, "notes": f"skipped: {reason}"}


def attempted(mode: str, measurement) -> dict:
    """An optional mode's row: ``measurement()``, or its failure in one line (the traceback to stderr)."""
    try:
        return measurement()
    except Exception as error:  # noqa: BLE001 — an optional mode's failure is reported, the other rows kept
        traceback.print_exc()
        last = ([line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__])[-1]
        return {"mode": mode, "notes": f"failed: {last[:160]}"}


# ---------------------------------------------------------------------------------------------
# the workload
# ---------------------------------------------------------------------------------------------
class Workload:
    """The demo's val images and a fresh folder store per run, seeded with the converted model."""

    def __init__(self, work: Path, images: int):
        from demo import synthetic

        self.work, self.images, self.runs = work, images, 0
        self.annotations = synthetic.generate(work / "demo-data", synthetic.VAL)
        self.models: Path | None = None  # the first run's models/ folder, copied into each later store

    def config(self, shard_size: int, **execution) -> dict:
        """A run's config: a fresh folder store unless ``execution`` names a store of its own."""
        self.runs += 1
        if "store" not in execution:
            store = self.work / "stores" / f"run-{self.runs}"
            store.mkdir(parents=True)
            store.chmod(0o777)  # container workers write as their image's user
            if self.models:
                shutil.copytree(self.models, store / "models")
                for path in (store / "models").rglob("*"):  # stored 0600 (atomic writes): readable by container workers
                    path.chmod(0o755 if path.is_dir() else 0o644)
            else:
                self.models = store / "models"
            execution = {**execution, "store": str(store)}
        return {"annotations": str(self.annotations), "images": str(self.annotations.parent), "limit": self.images,
                "variants": ["float32"], "shard_size": shard_size, "workers": IN_FLIGHT, "latency_images": 1,
                "bootstrap_resamples": 20, **execution}


# ---------------------------------------------------------------------------------------------
# Dask: a scheduler here, workers as processes or containers
# ---------------------------------------------------------------------------------------------
class DaskCluster:
    """A ``dask scheduler`` on 127.0.0.1 and single-thread workers (no nanny), as tests/test_dask.py
    starts them; with ``image``, each worker is a container of it (host network, ``mount`` at its
    own path)."""

    def __init__(self, root: Path, image: str | None = None, mount: Path | None = None):
        from tests.prefect_server import free_port

        self.root, self.image, self.mount = root, image, mount
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_TEMPORARY_DIRECTORY": str(root)}
        self.processes: list[subprocess.Popen] = []
        self.containers: list[str] = []
        root.mkdir(parents=True, exist_ok=True)
        self._spawn("scheduler", DASK, "scheduler", "--host", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1], "--no-dashboard")

    def _spawn(self, name: str, *command: str) -> None:
        with open(self.root / f"{name}.log", "wb") as log:
            self.processes.append(subprocess.Popen(command, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True))

    def start_workers(self, count: int) -> None:
        """``count`` workers, then wait (at most 90 s) until the scheduler has them all."""
        from distributed import Client

        for n in range(1, count + 1):
            worker = ["dask", "worker", self.address, "--name", f"worker-{n}", "--host", "127.0.0.1", "--nworkers", "1",
                      "--nthreads", "1", "--no-nanny", "--no-dashboard", "--death-timeout", "60"]
            if self.image is None:
                self._spawn(f"worker-{n}", DASK, *worker[1:])
                continue
            from tests import docker_engine

            started = docker_engine.docker("run", "-d", "--rm", "--network", "host", "--label", docker_engine.LABEL,
                                           "-v", f"{self.mount}:{self.mount}", "-e", "DASK_TEMPORARY_DIRECTORY=/tmp",
                                           "-e", "QUANTBENCH_CACHE=/tmp/quantbench-cache", self.image, *worker, timeout=120)
            self.containers.append(started.stdout.strip())
        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(count, timeout=90)

    def stop(self) -> None:
        if self.containers:
            from tests import docker_engine

            docker_engine.docker("rm", "-f", *self.containers, check=False)
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def dask_mode(mode: str, cluster, workload: Workload, args, image: str | None = None) -> dict:
    dask = DaskCluster(workload.work / ("dask-containers" if image else "dask"), image, workload.work)
    try:
        dask.start_workers(IN_FLIGHT)
        where = f"in {image} containers, scheduler here" if image else "on 127.0.0.1"
        return measure(mode, cluster, lambda size: workload.config(size, execution="dask", dask_address=dask.address),
                       args.images, args.rounds, f"{IN_FLIGHT} single-thread workers {where}; warm (one unmeasured run first)", True)
    finally:
        dask.stop()


# ---------------------------------------------------------------------------------------------
# containers
# ---------------------------------------------------------------------------------------------
def container_problem(image: str, *probe: str) -> str | None:
    """Why containers of ``image`` cannot run here (no engine, no image, ``probe`` fails), or None."""
    from tests import docker_engine

    problem = docker_engine.engine_problem()
    if problem:
        return problem
    if docker_engine.docker("image", "inspect", image, check=False, timeout=60).returncode != 0:
        return f"no {image} image (make images)"
    if probe:
        result = docker_engine.run(image, *probe, timeout=120)
        if result.returncode != 0:
            return f"{image} cannot run `{' '.join(probe)}` ({(result.stderr.strip().splitlines() or ['failed'])[-1][:120]})"
    return None


@contextlib.contextmanager
def docker_pool(cluster, workload: Workload):
    """SeaweedFS S3 holding the demo images, the ``quantbench-docker`` pool, the shard deployment on
    it and a docker worker; yields ``shard_size -> config`` (S3 store, fresh prefix per run). The S3
    keys reach the containers as references to Secret blocks, as tests/test_docker_pool.py does."""
    from tests import docker_engine
    from tests.prefect_server import PREFECT
    from tests.s3server import running_s3_server

    blocks = {"AWS_ACCESS_KEY_ID": "overhead-s3-access-key-id", "AWS_SECRET_ACCESS_KEY": "overhead-s3-secret-access-key"}
    (workload.work / "s3").mkdir()
    saved = dict(os.environ)
    with running_s3_server(workload.work / "s3") as s3:
        os.environ.update(s3.env())  # this process reads the reports from S3
        code_dir = cluster.env["QUANTBENCH_CODE_DIR"]
        cluster.env.update(s3.env())
        worker = None
        try:
            cluster.run(sys.executable, "-c", (
                "import json, os, sys; from prefect.blocks.system import Secret\n"
                "for name, block in json.loads(sys.argv[1]).items(): Secret(value=os.environ[name]).save(block, overwrite=True)"),
                json.dumps(blocks))
            cluster.run(sys.executable, "-c", (
                "import sys; from pathlib import Path; from tasks.store.object_store import open_store\n"
                "store = open_store('s3://quantbench/data')\n"
                "for path in Path(sys.argv[1]).iterdir(): store.write_bytes(path.name, path.read_bytes())"),
                str(workload.annotations.parent))
            cluster.run(PREFECT, "work-pool", "create", "quantbench-docker", "--type", "docker",
                        "--base-job-template", str(REPO / "deployments" / "work-pools" / "docker.json"))
            cluster.env["QUANTBENCH_CODE_DIR"] = "/opt/quantbench"  # the images' WORKDIR (prefect.yaml pull step)
            cluster.run(PREFECT, "--no-prompt", "deploy", "--prefect-file", str(REPO / "deployments" / "prefect.yaml"),
                        "--name", "shard", "--pool", "quantbench-docker")
            worker = cluster.spawn("docker-worker", PREFECT, "worker", "start", "--pool", "quantbench-docker", "--type", "docker",
                                   "--name", "docker-worker")
            env = {"AWS_ENDPOINT_URL": s3.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1",
                   **{name: f"{{{{ prefect.blocks.secret.{block} }}}}" for name, block in blocks.items()}}

            def config(shard_size: int) -> dict:
                return {**workload.config(shard_size, store=f"s3://quantbench/run-{workload.runs + 1}", execution="deployment",
                                          job_variables={"env": env, "labels": docker_engine.LABELS}),
                        "annotations": f"s3://quantbench/data/{workload.annotations.name}", "images": "s3://quantbench/data"}
            yield config
        finally:
            if worker:
                cluster.kill(worker)
            with contextlib.suppress(AssertionError):  # an engine gone mid-run: the error on its way out is the one to report
                docker_engine.remove_containers()
            cluster.env["QUANTBENCH_CODE_DIR"] = code_dir
            os.environ.clear()
            os.environ.update(saved)


def docker_pool_mode(cluster, workload: Workload, args) -> dict:
    with docker_pool(cluster, workload) as config:
        return measure("Docker work pool", cluster, config, args.images, args.rounds,
                       "1 docker worker polling every 1 s; each shard a flow run in a fresh container; S3 store", False)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("prefect", "prefect-dask", "distributed", "ai-edge-litert"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return f"Python {sys.version.split()[0]}, " + ", ".join(found)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="K: demo images, run as K one-image shards and as 2 shards (default 24)")
    parser.add_argument("--rounds", type=int, default=2, help="paired (many, few) runs per mode; the median is shown (default 2)")
    parser.add_argument("--with-containers", action="store_true", help="also Dask workers in containers and the Docker work pool")
    parser.add_argument("--skip-pool", action="store_true", help="skip the process work pool (the slowest mode)")
    args = parser.parse_args(argv)
    if args.images <= IN_FLIGHT or args.rounds < 1:
        parser.error(f"--images must exceed {IN_FLIGHT} and --rounds be at least 1")

    began, load_start = time.perf_counter(), load_average()
    work = Path(tempfile.mkdtemp(prefix="quantbench-overhead-"))
    work.chmod(0o755)
    workload = Workload(work, args.images)
    rows = []
    with process_pool_server(work / "cluster") as cluster:
        print("local threads …", file=sys.stderr)
        rows.append(measure("local threads", cluster, lambda size: workload.config(size, execution="local"), args.images,
                            args.rounds, f"{IN_FLIGHT} threads of the flow's process", False))
        rows.append(dask_mode("Dask, worker processes", cluster, workload, args))
        if args.with_containers:
            problem = container_problem(SLIM, "dask", "--version")
            mode = "Dask, workers in containers"
            rows.append(skipped(mode, problem) if problem else attempted(mode, lambda: dask_mode(mode, cluster, workload, args, SLIM)))
        if args.skip_pool:
            rows.append(skipped("process work pool", "not asked for (--skip-pool)"))
        else:
            workers = [cluster.start_worker(f"overhead-worker-{n}") for n in range(1, IN_FLIGHT + 1)]
            try:
                rows.append(measure("process work pool", cluster, lambda size: workload.config(size, execution="deployment"),
                                    args.images, args.rounds, f"{IN_FLIGHT} process workers polling every 1 s; each shard a flow "
                                    "run in a fresh process", False))
            finally:
                for worker in workers:
                    cluster.kill(worker)
        if args.with_containers:
            problem = container_problem(FULL)
            rows.append(skipped("Docker work pool", problem) if problem else
                        attempted("Docker work pool", lambda: docker_pool_mode(cluster, workload, args)))
        if not args.with_containers:
            rows += [skipped(mode, "not asked for (--with-containers)") for mode in ("Dask, workers in containers", "Docker work pool")]

    few_size = -(-args.images // IN_FLIGHT)
    text = "\n".join([
        "# Per-shard orchestration overhead by execution mode",
        "",
        f"`python -m bench.overhead --images {args.images} --rounds {args.rounds}{' --with-containers' if args.with_containers else ''}` "
        f"on {cpu_name()}, {len(os.sched_getaffinity(0))} usable CPUs (a shared VM); {versions()}.",
        f"Load average (1, 5, 15 min) at start {load_start}, at end {load_average()}; {time.perf_counter() - began:.0f} s in all.",
        "",
        f"Workload: the demo detector (float32) on the first K = {args.images} demo val images, as K one-image shards (many) "
        f"and as {IN_FLIGHT} shards of {few_size} (few), W = {IN_FLIGHT} shards in flight, one real Prefect server, each run a "
        "process of its own with a fresh store. Inference: the inference stage's wall seconds from report.json "
        f"(median of {args.rounds} rounds). Per-shard overhead o = (T_many − T_few) × W / (K − S_few), S_few = W = {IN_FLIGHT}: "
        "the median over rounds of each round's pair, with its range.",
        "",
        table(rows, [("mode", "mode", ""), ("overhead", "per-shard overhead s", ".2f"), ("range", "range s", ""),
                     ("many", f"inference s, {args.images} shards", ".2f"), ("few", f"inference s, {IN_FLIGHT} shards", ".2f"),
                     ("notes", "notes", "")]),
        "",
    ])
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
