"""Report: one row per variant — size, latency, COCO bbox mAP, deltas vs float32 — written to the
store as ``report.json`` / ``report.csv`` / ``report.md`` and published as a Prefect table artifact.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.store.errors import STORE_RETRIES
from tasks.score.gather import GatheredVariant
from tasks.publish.history import delta_text, write_history
from tasks.model.variants import VARIANTS, ModelArtifact
from tasks.publish.diagnosis import diagnosis_summary
from tasks.store.object_store import open_store

BBOX_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
MASK_COLUMNS = ("AP", "AP50", "AP75")
MB = 1_000_000


def run_identity(settings: dict, model_digest: str, dataset_digest: str) -> str:
    """The run's id, ``<UTC time>-<digest>-<random>``: the time it started (to the second), the
    first 8 hex of SHA-256 over what decides its results (``settings``, the model's and the
    dataset's digests) and 4 random hex digits, so two runs never share a prefix in the store."""
    decided = {**settings, "model_digest": model_digest, "dataset_digest": dataset_digest}
    digest = hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:8]
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{digest}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class VariantResult:
    artifact: ModelArtifact
    gathered: GatheredVariant
    metrics: dict  # from tasks.score.steps.evaluate_task: bbox stats, and "segm" for mask models
    latency: dict  # from tasks.run.latency.measure_latency
    differences: dict  # output name -> max |variant - float32| on the comparison batch
    inference: dict  # from tasks.run.usage.inference_summary: how fast this variant's shards ran


def variant_entry(result: VariantResult, float32: VariantResult | None, significance: dict | None = None) -> dict:
    """The report.json entry of one variant (sizes in bytes, latency in ms). ``significance`` is
    this variant's paired bootstrap vs float32 per IoU type (``tasks.score.steps.significance_task``)."""
    stats = result.metrics["stats"]
    entry = {
        "variant": result.artifact.variant,
        "model": result.artifact.url,
        "model_bytes": result.artifact.model_bytes,
        "size_vs_float32": None,
        "weights_by_dtype": result.artifact.weights_by_dtype,
        "quantized_weight_share": result.artifact.quantized_weight_share,
        "op_counts": result.artifact.op_counts,
        "flex_ops": list(result.artifact.flex_ops),
        "max_abs_diff_vs_float32": result.differences,
        "latency_ms": {k: result.latency[k] for k in ("mean", "p50", "p90", "p99")},
        "latency": result.latency,
        "images_per_s": result.latency["images_per_s"],
        "inference": result.inference,
        "images": len(result.gathered.done_image_ids),
        "failed_images": len(result.gathered.failed),
        "failures": list(result.gathered.failed),
        "bbox": stats,
        "per_category_AP": result.metrics["per_category_AP"],
        "delta_AP_vs_float32": None,
        "delta_AP_vs_float32_ci": None,
        "detections": result.gathered.detections_url,
        "detections_count": result.gathered.detections,
        "detections_outside_categories": result.gathered.outside_categories,
    }
    if "segm" in result.metrics:
        entry["segm"] = result.metrics["segm"]["stats"]
        entry["segm_per_category_AP"] = result.metrics["segm"]["per_category_AP"]
    significance = significance or {}
    if float32 is not None:
        entry["size_vs_float32"] = result.artifact.model_bytes / float32.artifact.model_bytes
        entry["delta_AP_vs_float32"] = difference(stats["AP"], float32.metrics["stats"]["AP"])
        entry["delta_AP_vs_float32_ci"] = (significance.get("bbox") or {}).get("ci")
        if "segm" in result.metrics and "segm" in float32.metrics:
            entry["delta_mask_AP_vs_float32"] = difference(result.metrics["segm"]["stats"]["AP"], float32.metrics["segm"]["stats"]["AP"])
            entry["delta_mask_AP_vs_float32_ci"] = (significance.get("segm") or {}).get("ci")
    return entry


