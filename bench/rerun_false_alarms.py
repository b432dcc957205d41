"""Back-to-back reruns of one model into one store: how often does the nightly loop cry wolf?

Runs ``quantbench run`` (the embedded demo unless ``--model``) N times into a fresh store, each
compared with the one before (same model, same data: every regression reported is a false
alarm), and prints per run the regressions found and each variant's latency p50 ratio to the
previous run — the run-to-run spread the latency criterion has to sit above.

    .venv/bin/python bench/rerun_false_alarms.py --runs 11 [--model DIR] [--limit N]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks.store.object_store import split_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="runs (the first has nothing to compare with)")
    parser.add_argument("--model", help="model (default: the embedded demo)")
    parser.add_argument("--limit", type=int, help="first N images only")
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="quantbench-reruns-")) / "store"
    extra = [*(["--model", args.model] if args.model else []), *(["--limit", str(args.limit)] if args.limit else [])]
    previous, alarms, ratios = None, 0, []
    for n in range(args.runs):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--store", str(store), *extra],
                                capture_output=True, text=True, check=True)
        report_store, key = split_url(result.stdout.strip().splitlines()[-1].removeprefix("report: "))
        report = report_store.read_json(key)
        p50 = {v["variant"]: v["latency"]["p50"] for v in report["variants"]}
        line = f"run {n + 1:2d} ({time.monotonic() - started:4.0f} s): {len(report['regressions'])} regression(s)"
        if previous:
            run_ratios = {v: p50[v] / previous[v] for v in p50}
            ratios += run_ratios.values()
            line += "; p50 / previous: " + ", ".join(f"{v} {r:.2f}" for v, r in run_ratios.items())
        alarms += bool(report["regressions"])
        for regression in report["regressions"]:
            line += f"\n    {regression['variant']} {regression['metric']}: {regression['previous']:.4g} -> {regression['current']:.4g}"
        print(line, flush=True)
        previous = p50
    print(f"false alarms: {alarms} of {args.runs - 1} compared runs; latency p50 ratio to the previous run: "
          f"min {min(ratios):.2f}, max {max(ratios):.2f} (criterion: > 1 + regression_latency_rise, default 2.5, with no overlapping timing round)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
