"""Regression detection: is tonight's run worse than the last comparable one?

The *comparable predecessor* of a run is the most recent earlier completed run in the same store
on the same dataset (``dataset.digest``: annotations, chosen images and their content) with the
same evaluation settings (``limit``, ``min_score``, the model ``spec`` as given) and a model read by the
same head (the same detector family). The model may differ — a nightly's model location is
re-exported by a training pipeline, and catching a checkpoint that quantizes worse is the point.

What counts as a regression, per variant present in both runs (thresholds are settings):

- ``AP`` / ``mask_AP``: a drop of at least ``ap_drop`` (AP in [0, 1]) whose paired bootstrap CI
  over the common images (previous vs current detections, same resamples) lies below 0;
- ``delta_AP_vs_float32`` (quantized variants): the ΔAP vs float32 worsening by at least
  ``ap_drop``, significant the same way (all four APs on the same resamples);
- ``model_bytes``: growth beyond ``size_growth`` (a fraction; sizes are exact, no CI);
- ``latency_p50_ms``: p50 more than ``1 + latency_rise`` times the previous p50 *and* even the
  fastest timing round of this run slower than the slowest round of the previous one. On a
  shared VM whole runs drift by up to ±60 %: back-to-back reruns of the demo here moved a p50 by
  up to 1.98x under load, so the default (``latency_rise = 1.5``: 2.5 times as slow) sits above
  that spread and back-to-back reruns raise no alarm. It still catches what breaks deployments:
  a lost XNNPACK delegate or reference kernels (int16x8: 20x), an op falling back to Flex.
"""
from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.store.errors import STORE_RETRIES, QuantbenchError
from tasks.score.significance import PerImageEval, paired_bootstrap, per_image_evaluation
from tasks.store.object_store import Store, open_store, split_url

EVALUATION_SETTINGS = ("limit", "min_score", "spec")


class RegressionsFound(QuantbenchError):
    """The run completed and its report is published, but it regressed (``--fail-on-regression``)."""

    def __init__(self, report_url: str, regressions: list[dict]):
        self.report_url, self.regressions = report_url, regressions
        super().__init__(f"{len(regressions)} regression(s) against the previous comparable run: {describe(regressions)} "
                         f"(report: {report_url})")


@dataclass(frozen=True)
class Thresholds:
    ap_drop: float = 0.005  # AP (0-1) lost, and significant, before a drop counts
    size_growth: float = 0.01  # fraction of the previous model size
    latency_rise: float = 1.5  # fraction of the previous p50 (1.5: 2.5 times as slow)


def describe(regressions: list[dict]) -> str:
    """``float32 AP 0.891 → 0.874 (-0.0170 [-0.0210, -0.0130]); …`` (one line)."""
    parts = []
    for r in regressions:
        ci = f" [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]" if r.get("ci") else ""
        parts.append(f"{r['variant']} {r['metric']} {r['previous']:.4g} → {r['current']:.4g} ({r['change']:+.4g}{ci})")
    return "; ".join(parts)


def _head(report: dict) -> str:
    """The head that read the run's model (reports from before heads existed: the TF OD API's)."""
    return report["model"].get("head", "odapi")


def find_predecessor(store: Store, report: dict) -> dict | None:
    """The newest completed run in ``store`` before ``report`` with the same dataset digest and
    evaluation settings, as its report.json dict (None if there is none)."""
    from tasks.publish.results import list_runs

    def comparable(other: dict) -> bool:
        try:
            return (other["run_id"] != report["run_id"] and other["created"] <= report["created"]
                    and other["dataset"]["digest"] == report["dataset"]["digest"]
                    and all(other["settings"].get(k) == report["settings"].get(k) for k in EVALUATION_SETTINGS)
                    and _head(other) == _head(report))
        except (KeyError, TypeError):
            return False  # a report from an older quantbench, or not one at all

    candidates = [s.report for s in list_runs(store) if s.complete and comparable(s.report)]
    return max(candidates, key=lambda r: (r["created"], r["run_id"]), default=None)


def _significant_drop(evals: list[PerImageEval], coefficients: list[float], resamples: int, seed: int) -> list[float] | None:
    """The bootstrap CI of the change when it lies entirely below 0, else None."""
    result = paired_bootstrap(evals, coefficients, resamples, seed)
    return result["ci"] if result["ci"] is not None and result["ci"][1] < 0 else None


