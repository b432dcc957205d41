"""What ``quantbench run``'s fixed start-up costs, before and after ``flows.prefect_api`` (issue 20).

Each round runs a probe in a fresh Python process that starts up as ``quantbench run`` does on the
demo: import ``flows.cli``, (fast start: start the ephemeral server), import ``flows.benchmark`` and
check the demo's inputs (``validate``: imports TensorFlow), then run a one-task flow against the
ephemeral Prefect server. Modes: ``prefect`` (``QUANTBENCH_FAST_START=0``: Prefect's defaults, the
server started when the flow first needs the API, as before) and ``fast`` (the CLI's default now).
Each is measured on an existing Prefect database and on a new one (a new ``PREFECT_HOME``: the first
run migrates it). A second probe times the ephemeral server alone (``SubprocessASGIServer.start``,
imports done) with either mode's settings, and the server process's CPU time (the load-independent
part). Then ``quantbench run --quiet`` on the demo itself, N rounds per mode: report.json's
``stages.wall_s.startup``. All times in seconds, medians of N rounds; prints a markdown table.

    python bench/startup.py --rounds 3 --demo-rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
marks = {}
import flows.cli
from flows.prefect_api import start_ephemeral_server
marks["import flows.cli"] = time.perf_counter() - t0
t = time.perf_counter()
server = start_ephemeral_server()
marks["start_ephemeral_server() (fast: imports prefect.server)"] = time.perf_counter() - t
t = time.perf_counter()
from flows.benchmark import BenchmarkConfig, validate
validate(BenchmarkConfig())
marks["import flows.benchmark, validate (TensorFlow)"] = time.perf_counter() - t
t = time.perf_counter()
if server:
    server.wait()
marks["wait for the server"] = time.perf_counter() - t
from prefect import flow, task

@task
def first():
    return time.perf_counter()

@flow
def probe():
    marks["flow call to flow body (server start when not yet)"] = time.perf_counter() - t
    return first()

t = time.perf_counter()
done = probe()
marks["first task done"] = done - t0
marks["flow done"] = time.perf_counter() - t0
print("MARKS " + json.dumps(marks))
"""

SERVER_ALONE = r"""
import json, resource, time
import flows.cli
from flows.prefect_api import apply_one_run_server_settings, fast_start_enabled
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings
if fast_start_enabled():
    apply_one_run_server_settings(get_current_settings())
t = time.perf_counter()
server = SubprocessASGIServer()
server.start()
elapsed = time.perf_counter() - t
t = time.perf_counter()
server.stop()
stopped = time.perf_counter() - t
children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the server process, reaped by stop()
print("MARKS " + json.dumps({"server start alone": elapsed, "server stop alone": stopped,
                             "server process CPU time (user+sys)": children.ru_utime + children.ru_stime}))
"""


def _probe(script: str, home: Path, fast: bool) -> dict[str, float]:
    """One fresh process: its marks, and its wall time to exit (server stop included) as ``process total``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(home), "QUANTBENCH_FAST_START": "1" if fast else "0",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    start, cpu = time.perf_counter(), _children_cpu()
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    total, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if result.returncode != 0:
        raise SystemExit(f"probe failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("MARKS "))
    marks = json.loads(line[len("MARKS "):])
    prefix = "server alone: " if "server start alone" in marks else ""
    return {**marks, f"{prefix}process total": total, f"{prefix}CPU time, process and server (user+sys)": cpu}


def _children_cpu() -> float:
    """CPU seconds of the ended child processes, theirs included (the server, reaped by the probe)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _add(columns: dict[str, dict[str, list[float]]], column: str, marks: dict[str, float]) -> None:
    """Add one process's marks to the table; each also goes to stderr as it comes (a long bench keeps them if cut short)."""
    print(json.dumps({column: marks}), file=sys.stderr, flush=True)
    for row, value in marks.items():
        if value is not None:  # a report without that stage
            columns.setdefault(column, {}).setdefault(row, []).append(value)


def measure(rounds: int, work: Path) -> dict[str, dict[str, list[float]]]:
    """{column: {row: [seconds per round]}}; modes interleaved round by round (the machine's load drifts)."""
    columns: dict[str, dict[str, list[float]]] = {}
    for mode, fast in (("prefect", False), ("fast", True)):  # warm-up: the demo cache, each mode's database
        _probe(PROBE, work / f"home-{mode}", fast)
    for index in range(rounds):
        for mode, fast in (("prefect", False), ("fast", True)):
            for database, home in (("existing DB", work / f"home-{mode}"), ("new DB", work / f"new-{mode}-{index}")):
                _add(columns, f"{mode}, {database}", _probe(PROBE, home, fast))
            _add(columns, f"{mode}, existing DB", _probe(SERVER_ALONE, work / f"home-{mode}", fast))
            print(f"round {index + 1}/{rounds} {mode} done", file=sys.stderr)
    return columns


def _demo_run(home: Path, store: Path, fast: bool) -> dict[str, float]:
    """``quantbench run`` on the demo in a fresh process: report.json's ``stages`` (``startup``: process start
    → the flow's first line) and the process's wall time."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(home), "QUANTBENCH_FAST_START": "1" if fast else "0"}
    env.pop("PREFECT_API_URL", None)
    start, cpu = time.perf_counter(), _children_cpu()
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--quiet", "--store", str(store)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    total, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if result.returncode != 0:
        raise SystemExit(f"quantbench run failed ({result.returncode}):\n{result.stderr[-4000:]}")
    report = json.loads(Path(unquote(urlparse(result.stdout.strip().splitlines()[-1].removeprefix("report: ")).path)).read_text())
    stages = report["stages"]
    return {"demo: stages.startup (process start to the flow's first line)": stages["wall_s"]["startup"],
            "demo: first shard after process start": stages["first_shard_after_process_start_s"], "demo: process total": total,
            "demo: CPU time, process and server (user+sys)": cpu}


def measure_demo(rounds: int, work: Path) -> dict[str, dict[str, list[float]]]:
    """``quantbench run`` on the demo, both modes interleaved, each on its existing database (warmed up first)."""
    columns: dict[str, dict[str, list[float]]] = {}
    for index in range(rounds + 1):
        for mode, fast in (("prefect", False), ("fast", True)):
            marks = _demo_run(work / f"home-{mode}", work / "store", fast)
            if index:  # round 0: the warm-up (demo data, databases)
                _add(columns, f"{mode}, existing DB", marks)
            print(f"demo round {index}/{rounds} {mode} done", file=sys.stderr)
    return columns


def table(columns: dict[str, dict[str, list[float]]]) -> str:
    names = list(columns)
    rows = list(dict.fromkeys(row for column in columns.values() for row in column))
    lines = ["| seconds (median) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for row in rows:
        cells = [f"{statistics.median(columns[name][row]):.2f}" if row in columns[name] else "" for name in names]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    import prefect

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, Prefect {prefect.__version__}; "
            f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="probe rounds per mode and database (median reported)")
    parser.add_argument("--demo-rounds", type=int, default=3, help="rounds of `quantbench run` on the demo per mode (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quantbench-startup-") as work:
        os.environ.setdefault("QUANTBENCH_CACHE", str(Path(work) / "cache"))
        columns = measure(args.rounds, Path(work)) if args.rounds else {}
        for column, rows in (measure_demo(args.demo_rounds, Path(work)) if args.demo_rounds else {}).items():
            columns.setdefault(column, {}).update(rows)
    print(table(columns))
    print(f"\n{args.rounds} probe rounds, {args.demo_rounds} demo rounds; {machine()}")


if __name__ == "__main__":
    main()
