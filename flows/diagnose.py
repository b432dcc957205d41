"""The diagnosis flow (issue 19): which op of a quantizer variant loses accuracy.

float32 and the variant are converted as a run converts them (cached in the store); the per-op
numeric error is measured on the calibration (or comparison) images
(:func:`tasks.model.diagnosis.numeric_errors`); the ``diagnose_ops`` ops adding the most error are
each kept float in turn and scored on the first ``diagnose_images`` evaluation images
(:func:`tasks.score.diagnosis.sweep`): AP recovered with a paired bootstrap CI, or pseudo-AP
against float32's detections. Composition only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect import flow
from pydantic import Field

from flows.benchmark import BenchmarkConfig, check_settings, resolve_inputs
from tasks.data.dataset import load_dataset, make_shards, read_annotations
from tasks.model.calibration import calibration_task, comparison_inputs
from tasks.model.checks import already_quantized, model_io, model_spec
from tasks.model.conversion import QUANTIZER_RECIPES
from tasks.model.diagnosis import OpError, numeric_errors, rank_ops
from tasks.model.preprocess import Preparation
from tasks.model.sources import shown
from tasks.model.spec import label_map, spec_summary
from tasks.model.variants import convert_variant, float32_model
from tasks.run.inference import ShardJob
from tasks.score.diagnosis import Sweep, sweep
from tasks.store.errors import QuantbenchError


class DiagnoseConfig(BenchmarkConfig):
    """A run's model, dataset and settings (``variants`` and ``limit`` unused), and what to diagnose."""

    variant: Literal[QUANTIZER_RECIPES] = Field("dynamic_wi8_afp32", title="Variant to diagnose", description="An ai-edge-quantizer variant of the float model.")  # type: ignore[valid-type]
    diagnose_ops: int = Field(10, ge=1, title="Ops swept", description="The ops adding the most numeric error, each kept float in turn and scored.")
    diagnose_images: int = Field(100, ge=1, title="Images scored", description="The first N evaluation images (by id) each kept-float model is scored on.")
    pseudo_ap: bool = Field(False, title="Pseudo-AP", description="Score against float32's detections (score >= 0.5) instead of the annotations.")


@dataclass(frozen=True)
class Diagnosis:
    """Every op's numeric error (network order) and the metric-linked sweep of the top ones."""

    errors: tuple[OpError, ...]
    sweep: Sweep


@flow(name="quantbench-diagnose")
def diagnose(config: DiagnoseConfig) -> Diagnosis:
    config = config.resolved()
    check_settings(config)
    model, annotations, images, calibration_images = resolve_inputs(config)
    io = model_io(model)
    spec = model_spec(config.spec, io, shown(model.source))
    if already_quantized(model, io):
        raise QuantbenchError(f"{shown(model.source)} is already quantized: the diagnosis needs the float model its variants are made from")
    preparation = Preparation.of(spec, io.input, io.input_size)
    dataset = load_dataset(annotations, images, config.diagnose_images)
    shard, = make_shards(dataset, len(dataset.images))
    calibration = (calibration_task(calibration_images, config.calibration_count, preparation, dataset)
                   if calibration_images else comparison_inputs(dataset, preparation))
    float32 = convert_variant(str(model.path), model.digest, "float32", config.store)
    variant = convert_variant(str(model.path), model.digest, config.variant, config.store, float32, calibration)
    errors = numeric_errors(float32_model(float32), float32_model(variant), calibration.batches)
    job = ShardJob("float32", float32.url, model.digest, dataset.annotations_digest, dataset.images_url, shard, config.store,
                   config.threads, config.min_score, dataset.category_ids, label_map(spec.postprocess.classes, dataset.category_ids),
                   spec_summary(spec), float32.sha256)
    document = None if config.pseudo_ap else read_annotations(annotations)
    swept = sweep(job, float32, variant, rank_ops(errors, config.diagnose_ops), document, config.bootstrap_resamples,
                  workers=config.workers)
    return Diagnosis(tuple(errors), swept)