def difference(value: float | None, reference: float | None) -> float | None:
    """``value - reference``, or None when either is undefined (None: no image, no ground truth)."""
    return None if value is None or reference is None else value - reference


def report_order(variant: str) -> tuple[int, str]:
    """Where a variant's row goes: VARIANTS order, a recovered recipe (``base+float_k``) after its base."""
    return VARIANTS.index(variant.split("+")[0]), variant


def build_report(run: dict, results: list[VariantResult], significance: dict | None = None, diagnosis: dict | None = None) -> dict:
    """``run`` (id, model, dataset, settings, host) plus one entry per variant (:func:`report_order`);
    ``significance[variant]`` is its paired bootstrap vs float32 (absent: no CI); ``diagnosis``
    (``tasks.score.diagnosis.sweep_report``), when one was asked, with its summary line."""
    by_variant = {r.artifact.variant: r for r in results}
    ordered = [by_variant[v] for v in sorted(by_variant, key=report_order)]
    significance = significance or {}
    report = {**run, "variants": [variant_entry(r, by_variant.get("float32"), significance.get(r.artifact.variant)) for r in ordered]}
    if diagnosis is not None:
        report["diagnosis"] = {**diagnosis, "summary": diagnosis_summary(diagnosis)}
    return report


def report_table(report: dict) -> pd.DataFrame:
    """The human-facing table: MB, ratio to float32, latency (ms), images/s of one interpreter's
    ``invoke()`` (``img_per_s``) and of the whole inference stage (``pipeline_img_s``: read, decode,
    resize, invoke, COCO conversion, over the wall time its shards ran), energy per image of that
    stage (J, ``report["energy"]`` says how it was found), AP metrics, ΔAP."""
    rows = []
    for v in report["variants"]:
        rows.append(
            {
                "variant": v["variant"],
                "size_MB": v["model_bytes"] / MB,
                "x_fp32": v["size_vs_float32"],
                "lat_mean_ms": v["latency_ms"]["mean"],
                "lat_p50_ms": v["latency_ms"]["p50"],
                "lat_p90_ms": v["latency_ms"]["p90"],
                "post_ms": (v["latency"].get("postprocess_ms") or {}).get("p50"),
                "img_per_s": v["images_per_s"],
                "pipeline_img_s": (v.get("inference") or {}).get("images_per_s"),
                "J_per_img": (v.get("inference") or {}).get("j_per_image"),
                **{k: v["bbox"][k] for k in BBOX_COLUMNS},
                "dAP_vs_fp32": delta_text(v["delta_AP_vs_float32"], *(v.get("delta_AP_vs_float32_ci") or (None, None))),
                **({f"mask_{k}": v["segm"][k] for k in MASK_COLUMNS} if "segm" in v else {}),
                "q_share": v["quantized_weight_share"],
                "images": v["images"],
                "failed": v["failed_images"],
            }
        )
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """Markdown table: 3 decimals; ΔAP vs float32 with 4 and its 95% CI (quantization often moves
    AP by less than 0.001): ``+0.0004 [-0.0021, +0.0030]``; ``n/a`` where a value is undefined."""
    cells = table.astype(object).where(table.notna(), None)
    text_columns = [i for i, column in enumerate(table.columns) if column == "dAP_vs_fp32"]  # already formatted
    return cells.to_markdown(index=False, missingval="n/a", floatfmt=".3f", disable_numparse=text_columns)


