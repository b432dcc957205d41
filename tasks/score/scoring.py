"""One variant's scores, computed in a process of its own: the COCO evaluation of its stored
detections (:func:`tasks.score.evaluation.evaluate_all`, per-image matching kept) and its AP on
every bootstrap resample of the images (:func:`tasks.score.significance.resample`).

Why a process: evaluating N detections holds about 2-4 KB per detection at its peak (the results
as Python dicts, the backend's index and per-image results), and a long-lived Python process does
not give most of that back to the system after it is freed. In a spawned process of its own it is
gone when the process ends; what comes back is small: the stats, the per-image matching as
rankings (about 8 bytes per detection) and the resampled APs. Several variants are scored at once,
one process each. The process is ``python -m tasks.score.scoring`` (not a multiprocessing spawn,
which would import the parent's main module: the whole CLI); this module and what it imports do
not import Prefect, so it starts in well under a second. Request and answer travel pickled over
its stdin and stdout.
"""
from __future__ import annotations

import logging
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

from tasks.data.dataset import read_annotations
from tasks.score.evaluation import evaluate_all, ground_truth
from tasks.score.significance import resample
from tasks.store.errors import QuantbenchError
from tasks.store.object_store import split_url


def score_variant(annotations_url: str, detections_url: str, image_ids: list[int], backend: str, resamples: int, seed: int = 0) -> dict:
    """Evaluate stored detections (a store URL) against the annotations (a local path or store URL)
    with the evaluation ``backend``, and resample each IoU type's per-image matching.

    Returns :func:`tasks.score.evaluation.evaluate`'s bbox result; with segmentations in the
    detections also ``"segm"``, the same structure for masks. ``"per_image"``: each IoU type's
    per-image matching (``{"bbox": PerImageEval, "segm": …}``, None without images);
    ``"resampled"``: each one's :class:`tasks.score.significance.Resampled` (``resamples``
    draws with ``seed``: the same draws for every variant evaluated on the same images)."""
    store, key = split_url(detections_url)
    results = evaluate_all(ground_truth(read_annotations(annotations_url), backend, owned=True), store.read_json(key), image_ids,
                           per_image=True, backend=backend, owned=True)
    per_image = {iou_type: result.pop("per_image") for iou_type, result in results.items()}
    resampled = {iou_type: resample(evaluation, resamples, seed) for iou_type, evaluation in per_image.items() if evaluation is not None}
    return {**results["bbox"], **({"segm": results["segm"]} if "segm" in results else {}), "per_image": per_image, "resampled": resampled}


def score_in_process(annotations_url: str, detections_url: str, image_ids: list[int], backend: str, resamples: int,
                     seed: int = 0) -> dict:
    """:func:`score_variant` in a process of its own (its memory is returned when it ends), with
    ``"process"``: that process's scoring seconds and peak resident set (see :func:`_serve`). Its
    exceptions are raised here, as they were raised there; a process that dies (killed: out of
    memory?) fails with one line."""
    request = pickle.dumps((annotations_url, detections_url, image_ids, backend, resamples, seed))
    root = str(Path(__file__).resolve().parents[2])  # where the tasks package is, whatever the working directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "tasks.score.scoring"], input=request, capture_output=True, env=env)
    if done.returncode != 0 or not done.stdout:
        raise QuantbenchError(
            f"the process scoring {detections_url} died before it finished (exit status {done.returncode}: killed, out of "
            f"memory? scoring holds about 2-4 KB per detection at its peak, one process per variant scored at once); nothing "
            f"was published: rerun with fewer workers or more memory ({_last_line(done.stderr)})"
        )
    if done.stderr.strip():
        logger.debug("scoring %s: %s", detections_url, done.stderr.decode(errors="replace").strip())
    outcome, value = pickle.loads(done.stdout)  # written by this module's __main__ below, from the request above
    if outcome == "error":
        raise value
    return value


def _peak_rss_mb() -> float:
    """This process's largest resident set so far, MB: ``VmHWM`` (Linux; ``getrusage``'s maxrss would
    also count the parent's, which it keeps across the fork and exec that started this process)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def _serve() -> None:
    """Score the pickled request on stdin; write ``("ok", result)`` or ``("error", exception)`` to stdout.
    The result has ``"process"`` added: this process's ``wall_s`` (scoring, seconds) and
    ``peak_rss_mb`` (its largest resident set, MB: what scoring this variant needed)."""
    started = time.perf_counter()
    arguments = pickle.loads(sys.stdin.buffer.read())
    try:
        result = score_variant(*arguments)
        answer = ("ok", {**result, "process": {"wall_s": round(time.perf_counter() - started, 3), "peak_rss_mb": round(_peak_rss_mb(), 1)}})
    except Exception as error:  # raised again in the parent, as it was raised here
        try:
            answer = ("error", pickle.loads(pickle.dumps(error)))
        except Exception:
            answer = ("error", QuantbenchError(f"{type(error).__name__}: {error}"))
    sys.stdout.buffer.write(pickle.dumps(answer))


logger = logging.getLogger(__name__)

if __name__ == "__main__":
    _serve()
