"""Page load times of ``quantbench serve`` over a store of many runs, local and S3.

    .venv/bin/python -m bench.serve --template STORE [--runs 1000] [--rounds 5]

Builds a store of ``--runs`` runs from the real runs in ``--template`` (a store with at least one
complete run, e.g. the three nightly runs that tests/conftest.py's ``nightly_runs`` makes): run i
is template run i mod k with a new run id, a creation time one day after the previous run's and
``compared_with`` the previous run; its report.json is the template's (with those fields changed), its
history object is written from it (``tasks.publish.history.write_history``), and every other
object a run folder holds (report.csv/md/html, plots, detections) is there under its usual key
with a few bytes of content: a listing costs per key, the site reads none of them for these pages.
The same store is uploaded to a SeaweedFS S3 server on 127.0.0.1 (``weed mini``, the tests' server).

For each store: ``quantbench serve`` is started as a user starts it, then each page is fetched over
HTTP: the first load (nothing cached: every report.json, or every history object, read) and then
``--rounds`` loads (median and max), each more than ``LISTING_S`` after the previous one, so that
each lists the store's run folders and history objects again (``tasks.browse.catalog``): ``/`` (all runs, newest first), ``/api/runs``, one run's page
(first: rendered with its plots; then from the page cache), the model's nightly view (every run of
the model location), and two runs compared. Prints a markdown table and writes it, with the machine
and the load average, to ``bench/results/serve.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.browse.catalog import LISTING_S  # noqa: E402
from tasks.publish.history import write_history  # noqa: E402
from tasks.publish.results import list_runs  # noqa: E402
from tasks.store.object_store import LocalStore, open_store  # noqa: E402
from tests.s3server import running_s3_server  # noqa: E402
from tests.serve_process import serving  # noqa: E402

PLACEHOLDERS = ("report.csv", "report.md", "report.html", "plots/accuracy_vs_size.png", "plots/accuracy_vs_size.svg",
                "plots/accuracy_vs_latency.png", "plots/accuracy_vs_latency.svg", "plots/accuracy_vs_energy.png",
                "plots/accuracy_vs_energy.svg", "plots/latency_distribution.png", "plots/category_delta_ap.png",
                "plots/history_ap.png")


def build_store(template: Path, runs: int, target: Path) -> list[dict]:
    """Write ``runs`` runs made from the template's complete runs into the local store ``target``."""
    complete = [s.report for s in reversed(list_runs(LocalStore(template))) if s.complete]  # oldest first
    if not complete:
        raise SystemExit(f"no complete run in {template}")
    store = LocalStore(target)
    start = datetime(2024, 1, 1, 2, 0, tzinfo=timezone.utc)
    reports, previous = [], None
    for i in range(runs):
        report = json.loads(json.dumps(complete[i % len(complete)]))
        created = start + timedelta(days=i)
        report["run_id"] = f"{created:%Y%m%dT%H%M%SZ}-bench000-{i:04x}"
        report["created"] = created.isoformat(timespec="seconds")
        report["compared_with"] = previous
        previous = report["run_id"]
        reports.append(report)

    def write(report: dict) -> None:
        folder = f"runs/{report['run_id']}"
        for name in PLACEHOLDERS + tuple(f"detections/{v['variant']}.json" for v in report["variants"]):
            store.write_bytes(f"{folder}/{name}", b"[]" if name.endswith(".json") else b"placeholder")
        write_history(store, report)
        store.write_json(f"{folder}/report.json", report, indent=1)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, reports))
    return reports


def upload(source: Path, url: str) -> None:
    target = open_store(url)
    files = [p for p in source.rglob("*") if p.is_file()]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: target.write_bytes(p.relative_to(source).as_posix(), p.read_bytes()), files))


def timed(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = httpx.get(url, timeout=600)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
    return elapsed, len(response.content)


def measure(base: str, reports: list[dict], rounds: int) -> list[tuple[str, float, float, float, int]]:
    """(page, first load s, median s, max s, bytes) per page; the first load comes first."""
    newest, before = reports[-1], reports[-2]
    pages = [("/ (all runs)", "/"), ("/api/runs", "/api/runs"), ("/runs/<id>", f"/runs/{newest['run_id']}"),
             ("/models/<digest>", f"/models/{newest['model']['digest'][:12]}"),
             ("/compare", f"/compare?a={before['run_id']}&b={newest['run_id']}")]
    rows = []
    for name, path in pages:
        first, size = timed(base + path)
        again = []
        for _ in range(rounds):
            time.sleep(LISTING_S + 0.2)  # each load lists the store again
            again.append(timed(base + path)[0])
        rows.append((name, first, statistics.median(again), max(again), size))
    return rows


def table(results: dict[str, list], runs: int) -> str:
    lines = [f"| store ({runs} runs) | page | first load s | then: median s | max s | bytes |", "|---|---|--:|--:|--:|--:|"]
    for store, rows in results.items():
        lines += [f"| {store} | {name} | {first:.2f} | {median:.3f} | {worst:.3f} | {size:,} |" for name, first, median, worst, size in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, required=True, help="a store with complete runs to copy")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="quantbench-serve-bench-") as folder:
        local = Path(folder) / "store"
        started = time.perf_counter()
        reports = build_store(args.template, args.runs, local)
        print(f"built {args.runs} runs in {time.perf_counter() - started:.0f} s", flush=True)
        results = {}
        with serving(str(local)) as base:
            results["local folder"] = measure(base, reports, args.rounds)
        print(table(results, args.runs), flush=True)
        (Path(folder) / "s3").mkdir()
        with running_s3_server(Path(folder) / "s3") as server:
            os.environ.update(server.env())
            url = f"s3://{server.bucket}/bench"
            started = time.perf_counter()
            upload(local, url)
            print(f"uploaded to {url} in {time.perf_counter() - started:.0f} s", flush=True)
            with serving(url, server.env()) as base:
                results["S3 (SeaweedFS on 127.0.0.1)"] = measure(base, reports, args.rounds)
    text = table(results, args.runs)
    print(text)
    machine = (f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"load average {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    out = REPO / "bench" / "results" / "serve.md"
    out.write_text(f"# quantbench serve: page load times over {args.runs} runs\n\n"
                   f"`python -m bench.serve --template <store> --runs {args.runs} --rounds {args.rounds}` ({machine}).\n\n{text}\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