def detect(current: dict, previous: dict, current_evals: dict[str, dict[str, PerImageEval]], gt,
           thresholds: Thresholds, resamples: int, seed: int = 0) -> list[dict]:
    """The regressions of ``current`` against ``previous`` (report dicts; see the module docstring).

    ``current_evals[variant][iou_type]`` are the current run's per-image evaluations; the
    previous run's are computed from its stored detections on the images both runs evaluated."""
    now = {e["variant"]: e for e in current["variants"]}
    before = {e["variant"]: e for e in previous["variants"]}
    common = [v for v in now if v in before]
    failed = {f["image_id"] for runs in (now, before) for v in common for f in runs[v]["failures"]}
    image_ids = sorted(set(current_evals[common[0]]["bbox"].image_ids) - failed) if common else []
    evaluations: dict[tuple[str, str, str], PerImageEval] = {}

    def evaluation(run: str, variant: str, iou_type: str) -> PerImageEval:
        """A run's per-image evaluation of a variant on ``image_ids``: the current run's as it is when it
        covers them, else (and for the previous run) computed from the stored detections, once and only
        when a drop reaches its threshold (a night without one evaluates nothing again)."""
        key = (run, variant, iou_type)
        if key not in evaluations:
            current = current_evals[variant][iou_type] if run == "now" else None
            evaluations[key] = (current if current is not None and list(current.image_ids) == image_ids else
                                per_image_evaluation(gt, _detections((now if run == "now" else before)[variant]), image_ids, iou_type))
        return evaluations[key]

    regressions = []

    def add(variant: str, metric: str, old: float, new: float, ci: list[float] | None, threshold: float) -> None:
        regressions.append({"variant": variant, "metric": metric, "previous": old, "current": new,
                            "change": new - old, "ci": ci, "threshold": threshold})

    for v in common:
        for iou_type, metric, key in (("bbox", "AP", "bbox"), ("segm", "mask_AP", "segm")):
            if key not in now[v] or key not in before[v] or iou_type not in current_evals[v]:
                continue
            old, new = before[v][key]["AP"], now[v][key]["AP"]
            if old is not None and new is not None and new - old <= -thresholds.ap_drop:
                ci = _significant_drop([evaluation("before", v, iou_type), evaluation("now", v, iou_type)], [-1.0, 1.0], resamples, seed)
                if ci:
                    add(v, metric, old, new, ci, -thresholds.ap_drop)
        old_delta, new_delta = before[v].get("delta_AP_vs_float32"), now[v].get("delta_AP_vs_float32")
        if (v != "float32" and "float32" in common and old_delta is not None and new_delta is not None
                and new_delta - old_delta <= -thresholds.ap_drop):
            evals = [evaluation("now", v, "bbox"), evaluation("now", "float32", "bbox"), evaluation("before", v, "bbox"),
                     evaluation("before", "float32", "bbox")]
            ci = _significant_drop(evals, [1.0, -1.0, -1.0, 1.0], resamples, seed)
            if ci:
                add(v, "delta_AP_vs_float32", old_delta, new_delta, ci, -thresholds.ap_drop)
        if now[v]["model_bytes"] > before[v]["model_bytes"] * (1 + thresholds.size_growth):
            add(v, "model_bytes", before[v]["model_bytes"], now[v]["model_bytes"], None, thresholds.size_growth)
        if latency_regressed(now[v]["latency"], before[v]["latency"], thresholds.latency_rise):
            add(v, "latency_p50_ms", before[v]["latency"]["p50"], now[v]["latency"]["p50"], None, thresholds.latency_rise)
    return regressions


def latency_regressed(now: dict, before: dict, rise: float) -> bool:
    """p50 beyond ``1 + rise`` times the previous one, and no timing round overlapping."""
    if now["p50"] <= before["p50"] * (1 + rise):
        return False
    return min(now.get("p50_rounds") or [now["p50"]]) > max(before.get("p50_rounds") or [before["p50"]])


def _detections(entry: dict) -> list[dict]:
    store, key = split_url(entry["detections"])
    return store.read_json(key)


@task(name="regressions", cache_policy=NO_CACHE, **STORE_RETRIES)
def regression_task(report: dict, current_evals: dict, annotations_url: str, store_url: str, thresholds: Thresholds,
                    resamples: int) -> tuple[str | None, list[dict]]:
    """``(compared_with, regressions)``: the comparable predecessor's run id (None without one)
    and the regressions found against it."""
    from tasks.data.dataset import read_annotations
    from tasks.score.evaluation import ground_truth

    previous = find_predecessor(open_store(store_url), report)
    if previous is None:
        return None, []
    gt = ground_truth(read_annotations(annotations_url))
    return previous["run_id"], detect(report, previous, current_evals, gt, thresholds, resamples)
