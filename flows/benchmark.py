"""The benchmark flow: convert → fan out one inference task per (variant, shard) → gather →
latency (one variant at a time) → evaluate → report.

Composition only; each stage lives in ``tasks``. Shards run in parallel threads of this flow run
(LiteRT's ``invoke()`` releases the GIL), with ``execution="deployment"`` as flow runs of the
per-shard deployment (``flows/shard.py``) on a work pool, or with ``execution="dask"`` as the same
tasks on the worker processes of a Dask cluster (``prefect_dask.DaskTaskRunner``). With no Prefect
server configured the flow runs in Prefect's ephemeral mode.
"""
from __future__ import annotations

import importlib.util
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, unmapped
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, Field, field_validator, model_validator

from flows.diagnosis import diagnosis_stage
from tasks.data.dataset import load_dataset, make_shards
from tasks.model.calibration import calibration_files, calibration_task, comparison_inputs
from tasks.model.checks import already_quantized, check_variants, model_input, model_io, model_spec, variants_for
from tasks.model.conversion import DIAGNOSABLE_VARIANTS
from tasks.model.coverage import compare_task
from tasks.model.preprocess import Preparation
from tasks.model.sources import ResolvedModel, resolve_model, shown
from tasks.model.spec import ModelSpec, label_map, spec_summary
from tasks.model.variants import DEFAULT_VARIANTS, VARIANTS, convert_variant, saved_model_artifact
from tasks.nightly.alerts import emit_regression_event
from tasks.nightly.regression import RegressionsFound, Thresholds, describe, regression_task
from tasks.publish.links import check_link_settings
from tasks.publish.presentation import presentation_task
from tasks.publish.report import VariantResult, build_report, report_task, run_identity
from tasks.run.energy import energy_method, grid_intensity, run_power, variant_energy
from tasks.run.inference import ShardJob, infer_shard_task, run_shard_deployment
from tasks.run.latency import host_info, latency_task
from tasks.run.progress import NoDaskWorkers, follow as follow_progress
from tasks.run.usage import StageClock, StageMeter, inference_summary, run_stages
from tasks.score.evaluation import EVAL_BACKENDS, require_backend
from tasks.score.diagnosis import store_name
from tasks.score.gather import gather_variant_task
from tasks.score.steps import evaluate_task, significance_task
from tasks.store.errors import QuantbenchError
from tasks.store.object_store import cache_dir, open_store

Variant = Literal[VARIANTS]  # type: ignore[valid-type]
Diagnosable = Literal[DIAGNOSABLE_VARIANTS]  # type: ignore[valid-type]


# Settings that decide where and how a run executes, or only check its input (the model's pin: the
# model digest is in the identity already), never what it computes: left out of the run's identity.
EXECUTION_SETTINGS = frozenset({"store", "workers", "execution", "shard_deployment", "job_variables", "shard_timeout_s",
                                "dask_address", "model_sha256"})


def default_store() -> str:
    """``QUANTBENCH_STORE`` if set, else the folder ``quantbench-results`` in the working directory."""
    return os.environ.get("QUANTBENCH_STORE") or Path("quantbench-results").resolve().as_uri()


