"""Decode + NMS against invoke(): what turning raw outputs into detections costs per image.

For each real detector in ../shared/models (or --models DIR), over the coco-mini images (or
--images/--annotations): the median time of one ``invoke()`` and, apart, of reading its outputs
(dequantized) and the head's decode and class-aware NMS with the head's validation defaults —
what quantbench runs per image in a shard. One interpreter, 1 thread, this process alone. The
target (issue 17): decode + NMS at most 20 % of ``invoke()`` for YOLOv8n at 640; the exit status
is 1 when a YOLOv8n model misses it.

    .venv/bin/python -m bench.postprocess [--models DIR] [--images N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TARGET = 0.20  # decode + NMS / invoke(), YOLOv8n at 640


def measure(model: Path, pixels: list[np.ndarray]) -> dict:
    from tasks.model.heads import choose_head, make_head
    from tasks.model.preprocess import Preparation, prepare_input
    from tasks.model.runtimes import LiteRTRuntime
    from tasks.model.spec import ModelSpec, resolve_spec

    runtime = LiteRTRuntime(model, threads=1)
    spec = resolve_spec(ModelSpec(), choose_head(ModelSpec(), runtime.io, model.name), runtime.io.layout)
    head = make_head(spec, runtime.io)
    prepared = [prepare_input(p, Preparation.of(spec, runtime.io.input, runtime.fixed_size)) for p in pixels]
    invoke_ms, decode_ms, detections = [], [], 0
    for n, (batch, frame) in enumerate([prepared[0], *prepared]):  # the first image once more, untimed (warm-up)
        runtime.set_input(batch)
        started = time.perf_counter()
        runtime.invoke()
        invoked = time.perf_counter()
        found = head.decode(runtime.outputs(), frame)
        decoded = time.perf_counter()
        if n:
            invoke_ms.append((invoked - started) * 1000)
            decode_ms.append((decoded - invoked) * 1000)
            detections += len(found.scores)
    invoke, decode = float(np.median(invoke_ms)), float(np.median(decode_ms))
    return {"model": model.name, "head": spec.head, "input": "x".join(map(str, runtime.fixed_size or ())), "images": len(pixels),
            "invoke_ms": invoke, "decode_nms_ms": decode, "ratio": decode / invoke, "detections_per_image": detections / len(pixels)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=SHARED / "models", help="folder of .tflite detectors")
    parser.add_argument("--annotations", type=Path, default=SHARED / "coco-mini" / "instances_train2017_subset.json")
    parser.add_argument("--images-dir", type=Path, default=SHARED / "coco-mini" / "train2017")
    parser.add_argument("--images", type=int, default=50, help="images timed per model")
    args = parser.parse_args(argv)
    from PIL import Image

    from tasks.run.latency import host_info

    names = sorted(i["file_name"] for i in json.loads(args.annotations.read_text())["images"])[:args.images]
    pixels = [np.asarray(Image.open(args.images_dir / name).convert("RGB")) for name in names]
    host = host_info()
    print(f"# decode + NMS vs invoke() — {host['cpu']}, ai-edge-litert {host['versions']['ai-edge-litert']}, "
          f"numpy {np.__version__}, 1 thread, median over {len(pixels)} coco-mini images\n")
    print("| model | head | input | invoke ms | decode+NMS ms | ratio | detections/image |")
    print("|:--|:--|:--|--:|--:|--:|--:|")
    missed = []
    for model in sorted(args.models.glob("*.tflite")):
        row = measure(model, pixels)
        print(f"| {row['model']} | {row['head']} | {row['input']} | {row['invoke_ms']:.1f} | {row['decode_nms_ms']:.2f} | "
              f"{row['ratio']:.1%} | {row['detections_per_image']:.0f} |", flush=True)
        if row["model"].startswith("yolov8n") and row["ratio"] > TARGET:
            missed.append(row["model"])
    print(f"\ntarget: decode + NMS <= {TARGET:.0%} of invoke() for YOLOv8n at 640: " + (f"missed by {', '.join(missed)}" if missed else "met"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
