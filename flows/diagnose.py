"""``quantbench diagnose``: the diagnosis of one quantized variant, alone (issue 19).

float32 and the variant are converted as a run converts them (cached in the store), then the
diagnosis stage runs (:mod:`flows.diagnosis`): per-op numeric error, the top ops each kept float
and scored on the first ``diagnose_images`` evaluation images (AP recovered with a paired bootstrap
CI, or pseudo-AP against float32's detections) and the recovered recipe built. Nothing is
benchmarked; ``quantbench run --diagnose VARIANT`` does the same inside a run and benchmarks the
recovered recipe as one of its variants. Composition only.
"""
from __future__ import annotations

from prefect import flow
from pydantic import Field

from flows.benchmark import BenchmarkConfig, Diagnosable, check_settings, resolve_inputs
from flows.diagnosis import Diagnosis, diagnosis_stage
from tasks.model.calibration import calibration_task, comparison_inputs
from tasks.model.checks import already_quantized, model_io, model_spec
from tasks.model.preprocess import Preparation
from tasks.model.sources import shown
from tasks.model.variants import convert_variant
from tasks.data.dataset import load_dataset
from tasks.store.errors import QuantbenchError


class DiagnoseConfig(BenchmarkConfig):
    """A run's model, dataset and settings (``variants`` unused), the variant to diagnose and how."""

    diagnose: Diagnosable = Field("dynamic_wi8_afp32", title="Variant to diagnose", description="A quantized variant of the float model.")
    pseudo_ap: bool = Field(False, title="Pseudo-AP", description="Score against float32's detections (score >= 0.5) instead of the annotations.")


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
    dataset = load_dataset(annotations, images, min(config.diagnose_images, config.limit or config.diagnose_images))
    calibration = (calibration_task(calibration_images, config.calibration_count, preparation, dataset)
                   if calibration_images else comparison_inputs(dataset, preparation))
    float32 = convert_variant(str(model.path), model.digest, "float32", config.store)
    variant = convert_variant(str(model.path), model.digest, config.diagnose, config.store, float32, calibration)
    return diagnosis_stage(config, annotations, images, model, spec, float32, variant, calibration, config.pseudo_ap)