class BenchmarkConfig(BaseModel):
    """What to benchmark and how. Empty model/dataset fields mean the embedded demo."""

    model: str | None = Field(None, title="Model", description="The detector: a SavedModel directory (TF OD API 'serving_default' signature), a float .tflite, a zoo .tar.gz (path or URL), s3://bucket/prefix, kaggle:OWNER/MODEL/FRAMEWORK/VARIATION/VERSION or a tfhub.dev handle. Empty: the embedded demo detector.")
    model_sha256: str = Field("", title="Model SHA-256 pin", description="The model's expected digest (64 hex digits: report.json's model.digest, or what 'quantbench digest --model X' prints). The model is checked against it right after it is fetched, before it is cached, loaded or converted; a mismatch stops the run. Empty: not pinned (then a plain http:// model is refused).")
    annotations: str | None = Field(None, title="Annotations (COCO JSON)", description="COCO instances JSON (local path or s3:// URL). Empty: the embedded synthetic demo dataset.")
    images: str | None = Field(None, title="Images folder", description="Folder (local path or s3:// prefix) holding the images named by the annotations' file_name.")
    variants: list[Variant] = Field(list(DEFAULT_VARIANTS), min_length=1, title="Variants", description="Variants: saved_model (TensorFlow baseline); converter float32, float16, int8 (dynamic range), int8_full (calibrated), int16x8; quantizer weight_only_wi8_afp32, dynamic_wi8_afp32, dynamic_legacy_wi8_afp32 (int8 weights of at least 1024 elements only, as the converter's int8), weight_only_wf16_afp32; given (an already quantized .tflite as it is). The default four mean, for a .tflite model: float32, weight_only_wf16_afp32 and dynamic_wi8_afp32 (a float one) or given (an already quantized one).")
    spec: ModelSpec = Field(default_factory=ModelSpec, title="Model spec", description="The detector's head (how its outputs become detections), input convention and postprocessing; empty fields take the head's defaults (quantbench heads lists them).")
    shard_size: int = Field(50, ge=1, title="Images per shard", description="Images per inference task.")
    workers: int = Field(2, ge=1, title="Shards in flight", description="Shards running at once: threads of this flow run (local execution), shard flow runs on the work pool (deployment execution) or worker processes of the local Dask cluster (dask execution with no address; an existing cluster runs as many as its workers have threads).")
    threads: int = Field(1, ge=1, title="Threads per interpreter", description="CPU threads per interpreter (inference and latency).")
    limit: int | None = Field(None, ge=1, title="Image limit", description="Use only the first N images (by image id).")
    store: str | None = Field(None, title="Results store", description="Where results go: a local folder, file:///path or s3://bucket/prefix. Empty: decided where the flow runs, at run time: $QUANTBENCH_STORE there, else the folder quantbench-results in its working directory.")
    latency_images: int = Field(50, ge=1, title="Latency runs per variant", description="Timed invoke() calls per variant, after warm-up.")
    min_score: float = Field(0.0, ge=0.0, le=1.0, title="Minimum score", description="Drop detections scoring below this.")
    calibration_images: str | None = Field(None, title="Calibration images folder", description="Folder (path or s3:// prefix) of images disjoint from the evaluation images, for int8_full/int16x8 calibration and the float32 output comparison. Empty with the demo: its calib split.")
    calibration_count: int = Field(32, ge=1, title="Calibration images used", description="Calibration images used.")
    execution: Literal["local", "deployment", "dask"] = Field("local", title="Execution", description="local: shards run as tasks in this flow run's process; deployment: each shard runs as a flow run of the per-shard deployment on its work pool (its own process or container); dask: each shard runs as a task on a worker of the Dask cluster at dask_address (pip install 'quantbench[dask]'; workers need this repo importable and the store reachable).")
    shard_deployment: str = Field("quantbench-shard/shard", title="Shard deployment", description="The per-shard deployment (flow name/deployment name) used when execution is 'deployment'.")
    job_variables: dict = Field(default_factory=dict, title="Shard job variables", description="Work-pool job variables for each shard's flow run, e.g. {\"memory_limit\": \"8Gi\", \"env\": {\"PREFECT_LOGGING_LEVEL\": \"DEBUG\"}} on Kubernetes (mem_limit on Docker): only the keys the pool's template offers (env, labels, memory and CPU); image, command, volumes and privileges are the pool's (deployments/work-pools/).")
    dask_address: str = Field("", title="Dask scheduler", description="The scheduler of an existing Dask cluster, e.g. tcp://scheduler:8786 (dask execution). Empty: a local cluster of `workers` processes, one thread each, for this run.")
    shard_timeout_s: float = Field(3600.0, gt=0, title="Shard timeout (s)", description="A shard flow run not finished after this long is cancelled and run again (deployment execution); a shard task still running after this long on its Dask worker fails as TimedOut (dask execution).")
    bootstrap_resamples: int = Field(200, ge=20, title="Bootstrap resamples", description="Paired bootstrap resamples (over images, seeded) for the 95% CIs of ΔAP vs float32 and for regression significance.")
    fail_on_regression: bool = Field(False, title="Fail on regression", description="Publish the report, then fail the run (CLI exit status 3) when it regressed against the previous comparable run in the store.")
    regression_ap_drop: float = Field(0.005, gt=0, le=1, title="Regression: AP drop", description="A significant AP (or ΔAP vs float32) loss of at least this much (AP in 0-1) is a regression.")
    regression_size_growth: float = Field(0.01, ge=0, title="Regression: size growth", description="Model size growth beyond this fraction is a regression.")
    eval_backend: Literal[EVAL_BACKENDS] = Field("pycocotools", title="Evaluation backend", description="pycocotools (the reference) or faster-coco-eval (pip install 'quantbench[fast-eval]'; same matching in C++, ~4x faster here; stats equal to the last bit).")  # type: ignore[valid-type]
    grid_intensity: str | None = Field(None, title="Grid carbon intensity", description="For gCO2e per image: empty for the world average (475 gCO2e/kWh), a 3-letter ISO country code (FRA, DEU, USA …) or gCO2e/kWh as a number.")
    regression_latency_rise: float = Field(1.5, ge=0, title="Regression: latency rise", description="Latency p50 rise beyond this fraction (1.5: 2.5 times as slow) with no overlapping timing round is a regression; keep it above this machine's run-to-run spread.")
    diagnose: Diagnosable | None = Field(None, title="Diagnose variant", description="Which op of this quantized variant loses AP (added to the variants if missing): every op's numeric error vs float32, the ops adding the most each kept float and scored (AP recovered, paired bootstrap CI), and the recovered recipe '<variant>+float_k' benchmarked as a variant of this run. Empty: no diagnosis.")
    diagnose_ops: int = Field(10, ge=1, title="Diagnosis: ops swept", description="The ops adding the most numeric error, each kept float in turn and scored (one task each).")
    diagnose_images: int = Field(100, ge=1, title="Diagnosis: images scored", description="The first N evaluation images (by id) each kept-float model is scored on.")

    def resolved(self) -> "BenchmarkConfig":
        """This config with the store decided here and now (empty: :func:`default_store`)."""
        return self if self.store else self.model_copy(update={"store": default_store()})

    def result_settings(self) -> dict:
        """The settings that decide the results (all but :data:`EXECUTION_SETTINGS`)."""
        return self.model_dump(exclude=set(EXECUTION_SETTINGS))

    @field_validator("model_sha256")
    @classmethod
    def _sha256_hex(cls, value: str) -> str:
        if value and not (len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)):
            raise ValueError(f"{value!r} is not a SHA-256 digest: give 64 hex digits, as 'quantbench digest --model X' prints them")
        return value.lower()

    @model_validator(mode="after")
    def _dataset_given_whole(self) -> "BenchmarkConfig":
        if (self.annotations is None) != (self.images is None):
            raise ValueError("give both annotations and images, or neither (for the demo dataset)")
        return self


