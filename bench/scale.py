"""quantbench at scale: the real benchmark over >= 5,000 real images, one fresh process per size.

    .venv/bin/python -m bench.scale                      # 500 and 5,000 images, 4 variants (20-40 min on 2 busy cores)
    .venv/bin/python -m bench.scale --quick              # 50 and 200 images, float32 and int8 (a few minutes)
    .venv/bin/python -m bench.scale --sizes 500 5000 --variants float32 int8 --work /tmp/qb-scale

Works from any checkout (it imports nothing of quantbench itself: it runs ``python -m flows.cli`` of the
checkout it sits in, with that checkout on PYTHONPATH).

**Dataset.** The 160 real COCO train2017 images of ``../shared/coco-mini``, each re-encoded by PIL at
32 JPEG qualities (60..91): 5,120 distinct files (SHA-256s checked distinct), same pixel size and same
ground truth as their original. The annotations JSON gives each copy a new image id and file name and a
copy of its original's annotations (new annotation ids); categories unchanged. Ids interleave: id
``160 r + o + 1`` is original ``o`` (sorted by id) at quality index ``(r + o) mod 32``, so the first N
images by id (quantbench's ``limit``) cover every original once per 160 and mix the qualities.
Calibration images: 32 originals at quality 95 (used by no evaluation image), checked disjoint by
content here and by the run. Generated once under ``--work`` and reused while its manifest matches.

**Model.** The bench detector (``bench/detector.py``: TF OD API signature, random weights, ~25 ms per
float32 ``invoke()``, 100 detections per image; classes are 0-based indices), built with
``spread_classes`` (its detections in ~50 classes per image, not one or two: evaluation's cost grows
with the (category, image) pairs). AP against real ground truth is ~0: this measures cost, not accuracy.

**Per size N** (a fresh store each, nothing reused): ``python -m flows.cli run --limit N --quiet`` in a
process of its own (ephemeral Prefect server: a child process of it). Collected: report.json's
``stages.wall_s``, detections per variant, the flow process's peak RSS (VmHWM of /proc/<pid>/status
sampled every 0.25 s; the Prefect server and other descendants are reported apart, as the peak of
their summed RSS), ``wait4``'s ru_maxrss (the max over the flow process and the children it reaped),
the store's size on disk by top-level prefix (models, shards, runs), and each stage's growth from the
smallest size to the largest (linear: the ratio of the sizes).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = Path(os.environ.get("QUANTBENCH_COCO_MINI", REPO.parent / "shared" / "coco-mini"))
QUALITIES = tuple(range(60, 92))  # 32 JPEG qualities for the evaluation copies
CALIBRATION_QUALITY, CALIBRATION_COUNT = 95, 32
STAGES = ("startup", "inputs", "conversion", "inference", "gather", "latency", "comparison", "evaluation", "significance", "report")
DATASET_VERSION = 1  # bump when the generation below changes


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
def jpeg(image, quality: int) -> bytes:
    """``image`` (PIL) encoded as baseline JPEG at ``quality``."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_dataset(work: Path) -> dict:
    """The evaluation set (``work/dataset``: instances.json + images/) and the calibration folder
    (``work/calibration``), generated unless ``work/dataset/manifest.json`` says they are there."""
    folder, calibration = work / "dataset", work / "calibration"
    manifest_path = folder / "manifest.json"
    wanted = {"version": DATASET_VERSION, "qualities": list(QUALITIES), "calibration_quality": CALIBRATION_QUALITY,
              "calibration_count": CALIBRATION_COUNT, "source": str(COCO_MINI)}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest.get(k) for k in wanted} == wanted:
            return manifest
    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(calibration, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    calibration.mkdir(parents=True)
    source = json.loads((COCO_MINI / "instances_train2017_subset.json").read_text())
    originals = sorted(source["images"], key=lambda image: image["id"])
    by_image: dict[int, list] = {}
    for annotation in source["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    count = len(originals)
    images, annotations, hashes, calibration_hashes = [], [], {}, set()
    for o, original in enumerate(originals):
        with Image.open(COCO_MINI / "train2017" / original["file_name"]) as opened:
            pixels = opened.convert("RGB") if opened.mode not in ("RGB", "L") else opened.copy()
        if pixels.size != (original["width"], original["height"]):
            raise SystemExit(f"{original['file_name']}: {pixels.size} pixels, annotations say {original['width']}x{original['height']}")
        for r in range(len(QUALITIES)):
            quality, new_id = QUALITIES[(r + o) % len(QUALITIES)], count * r + o + 1
            data = jpeg(pixels, quality)
            name = f"{new_id:06d}_q{quality}_{original['file_name']}"
            (folder / "images" / name).write_bytes(data)
            hashes[hashlib.sha256(data).hexdigest()] = name
            images.append({**original, "id": new_id, "file_name": name})
            for annotation in by_image.get(original["id"], []):
                annotations.append({**annotation, "id": len(annotations) + 1, "image_id": new_id})
        if o < CALIBRATION_COUNT:
            data = jpeg(pixels, CALIBRATION_QUALITY)
            (calibration / f"calib_q{CALIBRATION_QUALITY}_{original['file_name']}").write_bytes(data)
            calibration_hashes.add(hashlib.sha256(data).hexdigest())
    if len(hashes) != len(images):
        raise SystemExit(f"only {len(hashes)} distinct SHA-256s among {len(images)} re-encoded images")
    if calibration_hashes & hashes.keys() or len(calibration_hashes) != CALIBRATION_COUNT:
        raise SystemExit("calibration images are not disjoint from the evaluation images by content")
    images.sort(key=lambda image: image["id"])
    document = {**{k: v for k, v in source.items() if k not in ("images", "annotations")}, "images": images, "annotations": annotations}
    (folder / "instances.json").write_text(json.dumps(document))
    manifest = {**wanted, "images": len(images), "annotations": len(annotations), "distinct_sha256": len(hashes),
                "calibration_images": len(calibration_hashes),
                "images_bytes": sum(p.stat().st_size for p in (folder / "images").iterdir()),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def category_image_pairs(detections: Path) -> int:
    """Distinct (category, image) pairs of a COCO results JSON: what COCO evaluation's cost grows with."""
    return len({(d["category_id"], d["image_id"]) for d in json.loads(detections.read_text())})


def make_model(work: Path) -> Path:
    """The bench detector's SavedModel with its classes spread (``bench.detector.build(spread_classes=True)``:
    as many (category, image) pairs as a trained detector's) under ``work/model-spread`` (built in a subprocess, once)."""
    out = work / "model-spread"
    if not (out / "saved_model.pb").is_file():
        script = "import sys; from pathlib import Path; from bench.detector import build; build(Path(sys.argv[1]), spread_classes=True)"
        subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO, env=child_env(work), check=True, capture_output=True)
    return out


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------
def child_env(work: Path, prefect_home: Path | None = None) -> dict:
    """The benchmark process's environment: this checkout importable, its own Prefect home (the
    ephemeral server's SQLite database; default ``work/prefect-home``) and model cache under
    ``work``, no Prefect server given."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PYTHONPATH": str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PREFECT_HOME": str(prefect_home or work / "prefect-home"), "QUANTBENCH_CACHE": str(work / "cache"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def status_kb(pid: int, field: str) -> int:
    """``field`` (VmHWM, VmRSS) of /proc/<pid>/status in kB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(child) for child in (task / "children").read_text().split()]
                found += children
                pending += children
        except (OSError, ValueError):
            continue
    return found


def du_bytes(path: Path) -> int:
    """Bytes on disk (allocated blocks) under ``path``."""
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*")) if path.exists() else 0


def run_size(args, work: Path, model: Path, size: int) -> dict:
    """``quantbench run --limit size`` in a fresh process and store; what it cost."""
    store, log, home = work / "stores" / f"n{size}", work / "logs" / f"run-n{size}.log", work / "prefect-homes" / f"n{size}"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)  # a fresh ephemeral-server database per run
    home.mkdir(parents=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "flows.cli", "run", "--model", str(model), "--class-ids", "index0",
               "--annotations", str(work / "dataset" / "instances.json"), "--images", str(work / "dataset" / "images"),
               "--calibration-images", str(work / "calibration"), "--variants", *args.variants, "--limit", str(size),
               "--store", str(store), "--workers", str(args.workers), "--quiet"]
    if args.eval_backend:
        command += ["--eval-backend", args.eval_backend]
    load_before = os.getloadavg()
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO, env=child_env(work, home), stdout=output, stderr=subprocess.STDOUT)
        flow_hwm_kb = others_kb = 0
        while True:
            finished, status, usage = os.wait4(process.pid, os.WNOHANG)
            if finished:
                break
            flow_hwm_kb = max(flow_hwm_kb, status_kb(process.pid, "VmHWM"))
            others_kb = max(others_kb, sum(status_kb(child, "VmRSS") for child in descendants(process.pid)))
            time.sleep(0.25)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"run of {size} images failed (exit {process.returncode}); log: {log}\n{log.read_text()[-3000:]}")
    reports = sorted((store / "runs").glob("*/report.json"))
    if len(reports) != 1:
        raise SystemExit(f"expected one report.json under {store / 'runs'}, found {len(reports)}")
    report = json.loads(reports[0].read_text())
    variants = {v["variant"]: {"images": v.get("images"), "detections": v.get("detections_count"),
                               "pairs": category_image_pairs(Path(v["detections"].removeprefix("file://"))),
                               "AP": (v.get("bbox") or {}).get("AP")} for v in report["variants"]}
    store_bytes = {prefix.name: du_bytes(prefix) for prefix in sorted(store.iterdir()) if prefix.is_dir()}
    return {"size": size, "wall_s": wall_s, "stages": report["stages"]["wall_s"], "variants": variants,
            "detections": sum(v["detections"] or 0 for v in variants.values()),
            "flow_hwm_mb": flow_hwm_kb / 1000, "others_peak_mb": others_kb / 1000, "wait4_maxrss_mb": usage.ru_maxrss / 1000,
            "store_bytes": store_bytes, "store_total": du_bytes(store), "host": report.get("host", {}),
            "scoring": report["stages"].get("scoring", {}), "flow_peak_rss_mb": report["stages"].get("flow_peak_rss_mb"),
            "load": (load_before, os.getloadavg()), "log": str(log), "report": str(reports[0])}


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list]) -> str:
    """Markdown table, first column left-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "|".join("---:" for _ in header[1:]) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def ratio(large, small) -> str:
    return "n/a" if large is None or not small else f"{large / small:.1f}x"


def markdown(results: list[dict], manifest: dict, args, loads: tuple, began: str) -> str:
    first, last = results[0], results[-1]
    host = first["host"]
    versions = host.get("versions", {})
    sizes = [r["size"] for r in results]
    head = ["", *[f"N={n}" for n in sizes]] + ([f"growth {sizes[0]}→{sizes[-1]}"] if len(results) > 1 else [])
    stage_rows = []
    for stage in [*STAGES, *sorted({k for r in results for k in r["stages"]} - set(STAGES))]:
        values = [r["stages"].get(stage) for r in results]
        stage_rows.append([stage, *("n/a" if v is None else f"{v:.1f}" for v in values)]
                          + ([ratio(values[-1], values[0])] if len(results) > 1 else []))
    stage_rows.append(["**process wall**", *(f"{r['wall_s']:.1f}" for r in results)]
                      + ([ratio(last["wall_s"], first["wall_s"])] if len(results) > 1 else []))
    detection_rows = [[variant, *(f"{r['variants'][variant]['detections']} ({r['variants'][variant]['detections'] / r['size']:.1f}/img, "
                                  f"{r['variants'][variant]['pairs']} (category, image) pairs)"
                                  if r["variants"].get(variant, {}).get("detections") is not None else "n/a" for r in results)]
                      for variant in first["variants"]]
    detection_rows.append(["all variants", *(str(r["detections"]) for r in results)])
    memory_rows = [["flow process VmHWM MB", *(f"{r['flow_hwm_mb']:.0f}" for r in results)],
                   ["Prefect server + other descendants, peak summed RSS MB", *(f"{r['others_peak_mb']:.0f}" for r in results)],
                   ["wait4 ru_maxrss MB (flow or a reaped child)", *(f"{r['wait4_maxrss_mb']:.0f}" for r in results)],
                   *([f"scoring process {variant}: s / peak MB", *(f"{r['scoring'][variant]['wall_s']:.1f} / {r['scoring'][variant]['peak_rss_mb']:.0f}"
                                                                  if variant in r["scoring"] else "n/a" for r in results)]
                     for variant in first["variants"])]
    prefixes = sorted({p for r in results for p in r["store_bytes"]})
    store_rows = [[p, *(f"{r['store_bytes'].get(p, 0) / 1e6:.1f}" for r in results)] for p in prefixes]
    store_rows.append(["total", *(f"{r['store_total'] / 1e6:.1f}" for r in results)])
    lines = [f"# quantbench at scale — {began}", "",
             f"Command: `python -m bench.scale {' '.join(sys.argv[1:])}` at commit {commit()}.", "",
             f"Machine: {os.cpu_count()}-core {host.get('cpu', '?')} VM, Python {host.get('python', '?')}, "
             f"ai-edge-litert {versions.get('ai-edge-litert')}, TF {versions.get('tensorflow-cpu')}, prefect {versions.get('prefect')}. "
             f"Load average (1/5/15 min) at start {fmt_load(loads[0])}, at end {fmt_load(loads[1])}.", "",
             f"Dataset: {manifest['images']} distinct re-encodings ({len(manifest['qualities'])} JPEG qualities "
             f"{manifest['qualities'][0]}..{manifest['qualities'][-1]}) of the 160 coco-mini COCO train2017 images, "
             f"{manifest['annotations']} annotations, {manifest['images_bytes'] / 1e6:.0f} MB; calibration: "
             f"{manifest['calibration_images']} originals at quality {manifest['calibration_quality']}. Model: bench/detector.py "
             f"with spread classes (random weights: AP ~0, a cost bench). Variants: {' '.join(args.variants)}; workers {args.workers}; "
             f"eval backend {args.eval_backend or 'default'}. Each size: `python -m flows.cli run --limit N --quiet` in a fresh "
             f"process, a fresh store and a fresh Prefect home (conversion included, nothing reused).", "",
             "## Wall seconds per stage", "", table(head, stage_rows), "",
             "The reduce (evaluation, each variant scored in a process of its own with its bootstrap resamples, plus "
             "significance) against inference: " + ", ".join(
                 f"N={r['size']}: {(r['stages'].get('evaluation', 0) + r['stages'].get('significance', 0)) / r['stages']['inference']:.0%}"
                 for r in results if r["stages"].get("inference")) + ".", "",
             "## Detections (the reduce's input)", "", table(["variant", *head[1:len(sizes) + 1]], detection_rows), "",
             "## Peak memory", "", table(["", *head[1:len(sizes) + 1]], memory_rows), ""]
    if len(results) > 1 and last["detections"] != first["detections"]:
        per = (last["flow_hwm_mb"] - first["flow_hwm_mb"]) * 1e6 / (last["detections"] - first["detections"])
        lines += [f"Flow process peak RSS growth per detection ({sizes[0]}→{sizes[-1]}): {per:.0f} bytes "
                  f"({last['flow_hwm_mb'] - first['flow_hwm_mb']:.0f} MB over {last['detections'] - first['detections']} detections).", ""]
    lines += ["## Store on disk (MB, allocated blocks)", "", table(["prefix", *head[1:len(sizes) + 1]], store_rows), "",
              "Logs and reports: " + "; ".join(f"N={r['size']}: {r['log']}, {r['report']}" for r in results), ""]
    return "\n".join(lines)


def commit() -> str:
    """This checkout's HEAD (short), with '+changes' when its tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def fmt_load(load: tuple) -> str:
    return "/".join(f"{value:.2f}" for value in load)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/quantbench-scale"), help="work folder: dataset, model, stores, logs")
    parser.add_argument("--sizes", type=int, nargs="+", help="images per run, ascending (default 500 5000; --quick: 50 200)")
    parser.add_argument("--variants", nargs="+", help="default float32 float16 int8 int8_full (--quick: float32 int8)")
    parser.add_argument("--workers", type=int, default=2, help="inference tasks in parallel (default 2)")
    parser.add_argument("--eval-backend", help="passed to run --eval-backend (default: quantbench's)")
    parser.add_argument("--quick", action="store_true", help="sizes 50 200, variants float32 int8, results in the work folder")
    parser.add_argument("--output", type=Path, help="markdown file (default bench/results/scale.md; --quick: WORK/scale-quick.md)")
    args = parser.parse_args(argv)
    args.sizes = sorted(args.sizes or ([50, 200] if args.quick else [500, 5000]))
    args.variants = args.variants or (["float32", "int8"] if args.quick else ["float32", "float16", "int8", "int8_full"])
    output = args.output or (args.work / "scale-quick.md" if args.quick else REPO / "bench" / "results" / "scale.md")
    args.work.mkdir(parents=True, exist_ok=True)
    load_start, began = os.getloadavg(), datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"dataset under {args.work / 'dataset'} …", file=sys.stderr)
    manifest = make_dataset(args.work)
    if manifest["images"] < args.sizes[-1]:
        raise SystemExit(f"the dataset has {manifest['images']} images, fewer than {args.sizes[-1]}")
    model = make_model(args.work)
    results = []
    for size in args.sizes:
        print(f"run of {size} images ({' '.join(args.variants)}) …", file=sys.stderr)
        results.append(run_size(args, args.work, model, size))
        print(f"  {results[-1]['wall_s']:.0f} s, flow VmHWM {results[-1]['flow_hwm_mb']:.0f} MB", file=sys.stderr)
    text = markdown(results, manifest, args, (load_start, os.getloadavg()), began)
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    (args.work / f"scale-{'quick' if args.quick else 'full'}.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"written: {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
