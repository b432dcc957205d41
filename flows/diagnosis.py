"""The diagnosis stage (issue 19), composed: which op of a quantized variant loses AP.

1. numeric error of every op, float32 vs the variant, on the calibration (or comparison) images
   (:func:`tasks.model.diagnosis.numeric_errors_task`);
2. the ``diagnose_ops`` ops adding the most error, each kept float and scored on the first
   ``diagnose_images`` evaluation images: one Prefect task per op
   (:func:`tasks.score.diagnosis.op_recovery_task`), ``workers`` at a time, their shards run as the
   run's are (in this process, or as flow runs of the shard deployment);
3. the recovered recipe (:func:`tasks.score.diagnosis.recovered_ops`), built as a variant for the
   run to benchmark in full.

Used by the benchmark flow (``--diagnose``) and by ``quantbench diagnose`` (:mod:`flows.diagnose`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from tasks.data.dataset import load_dataset, make_shards, read_annotations
from tasks.model.conversion import DENYLIST_RECIPES
from tasks.model.diagnosis import ConverterSource, OpError, numeric_errors_task, rank_ops, recovered_name, recovered_variant_task
from tasks.model.sources import ResolvedModel
from tasks.model.spec import ModelSpec, label_map, spec_summary
from tasks.model.variants import Calibration, ModelArtifact
from tasks.run.inference import ShardJob, ShardOutput, infer_shard, run_shard_deployment
from tasks.score.diagnosis import RECOVERY_RULE, Sweep, baseline, op_recovery_task, ranked, recovered_ops, sweep_report

if TYPE_CHECKING:
    from flows.benchmark import BenchmarkConfig


@dataclass(frozen=True)
class Diagnosis:
    """Every op's numeric error (network order), the sweep of the top ones, the recovered variant
    (None when no op recovers AP significantly) and report.json's ``diagnosis`` (without its summary)."""

    errors: tuple[OpError, ...]
    sweep: Sweep
    recovered: ModelArtifact | None
    report: dict


def shard_runner(execution: str, deployment: str, job_variables: dict, timeout_s: float) -> Callable[[ShardJob], ShardOutput]:
    """How the diagnosis runs a shard: in this process (local and dask execution), or as a flow run of the shard deployment."""
    if execution in ("local", "dask"):
        return infer_shard
    return partial(run_shard_deployment.fn, deployment=deployment, job_variables=job_variables, timeout_s=timeout_s)


def diagnosis_stage(config: BenchmarkConfig, annotations: str, images: str, model: ResolvedModel, spec: ModelSpec, float32: ModelArtifact,
                    variant: ModelArtifact, calibration: Calibration, pseudo_ap: bool = False) -> Diagnosis:
    """Diagnose ``variant`` (converted, like ``float32``, by the run, from ``model``; a converter
    variant is rebuilt from it and ``calibration``) under ``config`` (a
    :class:`flows.benchmark.BenchmarkConfig`: store, threads, min_score, workers, execution,
    bootstrap_resamples, eval_backend, diagnose_ops, diagnose_images, limit). ``pseudo_ap`` scores against
    float32's detections instead of the annotations."""
    started = time.perf_counter()
    errors = numeric_errors_task(float32, variant, list(calibration.batches))
    numeric_s = time.perf_counter() - started
    subset = load_dataset(annotations, images, min(config.diagnose_images, config.limit or config.diagnose_images))
    shard, = make_shards(subset, len(subset.images))
    job = ShardJob("float32", float32.url, model.digest, subset.annotations_digest, subset.images_url, shard, config.store,
                   config.threads, config.min_score, subset.category_ids, label_map(spec.postprocess.classes, subset.category_ids),
                   spec_summary(spec), float32.sha256)
    infer = shard_runner(config.execution, config.shard_deployment, config.job_variables, config.shard_timeout_s)
    source = ConverterSource(model.path, model.digest, tuple(calibration.batches)) if variant.variant in DENYLIST_RECIPES else None
    base = baseline(job, float32, variant, None if pseudo_ap else read_annotations(annotations), infer, source, config.eval_backend,
                    config.bootstrap_resamples)
    candidates = rank_ops(errors, config.diagnose_ops)
    with ThreadPoolTaskRunner(max_workers=config.workers) as runner:
        futures = [runner.submit(op_recovery_task, {"base": quote(base), "error": error, "infer": infer}) for error in candidates]
        swept = ranked(base, [future.result() for future in futures])
    ops = recovered_ops(swept)
    recovered = recovered_variant_task(config.store, float32, variant.variant, ops, source) if ops else None
    entry = {"variant": recovered_name(variant.variant, ops), "ops": ops, "rule": RECOVERY_RULE} if recovered else None
    cost = {"numeric": round(numeric_s, 3), "sweep": round(time.perf_counter() - started - numeric_s, 3), "ops": len(candidates)}
    return Diagnosis(tuple(errors), swept, recovered, sweep_report(swept, errors, entry, cost))