def resolve_inputs(config: BenchmarkConfig) -> tuple[ResolvedModel, str, str, str | None]:
    """(model, annotations, images, calibration images), generating the demo data when none is given.
    The model is checked against ``model_sha256`` here, before anything loads it."""
    from demo import DEMO_MODEL_DIR, synthetic

    model = resolve_model(config.model or str(DEMO_MODEL_DIR), cache_dir(), config.model_sha256)
    if config.annotations is None:
        annotations = synthetic.generate(cache_dir() / "demo-data", synthetic.VAL)
        calibration = config.calibration_images or str(synthetic.generate(cache_dir() / "demo-data", synthetic.CALIBRATION).parent)
        return model, str(annotations), str(annotations.parent), calibration
    return model, config.annotations, config.images, config.calibration_images


def check_settings(config: BenchmarkConfig) -> None:
    """The settings that need no input read: grid intensity, evaluation backend, the links' settings, the store
    (reachable, writable)."""
    grid_intensity(config.grid_intensity)
    check_link_settings()
    require_backend(config.eval_backend)
    if config.execution == "dask":
        require_dask()
    open_store(config.store).check_writable()


def require_dask() -> None:
    """Fail with one line when prefect-dask is not installed (before any work is done)."""
    if importlib.util.find_spec("prefect_dask") is None:
        raise QuantbenchError("execution 'dask' needs prefect-dask and distributed: pip install 'quantbench[dask]'")