def markdown_report(report: dict, table: pd.DataFrame) -> str:
    host, settings = report["host"], report["settings"]
    lines = [
        f"# quantbench report {report['run_id']}",
        "",
        f"- model: `{report['model']['source']}` (sha256 {report['model']['digest'][:16]}…, input {report['model']['input']['shape']}, "
        f"head {report['model'].get('head', 'odapi')})",
        f"- dataset: `{report['dataset']['annotations']}`, {report['dataset']['images']} images",
        f"- latency: invoke() only, {settings['latency_images']} runs after warm-up, {settings['threads']} thread(s), "
        f"one variant at a time; host {host['cpu']} ({host['usable_cpus']} usable CPUs)",
        f"- AP: COCO mAP@[.5:.95] ({settings.get('eval_backend', 'pycocotools')}, bbox) on the images each variant processed; "
        "n/a where COCO defines none (no ground truth in that size range)",
        latency_spread_line(report),
        *energy_lines(report),
        "",
        format_table(table),
        "",
    ]
    lines.append(f"Quantization coverage (outputs compared with float32 on {report['calibration']}):")
    lines.append("")
    for v in report["variants"]:
        flex = ", ".join(v["flex_ops"]) or "none"
        diffs = ", ".join(f"{name} {value:.3g}" for name, value in v["max_abs_diff_vs_float32"].items()) or "-"
        lines.append(f"- {v['variant']}: {v['quantized_weight_share']:.0%} of weight bytes quantized; "
                     f"{sum(v['op_counts'].values())} ops; Flex ops: {flex}; max |Δ| vs float32: {diffs}")
    lines.append("")
    for v in report["variants"]:
        for failure in v["failures"]:
            lines.append(f"- {v['variant']}: image {failure['image_id']} ({failure['file_name']}) failed: {failure['reason']}")
        for category, count in v["detections_outside_categories"].items():
            lines.append(f"- {v['variant']}: {count} detections of class {category}, not a category of the dataset, were left out")
    return "\n".join(lines) + "\n"


def latency_spread_line(report: dict) -> str:
    """p50 with its spread: the lowest and highest p50 of the consecutive timing rounds per variant
    (this machine's own drift while timing; compare variants within one run)."""
    spreads = []
    for v in report["variants"]:
        rounds = v["latency"].get("p50_rounds") or [v["latency_ms"]["p50"]]
        spreads.append(f"{v['variant']} {v['latency_ms']['p50']:.2f} ({min(rounds):.2f}–{max(rounds):.2f})")
    return f"- latency p50 ms (range of the {len(rounds)} rounds' p50): " + ", ".join(spreads)


def energy_lines(report: dict) -> list[str]:
    """How pipeline_img_s and J_per_img were found (reports from before they existed: nothing)."""
    energy = report.get("energy")
    if not energy:
        return []
    return [
        f"- pipeline_img_s: images over the wall time the variant's shards ran ({report['settings']['workers']} shards in flight, "
        "variants overlapping: not additive); J_per_img: its shards' CPU-seconds per image × W per busy CPU "
        "(n/a: TensorFlow's threads, not attributable in a shared process)",
        f"- energy: {energy['method']}, {energy['watts_per_cpu']:.3g} W per busy CPU ({energy['source']}); "
        f"grid {energy['grid_g_per_kwh']:g} gCO2e/kWh ({energy['grid_source']})",
    ]


def publish_report(report: dict, store_url: str, run_prefix: str) -> str:
    """Write report.json/.csv/.md under ``run_prefix``; return the URL of report.json."""
    store = open_store(store_url)
    table = report_table(report)
    store.write_bytes(f"{run_prefix}/report.csv", table.to_csv(index=False, na_rep="n/a").encode())
    store.write_bytes(f"{run_prefix}/report.md", markdown_report(report, table).encode())
    return store.write_json(f"{run_prefix}/report.json", report, indent=2)


@task(name="report", cache_policy=NO_CACHE, **STORE_RETRIES)
def report_task(report: dict, store_url: str, run_prefix: str) -> str:
    """Publish the report, its row in the run history and its Prefect table artifact; return
    report.json's URL. The history row is written last: only a published run has one."""
    url = publish_report(report, store_url, run_prefix)
    write_history(open_store(store_url), report)
    table = report_table(report)
    create_table_artifact(
        table=table.round(4).astype(object).where(table.notna(), None).to_dict(orient="records"),
        key="quantbench-report",
        description=f"quantbench run {report['run_id']}: {url}",
    )
    return url
