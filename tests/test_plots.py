"""Plots (tasks.publish.plots), the self-contained HTML page and the markdown summary (tasks.publish.html_report),
from report dicts built here: 4 variants, undefined (None) values, a mask model, failures,
regressions and a run history."""
from __future__ import annotations

import copy
import re
from xml.etree import ElementTree

import pandas as pd
import pytest

from tasks.run.energy import energy_method, energy_summary, estimated_power
from tasks.publish.history import history_rows
from tasks.publish.html_report import render_html, significance, summary_markdown
from tasks.publish.links import Link, RunLinks
from tasks.publish.plots import (
    Point,
    accuracy_vs_energy,
    model_name,
    pareto_front,
    render_plots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_ID = "20261128T185558Z-feaeb157-3693"
PREVIOUS_RUN = "20261127T020000Z-feaeb157-aaaa"
CATEGORIES = ["person", "bicycle", "car", "toaster", "hair drier", "traffic light"]
INJECTED = "<script>alert('x')</script>"
LINKS = RunLinks((Link("run page", "https://results.example/runs/r"), Link("report.json", "https://results.example/runs/r/report.json")))
BASE_STATS = {"AP": 0.412, "AP50": 0.63, "AP75": 0.44, "APs": 0.21, "APm": 0.45, "APl": None, "AR1": 0.33,
              "AR10": 0.5, "AR100": 0.52, "ARs": 0.3, "ARm": 0.55, "ARl": None}
# variant -> (bytes, p50 ms, AP shift vs float32, ΔAP CI)
VARIANTS = {
    "saved_model": (200_400_000, 25_000.0, 0.0, [0.0, 0.0]),
    "float32": (190_100_000, 21_000.0, 0.0, None),
    "float16": (95_100_000, 20_500.0, 0.0, None),  # its AP is undefined (None) below
    "int8": (48_200_000, 9_000.0, 0.0004, [-0.0021, 0.0030]),
}
CPU_S_PER_IMAGE = {"saved_model": 26.0, "float32": 21.5, "float16": 21.0, "int8": 9.5}  # process CPU time, s


def _latency(p50: float, with_times: bool) -> dict:
    """A latency dict as tasks.run.latency.measure_latency gives it (ms); ``times_ms`` when asked."""
    times = [p50 * (0.9 + 0.2 * i / 19) for i in range(20)]
    latency = {"mean": p50, "p50": p50, "p90": p50 * 1.08, "p99": p50 * 1.1, "min": p50 * 0.9, "max": p50 * 1.1,
               "p50_rounds": [p50] * 5, "images_per_s": 1000 / p50, "runs": 20, "warmup": 5, "threads": 1,
               "runtime": "ai-edge-litert", "delegate": "XNNPACK", "input_size": [1024, 1024]}
    return {**latency, "times_ms": times} if with_times else latency


def _variant(name: str, masks: bool) -> dict:
    size, p50, shift, ci = VARIANTS[name]
    per_category = {c: round(0.2 + 0.05 * i + (shift - 0.01 * i if name == "int8" else 0), 4) for i, c in enumerate(CATEGORIES)}
    per_category["hair drier"] = None  # no ground truth in the evaluated images: undefined
    entry = {
        "variant": name, "model": f"file:///store/models/abc/{name}.tflite", "model_bytes": size,
        "size_vs_float32": size / VARIANTS["float32"][0],
        "weights_by_dtype": {"int8" if name == "int8" else "float32": size - 164, "int32": 164},
        "quantized_weight_share": 0.995 if name in ("int8", "float16") else 0.0,
        "op_counts": {} if name == "saved_model" else {"CONV_2D": 120, "ADD": 40},
        "flex_ops": ["CombinedNonMaxSuppression"] if name != "saved_model" else [],
        "max_abs_diff_vs_float32": {"detection_boxes": 0.01, "detection_scores": None},
        "latency_ms": {k: _latency(p50, False)[k] for k in ("mean", "p50", "p90", "p99")},
        "latency": _latency(p50, with_times=name != "saved_model"),  # saved_model: percentiles only
        "images_per_s": 1000 / p50, "images": 200, "failed_images": 0, "failures": [],
        "bbox": {**BASE_STATS, "AP": BASE_STATS["AP"] + shift}, "per_category_AP": per_category,
        "delta_AP_vs_float32": None if name == "float32" else shift, "delta_AP_vs_float32_ci": ci,
        "detections": f"file:///store/runs/{RUN_ID}/detections/{name}.json", "detections_count": 20_000,
        "detections_outside_categories": {},
    }
    if name == "float16":  # every AP undefined: must never be plotted (nor as -1) nor crash anything
        entry["bbox"] = {k: None for k in BASE_STATS}
        entry["per_category_AP"] = {c: None for c in CATEGORIES}
        entry["delta_AP_vs_float32"] = None
    if masks:
        entry["segm"] = {**BASE_STATS, "AP": None if name == "float16" else 0.36 + shift}
        entry["segm_per_category_AP"] = per_category
        if name != "float32":
            entry["delta_mask_AP_vs_float32"] = None if name == "float16" else shift - 0.003
            entry["delta_mask_AP_vs_float32_ci"] = None if name == "float16" else [-0.0052, -0.0011]
    return entry


def make_report(masks: bool = False, run_id: str = RUN_ID, created: str = "2026-11-28T18:56:12+00:00") -> dict:
    """A realistic report.json dict: 4 variants, a failed image, a regression vs an earlier run."""
    report = {
        "run_id": run_id, "created": created,
        "model": {"source": "kaggle:tensorflow/mask-rcnn-inception-resnet-v2/tensorFlow2/1024x1024/1", "kind": "saved_model",
                  "digest": "0d144e3f" * 8, "input": {"name": "input_tensor", "dtype": "uint8", "shape": [1, None, None, 3]}},
        "dataset": {"annotations": "s3://bucket/coco/annotations/instances_val2017.json", "images_url": "s3://bucket/coco/val2017",
                    "digest": "f9490531" * 8, "images": 200,
                    "instances_per_category": {"person": 2000, "bicycle": 80, "car": 500, "toaster": 3, "traffic light": 120}},
        "calibration": "32 images from s3://bucket/coco/calib",
        "shards": {"total": 8, "computed": 8, "reused": 0},
        "settings": {"threads": 1, "latency_images": 20, "limit": 200, "min_score": 0.0, "variants": list(VARIANTS)},
        "host": {"cpu": "AMD EPYC", "cpu_count": 2, "usable_cpus": 2, "platform": "Linux", "python": "3.11.7",
                 "versions": {"ai-edge-litert": "2.3.0", "tensorflow-cpu": "2.18.1"}},
        "compared_with": PREVIOUS_RUN,
        "regressions": [{"variant": "int8", "metric": "AP", "previous": 0.9086, "current": 0.4124, "change": -0.4962,
                         "ci": [-0.54, -0.47], "threshold": -0.005},
                        {"variant": "int8", "metric": "latency_p50_ms", "previous": 4000.0, "current": 9000.0, "change": 5000.0,
                         "ci": None, "threshold": 1.0}],
        "variants": [_variant(name, masks) for name in VARIANTS],
    }
    int8 = report["variants"][3]
    int8["failures"] = [{"image_id": 139, "file_name": "000000000139.jpg", "reason": f"empty file {INJECTED}"}]
    int8["failed_images"] = 1
    return report


def _with_energy(report: dict) -> dict:
    """A copy with ``inference`` per variant and the top-level ``energy``, as tasks.run.energy gives them
    for this VM's CPU ("AMD EPYC": CodeCarbon's default, 4 W per busy CPU) and the world grid."""
    energy = copy.deepcopy(report)
    energy["energy"] = energy_method(estimated_power("AMD EPYC", logical_cpus=2), None)
    for entry in energy["variants"]:
        images, cpu_s = 200, 200 * CPU_S_PER_IMAGE[entry["variant"]]
        entry["inference"] = {"images": images, "shards": 8, "shards_reused": 0, "wall_s": cpu_s / 1.8, "images_per_s": 1.8 * images / cpu_s,
                              "peak_rss_mb": 910.5, "cpu_s": cpu_s,
                              **energy_summary(cpu_s, images, energy["energy"]["watts_per_cpu"], energy["energy"]["grid_g_per_kwh"])}
    return energy


def _history(*reports: dict) -> pd.DataFrame:
    return pd.concat([history_rows(r) for r in reports], ignore_index=True)


def _previous() -> dict:
    previous = make_report(run_id=PREVIOUS_RUN, created="2026-11-27T02:00:00+00:00")
    previous["regressions"], previous["compared_with"] = [], None
    return previous


@pytest.fixture(scope="module")
def report() -> dict:
    return make_report()


@pytest.fixture(scope="module")
def plots(report) -> dict[str, bytes]:
    return render_plots(report, _history(_previous()))


def _assert_valid(files: dict[str, bytes]) -> None:
    for name, content in files.items():
        if name.endswith(".png"):
            assert content.startswith(PNG_MAGIC), name
        else:
            assert name.endswith(".svg"), name
            assert ElementTree.fromstring(content).tag.endswith("svg"), name


def test_every_plot_is_a_valid_png_or_svg(plots):
    scatter = {f"{name}.{ext}" for name in ("accuracy_vs_size", "accuracy_vs_latency") for ext in ("png", "svg")}
    assert set(plots) == scatter | {"category_delta_ap.png", "latency_distribution.png", "history_ap.png"}
    _assert_valid(plots)


def test_history_plot_only_with_two_runs_on_the_same_dataset(report):
    assert "history_ap.png" not in render_plots(report)
    assert "history_ap.png" not in render_plots(report, _history(report))  # this run alone
    other_dataset = _previous()
    other_dataset["dataset"] = {**other_dataset["dataset"], "digest": "0" * 64}
    assert "history_ap.png" not in render_plots(report, _history(other_dataset, report))


def test_mask_model_and_missing_baseline():
    files = render_plots(make_report(masks=True))
    assert "category_delta_ap.png" in files
    _assert_valid(files)
    no_float32 = make_report()
    no_float32["variants"] = [v for v in no_float32["variants"] if v["variant"] != "float32"]
    files = render_plots(no_float32)
    assert "category_delta_ap.png" not in files  # nothing to compare with
    _assert_valid(files)


def test_energy_plot_from_the_inference_energy_per_image(report):
    energy = _with_energy(report)
    energy["variants"][0]["inference"]["j_per_image"] = None  # saved_model: no energy (float16: no AP)
    files = render_plots(energy)
    assert {"accuracy_vs_energy.png", "accuracy_vs_energy.svg"} <= set(files)
    _assert_valid(files)
    figure = accuracy_vs_energy(energy, dict.fromkeys(VARIANTS, "#1f77b4"))
    [ax] = figure.axes
    plotted = {tuple(xy) for collection in ax.collections for xy in collection.get_offsets()}
    assert plotted == {(21.5 * 4.0, energy["variants"][1]["bbox"]["AP"]), (9.5 * 4.0, energy["variants"][3]["bbox"]["AP"])}  # J = CPU-s × 4 W
    assert ax.get_xlabel() == ("energy per image (J, inference stage, cpu-power-estimate)\n"
                               "not plotted (AP or energy per image undefined): saved_model, float16")
    assert ax.get_title().startswith("AP vs energy per image (up-left is better)")
    assert "Pareto front (less energy and more accurate)" in [text.get_text() for text in ax.get_legend().get_texts()]
    page = render_html(energy, files)
    assert page.index('id="plot-accuracy_vs_latency"') < page.index('id="plot-accuracy_vs_energy"') < page.index('id="plot-latency_distribution"')
    assert "bbox AP vs energy per image (J) of the inference stage" in page and page.count("data:image/svg+xml;base64,") == 3


def test_no_energy_plot_without_energy_per_image(report):
    assert not any(name.startswith("accuracy_vs_energy") for name in render_plots(report))  # no inference entries
    unmeasured = _with_energy(report)
    for entry in unmeasured["variants"]:
        entry["inference"]["j_per_image"] = None
    assert not any(name.startswith("accuracy_vs_energy") for name in render_plots(unmeasured))


def test_pareto_front_and_model_names():
    points = [Point("a", 1, 0.5), Point("b", 2, 0.6), Point("c", 3, 0.55), Point("d", 2, 0.4)]
    assert [p.name for p in pareto_front(points)] == ["a", "b"]
    assert model_name("kaggle:tensorflow/mask-rcnn-inception-resnet-v2/tensorFlow2/1024x1024/1") == "mask-rcnn-inception-resnet-v2/1024x1024"
    assert model_name("http://x/tf2/mask_rcnn_coco17_gpu-8.tar.gz") == "mask_rcnn_coco17_gpu-8"
    assert model_name("/work/main/demo/model") == "demo/model"
    assert model_name("s3://bucket/models/latest/") == "models/latest"


def test_html_is_self_contained_and_complete(report, plots):
    page = render_html(report, plots)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # the injected failure reason, escaped
    for name in VARIANTS:
        assert f"<td>{name}</td>" in page
    assert "+0.0004 [-0.0021, +0.0030]" in page
    assert "000000000139.jpg" in page and ">139<" in page
    assert PREVIOUS_RUN in page and "0.909" in page and "0.412" in page and "9,000 ms" in page
    assert RUN_ID in page and "CombinedNonMaxSuppression" in page and "AMD EPYC" in page
    assert page.count("data:image/svg+xml;base64,") == 2 and page.count("data:image/png;base64,") == 3


def test_html_mask_columns():
    report = make_report(masks=True)
    page = render_html(report, {})
    assert "mask ΔAP" in page and "-0.0026 [-0.0052, -0.0011]" in page and "significant loss" in page


def test_summary_markdown_wording(report):
    text = summary_markdown(report, LINKS)
    assert "int8: 3.9x smaller, 2.3x faster (p50), ΔAP +0.0004 [-0.0021, +0.0030]: no significant loss" in text
    assert "float16: 2.0x smaller, 1.0x faster (p50), ΔAP undefined\n" in text
    assert "int8: 1 of 201 images failed" in text
    assert f"2 vs {PREVIOUS_RUN}: int8 AP 0.909 → 0.412 (-0.4962 [-0.5400, -0.4700]); int8 latency_p50_ms 4,000 ms → 9,000 ms (+5,000 ms)" in text
    assert text.endswith("\n\n[run page](https://results.example/runs/r) · [report.json](https://results.example/runs/r/report.json)\n")
    loss = copy.deepcopy(report)
    loss["variants"][3]["delta_AP_vs_float32"], loss["variants"][3]["delta_AP_vs_float32_ci"] = -0.0031, [-0.0052, -0.0011]
    assert "ΔAP -0.0031 [-0.0052, -0.0011]: significant loss" in summary_markdown(loss, LINKS)


@pytest.mark.parametrize(("delta", "ci", "verdict"), [
    (-0.003, [-0.005, -0.001], "significant loss"),
    (-0.001, [-0.004, 0.002], "no significant loss"),
    (0.003, [0.001, 0.005], "significant gain"),
    (0.001, None, "no CI"),
    (None, None, "ΔAP undefined"),
])
def test_significance(delta, ci, verdict):
    assert significance(delta, ci) == verdict
