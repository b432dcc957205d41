"""quantbench's own speed, measured against the limit, in one invocation on one machine.

    .venv/bin/python -m bench.performance            # ~10 min on 2 cores; prints markdown tables

1. **Pipeline vs bare interpreter** on a detector of >= 20 ms per float32 ``invoke()``
   (``bench/detector.py``) and real COCO images (``../shared/coco-mini``, else the demo images):
   the bare loop (images decoded and resized beforehand, ``invoke()`` only, one interpreter per
   thread, W threads splitting the images) against the project's inference stage
   (``tasks.run.inference.infer_shard`` over shards of the same images, W at a time in threads, as the
   flow's local execution runs them: model load, read, decode, resize, invoke, COCO conversion,
   store), for W = 1..cores workers and T = 1..cores interpreter threads, with the decode prefetch
   on (the default) and off (the loop before it), each run decoding its own images (sharing
   off, as a one-variant run). Each configuration is measured ``--rounds`` times, interleaved
   (bare, pipeline, pipeline without prefetch), and the median is shown. Scaling efficiency:
   images/s at W workers over W x images/s at one worker (T = 1). Then both variants in one
   stage (shard-major, W = cores), decoding each image once for both (``tasks.run.prefetch.SHARED``)
   or once per variant.
2. **Evaluation**: pycocotools vs faster-coco-eval on 5,000 synthetic images (``bench/evaluation.py``).
3. **Fixed costs**: the CLI on the demo (``quantbench run``) in a process of its own: start-up
   (imports, Prefect's ephemeral server), the first shard's start, stage times, the whole process
   tree's peak RSS; model load per shard; per-shard overhead of deployment execution on a real
   process work pool (server, 2 workers, each shard a flow run in a process of its own).
4. **Memory and energy**: peak RSS of an inference worker per variant (a process that never
   imports TensorFlow: the models are built and converted in a subprocess), CPU-seconds and
   estimated joules per image (``tasks.run.energy``).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = Path(os.environ.get("QUANTBENCH_COCO_MINI", REPO.parent / "shared" / "coco-mini"))
VARIANTS = ("float32", "int8")


# ---------------------------------------------------------------------------------------------
# models and images
# ---------------------------------------------------------------------------------------------
def prepare_models(work: Path) -> dict:
    """Build the bench detector and convert it (in a subprocess: this process stays free of
    TensorFlow, so its RSS is an inference worker's). Returns {"digest", variant: local .tflite path}."""
    script = ("import json, sys; from pathlib import Path; from bench.performance import _prepare; "
              "print(json.dumps(_prepare(Path(sys.argv[1]))))")
    output = subprocess.run([sys.executable, "-c", script, str(work)], cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def _prepare(work: Path) -> dict:
    from bench.detector import build
    from tasks.model.variants import convert_variant
    from tasks.model.sources import resolve_model
    from tasks.store.object_store import split_url

    model = resolve_model(str(build(work / "model")), work / "cache")
    store = (work / "models").as_uri()
    float32 = convert_variant.fn(str(model.path), model.digest, "float32", store)
    artifacts = {"float32": float32, "int8": convert_variant.fn(str(model.path), model.digest, "int8", store, float32)}
    paths = {}
    for variant, artifact in artifacts.items():
        folder, key = split_url(artifact.url)
        paths[variant] = str(folder.local_path(key, work / "cache"))
    return {"digest": model.digest, **paths}


def bench_dataset(count: int, work: Path):
    """The first ``count`` images of coco-mini (real COCO JPEGs), else of the demo's val split."""
    from tasks.data.dataset import load_dataset

    if (COCO_MINI / "instances_train2017_subset.json").is_file():
        return load_dataset(str(COCO_MINI / "instances_train2017_subset.json"), str(COCO_MINI / "train2017"), count), "coco-mini (COCO train2017 JPEGs)"
    from demo import synthetic

    annotations = synthetic.generate(work / "demo-data", synthetic.VAL)
    return load_dataset(str(annotations), str(annotations.parent), count), "the demo's synthetic val images (no coco-mini)"


def decoded_inputs(dataset, fixed_size) -> tuple[list, float]:
    """Every image read, decoded and resized (model input batches), and the ms per image that took."""
    from tasks.data.dataset import ImageReader
    from tasks.model.preprocess import odapi_preparation
    from tasks.run.prefetch import prepare

    reader, started, preparation = ImageReader(dataset.images_url), time.perf_counter(), odapi_preparation(fixed_size)
    batches = [prepare(reader, record, preparation).batch for record in dataset.images]
    return batches, (time.perf_counter() - started) * 1000 / len(batches)


# ---------------------------------------------------------------------------------------------
# 1. pipeline vs bare
# ---------------------------------------------------------------------------------------------
def bare_images_per_s(model_path: str, batches: list, workers: int, threads: int) -> float:
    """W threads, one interpreter each (loaded and warmed before the clock), splitting ``batches``."""
    from tasks.model.runtimes import LiteRTRuntime

    runtimes = [LiteRTRuntime(Path(model_path), threads) for _ in range(workers)]
    for runtime in runtimes:
        runtime.set_input(batches[0])
        runtime.invoke()
    start = threading.Barrier(workers + 1)

    def loop(runtime, part) -> None:
        start.wait()
        for batch in part:
            runtime.set_input(batch)
            runtime.invoke()

    pool = [threading.Thread(target=loop, args=(runtime, batches[n::workers])) for n, runtime in enumerate(runtimes)]
    for thread in pool:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    return len(batches) / (time.perf_counter() - started)


def pipeline_run(jobs_for, workers: int, prefetch: int) -> tuple[float, list]:
    """The inference stage over fresh store (nothing reused): images/s and the shard outputs."""
    from tasks.run.inference import infer_shard

    jobs = jobs_for(Path(tempfile.mkdtemp(prefix="quantbench-bench-store-")).as_uri())
    images = sum(len(job.shard.images) for job in jobs)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        outputs = list(pool.map(lambda job: infer_shard(job, prefetch=prefetch), jobs))
    return images / (time.perf_counter() - started), outputs


def shard_jobs(models: dict, dataset, shard_size: int, variants: tuple[str, ...], threads: int):
    """``store_url -> [ShardJob]`` for ``variants`` over the dataset's shards, shard-major as the flow orders them."""
    from tasks.data.dataset import make_shards
    from tasks.run.inference import ShardJob

    shards = make_shards(dataset, shard_size)

    def jobs_for(store_url: str) -> list:
        return [ShardJob(variant, Path(models[variant]).as_uri(), models["digest"], dataset.annotations_digest, dataset.images_url,
                         shard, store_url, threads, 0.0, dataset.category_ids, dataset.category_ids)
                for shard in shards for variant in variants]
    return jobs_for


def pipeline_vs_bare(models: dict, dataset, batches: list, cores: int, rounds: int, shard_size: int) -> tuple[list[dict], dict]:
    from tasks.run.prefetch import SHARED

    SHARED.max_bytes = 0  # each run decodes its own images, as a run of one variant does
    rows, usage = [], {}
    for variant in VARIANTS:
        for threads in range(1, cores + 1):
            jobs_for = shard_jobs(models, dataset, shard_size, (variant,), threads)

            for workers in range(1, cores + 1):
                bare, piped, inline = [], [], []
                for _ in range(rounds):
                    bare.append(bare_images_per_s(models[variant], batches, workers, threads))
                    rate, outputs = pipeline_run(jobs_for, workers, prefetch=2)
                    piped.append(rate)
                    inline.append(pipeline_run(jobs_for, workers, prefetch=0)[0])
                    if workers == 1 and threads == 1:
                        usage.setdefault(variant, []).extend(o.usage for o in outputs)
                rows.append({"variant": variant, "W": workers, "T": threads, "bare": statistics.median(bare),
                             "pipeline": statistics.median(piped), "pipeline_no_prefetch": statistics.median(inline),
                             "ratio": statistics.median(p / b for p, b in zip(piped, bare)),
                             "ratio_no_prefetch": statistics.median(p / b for p, b in zip(inline, bare))})
                print(f"  {variant} W={workers} T={threads}: bare {rows[-1]['bare']:.1f} img/s, pipeline "
                      f"{rows[-1]['pipeline']:.1f} ({rows[-1]['ratio']:.2f}x), without prefetch "
                      f"{rows[-1]['pipeline_no_prefetch']:.1f} ({rows[-1]['ratio_no_prefetch']:.2f}x)", file=sys.stderr)
    return rows, usage


def shared_decode_gain(models: dict, dataset, cores: int, rounds: int, shard_size: int) -> dict:
    """Both variants in one stage at W = cores, T = 1: images/s (images x variants over the stage's
    wall time) decoding each image once for both variants, and once per variant."""
    from tasks.run.prefetch import SHARED

    jobs_for = shard_jobs(models, dataset, shard_size, VARIANTS, 1)
    rates = {"once": [], "per_variant": []}
    for _ in range(rounds):
        for mode, budget in (("once", 384_000_000), ("per_variant", 0)):
            SHARED.clear()
            SHARED.max_bytes = budget
            rates[mode].append(pipeline_run(jobs_for, cores, prefetch=2)[0])
    SHARED.clear()
    SHARED.max_bytes = 0
    return {mode: statistics.median(values) for mode, values in rates.items()}


def scaling(rows: list[dict], cores: int) -> list[dict]:
    """Efficiency at W = cores (T = 1): images/s at W over W x images/s at W = 1."""
    out = []
    for variant in VARIANTS:
        one = next(r for r in rows if r["variant"] == variant and r["W"] == 1 and r["T"] == 1)
        many = next(r for r in rows if r["variant"] == variant and r["W"] == cores and r["T"] == 1)
        out.append({"variant": variant, "W": cores, **{kind: many[kind] / (cores * one[kind])
                                                       for kind in ("bare", "pipeline", "pipeline_no_prefetch")}})
    return out


# ---------------------------------------------------------------------------------------------
# 3. fixed costs
# ---------------------------------------------------------------------------------------------
def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants now, MB (10^6 bytes)."""
    from tasks.run.usage import rss_bytes

    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        total += rss_bytes(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total / 1e6


def cli_run(work: Path) -> dict:
    """``quantbench run`` on the demo in a process of its own; its report, wall time and peak tree RSS."""
    store = work / "cli-store"
    started = time.perf_counter()
    process = subprocess.Popen([str(Path(sys.executable).with_name("quantbench")), "run", "--store", str(store)],
                               cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "QUANTBENCH_CACHE": str(work / "cli-cache")})
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, tree_rss_mb(process.pid))
        time.sleep(0.1)
    wall_s = time.perf_counter() - started
    output = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"quantbench run failed (exit {process.returncode}):\n{output[-2000:]}")
    url = next(line for line in output.splitlines() if line.startswith("report: ")).removeprefix("report: ")
    from tasks.store.object_store import split_url

    folder, key = split_url(url)
    return {"report": folder.read_json(key), "wall_s": wall_s, "peak_tree_rss_mb": peak}


def process_pool_overhead(work: Path) -> dict:
    """A real server, the process pool, 2 workers; the demo (20 images, shards of 5, float32 and
    int8) in deployment execution. Per shard flow run: scheduled → finished minus the shard's own
    compute (``usage`` wall): worker pickup (polling every 1 s here, 10 s by Prefect's default),
    process start and imports, Prefect's engine, storing and reporting."""
    from datetime import datetime

    with process_pool_server(work / "cluster") as cluster:
        for n in (1, 2):
            cluster.start_worker(f"bench-worker-{n}")
        store = work / "pool-store"
        report = cluster.benchmark({"execution": "deployment", "limit": 20, "shard_size": 5, "workers": 2,
                                    "variants": list(VARIANTS), "store": str(store)})
        usage = {}
        for path in (store / "shards").rglob("*.json"):
            document = json.loads(path.read_text())
            usage[f"{document['job']['variant']}-shard-{document['job']['shard']['index']}"] = document["usage"]
        overheads = []
        for run in cluster.flow_runs("quantbench-shard", ["COMPLETED"]):
            scheduled, ended = (datetime.fromisoformat(run[k]) for k in ("expected_start_time", "end_time"))
            overheads.append((ended - scheduled).total_seconds() - (usage[run["name"]]["ended"] - usage[run["name"]]["started"]))
        return {"shards": len(overheads), "overhead_median_s": statistics.median(overheads), "overhead_max_s": max(overheads),
                "worker_rss_mb": {v["variant"]: v["inference"]["peak_rss_mb"] for v in report["variants"]},
                "cpu_s_per_image": {v["variant"]: v["inference"]["cpu_s_per_image"] for v in report["variants"]}}


@contextlib.contextmanager
def process_pool_server(root: Path):
    """A real Prefect server (``tests.prefect_server.Cluster`` under ``root``, created here) with the
    ``quantbench-process`` work pool and the project's deployments on it, no worker yet; every
    process started against it is killed on exit."""
    from tests.prefect_server import PREFECT, Cluster

    root.mkdir(parents=True)
    cluster = Cluster(root)
    try:
        cluster.start_server()
        cluster.run(PREFECT, "work-pool", "create", "quantbench-process", "--type", "process",
                    "--base-job-template", str(REPO / "deployments" / "work-pools" / "process.json"))
        cluster.run(PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(REPO / "deployments" / "prefect.yaml"))
        yield cluster
    finally:
        cluster.stop()


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown: ``columns`` are (key, header, format)."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join("n/a" if row.get(key) is None else format(row[key], fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="images for pipeline vs bare (default 96)")
    parser.add_argument("--shard-size", type=int, default=24, help="images per shard in the pipeline (default 24)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per configuration; the median is shown")
    parser.add_argument("--eval-images", type=int, default=5000, help="synthetic images for the evaluation backends")
    parser.add_argument("--skip-pool", action="store_true", help="skip the process work pool (needs ~2 min)")
    args = parser.parse_args(argv)
    from tasks.run.latency import host_info

    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="quantbench-bench-"))
    began = time.perf_counter()
    host = host_info()
    print(f"# quantbench performance — {host['cpu']}, {cores} usable CPUs, Python {host['python']}, "
          f"ai-edge-litert {host['versions']['ai-edge-litert']}, prefect {host['versions']['prefect']}\n")

    print("building and converting the bench detector …", file=sys.stderr)
    models = prepare_models(work)
    dataset, images_source = bench_dataset(args.images, work)
    from tasks.model.runtimes import LiteRTRuntime

    runtime = LiteRTRuntime(Path(models["float32"]), 1)
    batches, decode_ms = decoded_inputs(dataset, runtime.fixed_size)
    del runtime
    print("pipeline vs bare …", file=sys.stderr)
    rows, usage = pipeline_vs_bare(models, dataset, batches, cores, args.rounds, args.shard_size)
    print("decoding once per shard …", file=sys.stderr)
    invoke_ms = {r["variant"]: 1000 / r["bare"] for r in rows if r["W"] == 1 and r["T"] == 1}

    print(f"## 1. Inference stage vs bare LiteRT loop\n\nModel: bench/detector.py (random weights, 416x416 input, "
          f"float32 {invoke_ms['float32']:.1f} ms and int8 {invoke_ms['int8']:.1f} ms per invoke() in the bare loop, W=1 T=1); "
          f"{len(dataset.images)} images of {images_source}, shards of {args.shard_size}; median of {args.rounds} rounds. "
          f"Read + decode + resize alone: {decode_ms:.1f} ms per image (one thread).\n")
    print(table(rows, [("variant", "variant", ""), ("W", "W", "d"), ("T", "T", "d"), ("bare", "bare img/s", ".1f"),
                       ("pipeline", "pipeline img/s", ".1f"), ("ratio", "pipeline/bare", ".2f"),
                       ("pipeline_no_prefetch", "no-prefetch img/s", ".1f"), ("ratio_no_prefetch", "no-prefetch/bare", ".2f")]))
    print(f"\nScaling efficiency at W={cores}, T=1 (images/s at W over W x images/s at W=1):\n")
    print(table(scaling(rows, cores), [("variant", "variant", ""), ("W", "W", "d"), ("bare", "bare", ".2f"),
                                       ("pipeline", "pipeline", ".2f"), ("pipeline_no_prefetch", "no prefetch", ".2f")]))
    gain = shared_decode_gain(models, dataset, cores, args.rounds, args.shard_size)
    print(f"\nBoth variants in one stage, W={cores}, T=1: {gain['once']:.1f} variant-images/s decoding each image once "
          f"for both, {gain['per_variant']:.1f} decoding it per variant ({gain['once'] / gain['per_variant']:.2f}x).")

    print("evaluation backends …", file=sys.stderr)
    from bench.evaluation import compare_backends

    print(f"\n## 2. Evaluation: pycocotools vs faster-coco-eval ({args.eval_images} synthetic images)\n")
    print(table(compare_backends(args.eval_images), [("iou_type", "iou type", ""), ("images", "images", "d"),
                                                     ("detections", "detections", "d"), ("pycocotools_s", "pycocotools s", ".1f"),
                                                     ("faster_coco_eval_s", "faster-coco-eval s", ".1f"),
                                                     ("speedup", "speed-up", ".1f"), ("identical", "12 stats identical", "")]))

    print("the CLI on the demo …", file=sys.stderr)
    cli = cli_run(work)
    stages = cli["report"]["stages"]
    print("\n## 3. Fixed costs\n")
    print(f"`quantbench run` on the demo (200 images, 4 variants), a process of its own: {cli['wall_s']:.1f} s wall; "
          f"start-up (imports, Prefect ephemeral server) {stages['wall_s']['startup']:.1f} s; first shard "
          f"{stages['first_shard_after_process_start_s']:.1f} s after the process started; peak RSS of the process "
          f"tree {cli['peak_tree_rss_mb']:.0f} MB.\n")
    print(table([{"stage": k, "s": v} for k, v in stages["wall_s"].items()], [("stage", "stage", ""), ("s", "wall s", ".2f")]))
    load = {variant: statistics.median(u["load_s"] for u in runs) * 1000 for variant, runs in usage.items()}
    print("\nModel load per shard (bench detector, median): " + ", ".join(f"{v} {ms:.0f} ms" for v, ms in load.items()) + ".")
    if not args.skip_pool:
        print("process work pool …", file=sys.stderr)
        pool = process_pool_overhead(work)
        print(f"Deployment execution, process pool (2 workers polling every 1 s, {pool['shards']} shard flow runs of 5 demo "
              f"images): per-shard overhead {pool['overhead_median_s']:.1f} s median, {pool['overhead_max_s']:.1f} s max "
              f"(scheduled → finished, minus the shard's own compute). Docker pool: measured by tests/test_docker_pool.py "
              f"(docs/cluster-and-images.md, The stack).")

    print("\n## 4. Memory, CPU and energy per image\n")
    from tasks.run.energy import energy_method, run_power, variant_energy

    method = energy_method(run_power(host["cpu"], None, 0.0), None)
    energy_rows = []
    for variant in VARIANTS:
        runs = usage[variant]
        measured = {"cpu_s": sum(u["cpu_s"] for u in runs), "images": args.rounds * len(dataset.images)}
        energy_rows.append({"model": "bench detector", "variant": variant, "rss": max(u["peak_rss_mb"] for u in runs),
                            "cpu": measured["cpu_s"] / measured["images"] * 1000, **variant_energy(measured, method)})
    for entry in cli["report"]["variants"]:
        inference = entry["inference"]
        energy_rows.append({"model": "demo", "variant": entry["variant"], "rss": inference["peak_rss_mb"],
                            "cpu": None if inference["cpu_s_per_image"] is None else inference["cpu_s_per_image"] * 1000,
                            "j_per_image": inference.get("j_per_image"),
                            "gco2e_per_million_images": inference.get("gco2e_per_million_images")})
    print(table(energy_rows, [("model", "model", ""), ("variant", "variant", ""), ("rss", "worker peak RSS MB", ".0f"),
                              ("cpu", "CPU ms/img", ".2f"), ("j_per_image", "J/img", ".3f"),
                              ("gco2e_per_million_images", "gCO2e per 10^6 img", ".0f")]))
    print(f"\nBench detector: W=1, T=1, in a process without TensorFlow. Demo: the CLI run above (its worker is the flow's "
          f"process, TensorFlow loaded for conversion and the saved_model baseline; saved_model CPU is not attributable "
          f"there). Energy: {method['method']} — {method['assumptions']}")
    print(f"\nWhole benchmark: {time.perf_counter() - began:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