def shard_task_runner(config: BenchmarkConfig) -> TaskRunner:
    """Where the inference stage's tasks run: threads of this flow run (local: the shards; deployment: the
    tasks waiting for their flow runs), or the worker processes of a Dask cluster (dask: the shards)."""
    if config.execution != "dask":
        return ThreadPoolTaskRunner(max_workers=config.workers)
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    # Processes started (spawned) from this one: its working directory and sys.path, so the repo imports.
    return DaskTaskRunner(cluster_kwargs={"n_workers": config.workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": ":0"})


@flow(name="quantbench-benchmark")
def benchmark(config: BenchmarkConfig = BenchmarkConfig()) -> str:
    """Benchmark every requested variant of a detector on a COCO dataset; return report.json's URL."""
    flow_started, clock = time.time(), StageClock()
    logger = get_run_logger()
    config = config.resolved()
    with clock("inputs"):
        check_settings(config)  # a bad setting fails here, before any work
        model, annotations, images, calibration_images = resolve_inputs(config)
        io = model_io(model)
        spec = model_spec(config.spec, io, shown(model.source))
        quantized = already_quantized(model, io)
        variants = variants_for(model, list(config.variants), quantized, config.diagnose)
        check_variants(model, variants, calibration_images, quantized)
        preparation = Preparation.of(spec, io.input, io.input_size)
        dataset = load_dataset(annotations, images, config.limit)
        shards = make_shards(dataset, config.shard_size)
    run_id = run_identity({**config.result_settings(), "variants": variants, "resolved_spec": spec_summary(spec)},
                          model.digest, dataset.digest)
    run_prefix = f"runs/{run_id}"
    logger.info("run %s: %d images in %d shards, variants %s", run_id, len(dataset.images), len(shards), ", ".join(variants))

    with clock("conversion"):
        calibration = (
            calibration_task(calibration_images, config.calibration_count, preparation, dataset)
            if calibration_images else comparison_inputs(dataset, preparation)
        )
        # float32 is produced whenever it can be: quantizer recipes start from it and every size
        # claim is checked against it. An already quantized .tflite (given) has none.
        artifacts = {} if variants == ["given"] else {"float32": convert_variant(str(model.path), model.digest, "float32", config.store)}
        for variant in variants:
            if variant == "saved_model":
                artifacts[variant] = saved_model_artifact(str(model.path))
            elif variant != "float32":
                artifacts[variant] = convert_variant(str(model.path), model.digest, variant, config.store, artifacts.get("float32"), calibration)

    diagnosis = None
    if config.diagnose:
        with clock("diagnosis"):
            diagnosis = diagnosis_stage(config, annotations, images, model, spec, artifacts["float32"], artifacts[config.diagnose],
                                        calibration)
        if diagnosis.recovered:  # benchmarked in full, as a variant of this run
            artifacts[diagnosis.recovered.variant] = diagnosis.recovered
            variants.append(diagnosis.recovered.variant)

    classes_to_ids = label_map(spec.postprocess.classes, dataset.category_ids)
    jobs = [
        ShardJob(store_name(v), artifacts[v].url, model.digest, dataset.annotations_digest, dataset.images_url, shard, config.store,
                 config.threads, config.min_score, dataset.category_ids, classes_to_ids, spec_summary(spec), artifacts[v].sha256)
        for shard in shards  # shard-major: a shard's variants run close together and share its decoded images
        for v in variants
    ]
    # RAPL only counts here when the shards run here; at most `workers` shards at a time.
    with clock("inference"), StageMeter(rapl=config.execution == "local") as inference_stage, shard_task_runner(config) as runner:
        if config.execution == "local":
            futures = runner.map(infer_shard_task, {"job": jobs})
        elif config.execution == "dask":
            # A lost worker's shard is run again by the Dask scheduler on another (same task run); one hung
            # on a live worker is stopped by Prefect's task timeout there and fails the run.
            futures = runner.map(infer_shard_task.with_options(timeout_seconds=config.shard_timeout_s), {"job": jobs})
        else:
            futures = runner.map(run_shard_deployment, {"job": jobs, "deployment": unmapped(config.shard_deployment),
                                                        "job_variables": unmapped(config.job_variables),
                                                        "timeout_s": unmapped(config.shard_timeout_s)})
        stalled = (NoDaskWorkers(runner.client, config.dask_address or "(local cluster)", config.shard_timeout_s)
                   if config.execution == "dask" else None)
        outputs = follow_progress(futures, jobs, logger, stalled, poll_s=min(30.0, max(1.0, config.shard_timeout_s / 2)))
    host = host_info()
    energy = energy_method(run_power(host["cpu"], inference_stage.package_joules, inference_stage.process_cpu_s), config.grid_intensity)
    shards_run = {"total": len(outputs), "computed": sum(not o.reused for o in outputs), "reused": sum(o.reused for o in outputs)}
    logger.info("shards: %(computed)d computed, %(reused)d reused from the store", shards_run)

    # Latency is measured one variant at a time with nothing else running; then the variants are
    # scored, `workers` at a time, each in a process of its own (tasks.score.scoring).
    expected_ids = [record.id for record in dataset.images]
    measured = {}
    for variant in variants:
        variant_outputs = [o for o in outputs if o.variant == store_name(variant)]
        with clock("gather"):
            gathered = gather_variant_task(store_name(variant), variant_outputs, expected_ids, config.store, run_prefix)
        if not gathered.done_image_ids:
            first = gathered.failed[0]
            raise QuantbenchError(
                f"{variant}: none of the {len(expected_ids)} images could be evaluated (e.g. image {first['image_id']} "
                f"{first['file_name']}: {first['reason']}); no report was published: fix the images and rerun"
            )
        with clock("latency"):
            latency = latency_task(variant, artifacts[variant].url, dataset.images_url, list(dataset.images), config.threads,
                                   config.latency_images, spec, artifacts[variant].sha256)
        with clock("comparison"):
            differences = ({} if variant == "float32" or "float32" not in artifacts else
                           compare_task(artifacts[variant], artifacts["float32"], calibration))
        measured[variant] = (variant_outputs, gathered, latency, differences)
    with clock("evaluation"), ThreadPoolTaskRunner(max_workers=config.workers) as runner:
        futures = runner.map(evaluate_task, {
            "annotations_url": unmapped(dataset.annotations_url), "detections_url": [measured[v][1].detections_url for v in variants],
            "image_ids": [list(measured[v][1].done_image_ids) for v in variants], "backend": unmapped(config.eval_backend),
            "resamples": unmapped(config.bootstrap_resamples), "variant": variants})
        scores = dict(zip(variants, (future.result() for future in futures)))
    results, per_image, resampled, scoring = [], {}, {}, {}
    for variant in variants:
        variant_outputs, gathered, latency, differences = measured[variant]
        metrics = scores[variant]
        per_image[variant], resampled[variant], scoring[variant] = metrics.pop("per_image"), metrics.pop("resampled"), metrics.pop("process")
        inference = inference_summary(variant_outputs)
        results.append(VariantResult(artifacts[variant], gathered, metrics, latency, differences,
                                     {**inference, **variant_energy(inference, energy)}))

    run = {
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": shown(model.source), "kind": model.kind, "digest": model.digest, "input": model_input(io),
                  "head": spec.head, "spec": spec_summary(spec)},
        "dataset": {"annotations": dataset.annotations_url, "images_url": dataset.images_url, "digest": dataset.digest,
                    "images": len(dataset.images), "instances_per_category": dataset.instances_per_category},
        "calibration": calibration.source,
        "shards": shards_run,
        "settings": config.model_dump(include={"shard_size", "workers", "threads", "limit", "latency_images", "min_score", "variants",
                                               "spec", "calibration_count", "execution", "shard_deployment", "dask_address",
                                               "bootstrap_resamples", "fail_on_regression", "regression_ap_drop", "regression_size_growth",
                                               "grid_intensity", "eval_backend", "regression_latency_rise", "diagnose", "diagnose_ops",
                                               "diagnose_images"}),
        "host": host,
        "energy": energy,
    }
    with clock("significance"):
        significance = significance_task(resampled)
    with clock("report"):
        report = build_report(run, results, significance, diagnosis.report if diagnosis else None)
        thresholds = Thresholds(config.regression_ap_drop, config.regression_size_growth, config.regression_latency_rise)
        report["compared_with"], report["regressions"] = regression_task(report, per_image, dataset.annotations_url, config.store,
                                                                         thresholds, config.bootstrap_resamples)
    report["stages"] = run_stages(clock, flow_started, outputs, inference_stage, scoring)
    url = report_task(report, config.store, run_prefix)
    logger.info("report: %s (page: %s)", url, presentation_task(report, url, config.store, run_prefix))
    logger.info("stages (s): %s; publishing %.1f", ", ".join(f"{k} {v}" for k, v in report["stages"]["wall_s"].items()),
                time.time() - flow_started - sum(clock.seconds.values()))
    if report["regressions"]:
        emit_regression_event(report, url)
        logger.warning("regressions against run %s: %s", report["compared_with"], describe(report["regressions"]))
        if config.fail_on_regression:
            raise RegressionsFound(url, report["regressions"])
    return url


def validate(config: BenchmarkConfig) -> None:
    """Fail fast, before any flow starts, with one line: the store (reachable, bucket exists,
    writable), the model (parses, its head reads its outputs, its spec fits its input, the
    variants can be made from it), the dataset, the calibration images
    (readable, disjoint from the evaluation images by content)."""
    config = config.resolved()
    check_settings(config)
    model, annotations, images, calibration_images = resolve_inputs(config)
    io = model_io(model)
    model_spec(config.spec, io, shown(model.source))
    quantized = already_quantized(model, io)
    check_variants(model, variants_for(model, list(config.variants), quantized, config.diagnose), calibration_images, quantized)
    dataset = load_dataset(annotations, images, config.limit)
    if calibration_images:
        calibration_files(calibration_images, config.calibration_count, dataset)
