"""Plots of one run's report.json, for its ``runs/<run id>/plots/`` folder.

:func:`render_plots` returns ``{file name: bytes}``; figures are drawn with matplotlib's Agg
canvas directly (no pyplot, no global backend, nothing left open). Units: model size in MB
(10^6 bytes), latency in milliseconds, energy in J per image, AP = COCO mAP@[.5:.95] in [0, 1]. An undefined value
(None in the report, NaN in the history) is never plotted, and never as pycocotools' -1.

Files (PNG; the scatter plots as SVG too):

- ``accuracy_vs_size``: bbox AP vs model size, Pareto front; mask AP too for mask models.
- ``accuracy_vs_latency``: bbox AP vs latency p50, Pareto front.
- ``accuracy_vs_energy``: bbox AP vs energy per image of the inference stage (``inference.j_per_image``,
  found as ``report["energy"]["method"]`` says), Pareto front (absent when no variant has it).
- ``category_delta_ap``: per variant, the 20 categories whose AP dropped most vs float32
  (absent without float32 or without a variant to compare).
- ``latency_distribution``: every timed ``invoke()`` per variant (its percentiles when the
  report has no ``times_ms``).
- ``history_ap``: AP and ΔAP vs float32 over the runs on the same dataset, this run's regressions
  marked (only with at least 2 such runs).
- ``diagnosis_error`` (PNG and SVG, only with ``report["diagnosis"]``): SQNR in dB of each op's output
  and of the noise it adds itself, vs float32, in network order; the swept ops marked.
- ``diagnosis_recovery`` (PNG and SVG, likewise): AP recovered by keeping each swept op float, with
  its 95% CI, against the AP the variant loses.
"""
from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, ScalarFormatter

from tasks.publish.history import history_rows

MB = 1_000_000
TOP_CATEGORIES = 20  # bars per variant in category_delta_ap
FEW_INSTANCES = 20  # fewer non-crowd GT instances than this: the category's AP is noisy, and the plot says so
LOG_RATIO = 10.0  # a value axis spanning more than this factor is drawn in log scale
SAME = 1e-9  # AP differences below this are "the same" (saved_model vs float32)
DPI = 120
BASELINE = "float32"
SAVED_MODEL = "saved_model"
# Label offsets (points) tried in order around a scatter point; the far ones get a leader line.
LABEL_OFFSETS = ((7, 5), (7, -13), (-7, 5), (-7, -13), (0, 11), (0, -18), (24, 20), (24, -28), (-24, 20), (-24, -28),
                 (40, 0), (-40, 0), (0, 34), (0, -40))
RC = {"svg.hashsalt": "quantbench", "font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3}
MODEL_NAME_NOISE = ("saved_model", "model", "latest", "")
ARCHIVE_SUFFIX = re.compile(r"\.(tar\.gz|tgz|tar|zip|tflite)$")
REGRESSION = "#d62728"
HISTORY_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")


@dataclass(frozen=True)
class Point:
    """One labelled scatter point (x in the axis unit, y = AP)."""

    name: str
    x: float
    y: float


def render_plots(report: dict, history: pd.DataFrame | None = None) -> dict[str, bytes]:
    """The run's plots as ``{file name: content}`` (PNG, and SVG for the scatter plots).

    ``history`` is :func:`tasks.publish.history.read_history`'s frame (any runs of the store); only the runs
    on this report's dataset up to this run are drawn, this run included even if not written yet."""
    colors = _variant_colors([v["variant"] for v in report["variants"]]
                             + ([] if history is None else list(history["variant"].unique())))
    files: dict[str, bytes] = {}
    with matplotlib.rc_context(RC):
        for name, figure, vector in _figures(report, history, colors):
            files[f"{name}.png"] = _png(figure)
            if vector:
                files[f"{name}.svg"] = _svg(figure)
    return files


def _figures(report: dict, history: pd.DataFrame | None, colors: dict[str, str]) -> Iterable[tuple[str, Figure, bool]]:
    """``(name, figure, also as SVG)`` for each plot this report has data for."""
    yield "accuracy_vs_size", accuracy_vs_size(report, colors), True
    yield "accuracy_vs_latency", accuracy_vs_latency(report, colors), True
    if any(_j_per_image(entry) is not None for entry in report["variants"]):
        yield "accuracy_vs_energy", accuracy_vs_energy(report, colors), True
    category = category_delta_ap(report)
    if category is not None:
        yield "category_delta_ap", category, False
    yield "latency_distribution", latency_distribution(report, colors), False
    runs = None if history is None or history.empty else comparable_history(report, history)
    if runs is not None and runs["run_id"].nunique() >= 2:
        yield "history_ap", history_ap(report, runs, colors), False
    if report.get("diagnosis"):
        yield "diagnosis_error", diagnosis_error(report), True
        yield "diagnosis_recovery", diagnosis_recovery(report), True


# --- shared helpers ---------------------------------------------------------------------------


def _variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """A fixed color per variant name (tab10, in order of first appearance)."""
    names = list(dict.fromkeys(variants))
    palette = matplotlib.colormaps["tab10"].colors
    return {name: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, name in enumerate(names)}


def _figure(width: float, height: float) -> Figure:
    """A figure (inches) on an Agg canvas, laid out automatically."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _svg(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


def _number(value) -> float | None:
    """A finite float, or None for None/NaN/pycocotools' -1 (undefined) or a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _delta(value) -> float | None:
    """A finite float that may be negative (a difference), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def model_name(source: str) -> str:
    """A short name of the model source: ``kaggle:o/mask-rcnn/tf2/1024x1024/1`` → ``mask-rcnn/1024x1024``;
    ``…/mask_rcnn_x_coco17_gpu-8.tar.gz`` → ``mask_rcnn_x_coco17_gpu-8``; ``/a/demo/model`` → ``demo/model``."""
    if source.startswith("kaggle:"):
        parts = source.removeprefix("kaggle:").split("/")
        return "/".join(parts[i] for i in (1, 3) if i < len(parts))
    parts = [p for p in re.sub(r"^[a-z0-9]+://", "", source).split("/") if p]
    if parts and parts[-1] == "saved_model":
        parts.pop()
    if not parts:
        return source
    last = ARCHIVE_SUFFIX.sub("", parts[-1])
    if len(parts) > 1 and (last in MODEL_NAME_NOISE or last.isdigit()):
        return f"{parts[-2]}/{last}"
    return last


def run_title(report: dict) -> str:
    """``<model> on <annotations file>, <n> images`` (what every plot title starts with)."""
    dataset = report.get("dataset") or {}
    annotations = str(dataset.get("annotations") or "?").rstrip("/").rsplit("/", 1)[-1]
    return f"{model_name(str((report.get('model') or {}).get('source', '?')))} on {annotations}, {dataset.get('images', '?')} images"


def _log_if_wide(ax: Axes, values: Sequence[float], axis: str) -> bool:
    """Log scale on ``axis`` ("x"/"y") when the positive ``values`` span more than LOG_RATIO; plain
    numbers as tick labels either way. Returns whether the axis is logarithmic."""
    positive = [v for v in values if v > 0]
    wide = bool(positive) and max(positive) / min(positive) > LOG_RATIO
    target = ax.xaxis if axis == "x" else ax.yaxis
    if wide:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    return wide


def _plain_ap_axis(ax: Axes) -> None:
    """AP tick labels as plain decimals with one precision (no offset like ``+8.9e-1``)."""
    ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))


def _overlap(a, b) -> float:
    """Overlapping area of two display-space boxes (pixels²)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0) * max(height, 0)


def _distance(box, x: float, y: float) -> float:
    """Pixels from display point (x, y) to the nearest point of ``box``."""
    return math.hypot(max(box.x0 - x, 0, x - box.x1), max(box.y0 - y, 0, y - box.y1))


def _ambiguous(box, own: np.ndarray, others: Sequence[np.ndarray]) -> bool:
    """Whether a label box is about as close to another point as to its own (pixels)."""
    mine = _distance(box, *own)
    return any(_distance(box, *other) < mine + 6 for other in others)


def label_points(ax: Axes, points: Sequence[Point]) -> None:
    """Name each point, choosing for each label the first offset in LABEL_OFFSETS that overlaps no
    other label, no point, is nearer its own point than any other and stays inside the axes (else
    the least bad one)."""
    figure = ax.get_figure()
    renderer = figure.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    pixels = ax.transData.transform([(p.x, p.y) for p in points]) if points else []
    marks = [matplotlib.transforms.Bbox.from_extents(x - 5, y - 5, x + 5, y + 5) for x, y in pixels]
    placed = []
    for i, point in enumerate(points):
        others = [pixel for j, pixel in enumerate(pixels) if j != i]
        best = None
        for dx, dy in LABEL_OFFSETS:
            far = abs(dx) > 10 or abs(dy) > 20
            text = ax.annotate(point.name, (point.x, point.y), xytext=(dx, dy), textcoords="offset points",
                               ha="left" if dx > 0 else "right" if dx < 0 else "center", fontsize=9,
                               arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.7} if far else None)
            box = text.get_window_extent(renderer)
            outside = box.width * box.height - _overlap(box, area)
            cost = sum(_overlap(box, other) for other in placed + marks) + 2 * outside
            cost += box.width * box.height if _ambiguous(box, pixels[i], others) else 0
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best[2])


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes (smaller x, higher y), by increasing x."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p.x, -p.y)):
        if not front or point.y > front[-1].y:
            front.append(point)
    return front


def _draw_front(ax: Axes, points: Sequence[Point], better: str) -> None:
    """The Pareto front as a staircase through its points, on to the right edge of the axes (below
    it, everything is dominated); ``better`` says what wins on x. Call it once the axes limits are
    final: it keeps them."""
    front = pareto_front(points)
    if not front:
        return
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    xs, ys = [], []
    for point, following in zip(front, front[1:] + [None]):
        xs += [point.x, following.x if following else x_high]
        ys += [point.y, point.y]
    ax.plot(xs, ys, color="0.35", lw=1.2, ls="--", zorder=1, label=f"Pareto front ({better} and more accurate)")
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low, y_high)


# --- accuracy scatter plots --------------------------------------------------------------------


def _scatter(report: dict, colors: dict[str, str], x_of, x_label: str, better: str, with_masks: bool) -> Figure:
    """bbox AP (y) vs ``x_of(variant entry)`` per variant, labelled, with the Pareto front (``better``:
    what wins on x, e.g. "smaller"); mask AP as a second series when ``with_masks`` and the variants
    have "segm"."""
    figure = _figure(7.5, 5.2)
    ax = figure.add_subplot()
    points, missing = [], []
    for entry in report["variants"]:
        x, y = x_of(entry), _number((entry.get("bbox") or {}).get("AP"))
        if x is None or y is None:
            missing.append(entry["variant"])
            continue
        points.append(Point(entry["variant"], x, y))
        ax.scatter([x], [y], s=60, color=colors[entry["variant"]], edgecolor="black", lw=0.6, zorder=3)
    ax.scatter([], [], s=60, color="0.6", edgecolor="black", lw=0.6, label="bbox AP")
    masks = [(x_of(e), _number(e["segm"].get("AP"))) for e in report["variants"] if with_masks and "segm" in e]
    masks = [(x, y) for x, y in masks if x is not None and y is not None]
    if masks:
        ax.scatter(*zip(*masks), s=50, marker="s", facecolor="none", edgecolor="0.2", lw=1.2, zorder=3, label="mask AP")
    _log_if_wide(ax, [p.x for p in points], "x")
    ax.margins(x=0.2, y=0.2)
    ax.autoscale_view()
    _draw_front(ax, points, better)
    _plain_ap_axis(ax)
    what = x_label.split(" (")[0]
    ax.set_xlabel(x_label + (f"\nnot plotted (AP or {what} undefined): {', '.join(missing)}" if missing else ""))
    ax.set_ylabel("AP (COCO mAP@[.5:.95])")
    ax.set_title(f"AP vs {what} (up-left is better)\n{run_title(report)}")
    if not points:
        ax.text(0.5, 0.5, "no variant has a defined AP", transform=ax.transAxes, ha="center", va="center")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13 - 0.05 * bool(missing)), ncol=3, fontsize=8, frameon=False)
    figure.canvas.draw()  # final limits and layout before the labels are placed
    label_points(ax, points)
    return figure


def _size_mb(entry: dict) -> float | None:
    size = _number(entry.get("model_bytes"))
    return None if size is None else size / MB


def _p50_ms(entry: dict) -> float | None:
    return _number((entry.get("latency") or entry.get("latency_ms") or {}).get("p50"))


def accuracy_vs_size(report: dict, colors: dict[str, str]) -> Figure:
    """bbox AP (and mask AP) vs model size in MB (10^6 bytes)."""
    return _scatter(report, colors, _size_mb, "model size (MB)", "smaller", True)


def accuracy_vs_latency(report: dict, colors: dict[str, str]) -> Figure:
    """bbox AP vs latency p50 in ms (``invoke()`` only)."""
    threads = (report.get("settings") or {}).get("threads", "?")
    return _scatter(report, colors, _p50_ms, f"latency p50 (ms, invoke() only, {threads} thread(s))", "faster", False)


def _j_per_image(entry: dict) -> float | None:
    return _number((entry.get("inference") or {}).get("j_per_image"))


def accuracy_vs_energy(report: dict, colors: dict[str, str]) -> Figure:
    """bbox AP vs energy per image in J over the inference stage (its method: ``report["energy"]``)."""
    method = (report.get("energy") or {}).get("method", "method unknown")
    return _scatter(report, colors, _j_per_image, f"energy per image (J, inference stage, {method})", "less energy", False)


# --- per-category ΔAP ----------------------------------------------------------------------------


def _category_deltas(entry: dict, baseline: dict[str, float | None]) -> dict[str, float]:
    """Per category, the variant's AP minus float32's, for categories where both are defined."""
    own = entry.get("per_category_AP") or {}
    deltas = {}
    for name, value in own.items():
        mine, reference = _number(value), _number(baseline.get(name))
        if mine is not None and reference is not None:
            deltas[name] = mine - reference
    return deltas


def _compared_variants(report: dict) -> list[tuple[str, dict[str, float]]]:
    """``(variant, deltas)`` for every variant but float32, saved_model only when it differs."""
    baseline = next((e for e in report["variants"] if e["variant"] == BASELINE), None)
    if baseline is None:
        return []
    base = baseline.get("per_category_AP") or {}
    compared = []
    for entry in report["variants"]:
        deltas = _category_deltas(entry, base)
        if entry["variant"] == BASELINE or not deltas:
            continue
        if entry["variant"] == SAVED_MODEL and all(abs(d) < SAME for d in deltas.values()):
            continue
        compared.append((entry["variant"], deltas))
    return compared


def _few(name: str, instances: dict) -> bool:
    """Whether the category has fewer than FEW_INSTANCES ground-truth instances (False when unknown)."""
    count = instances.get(name)
    return isinstance(count, int) and count < FEW_INSTANCES


def _category_label(name: str, baseline_ap: float, instances: dict) -> str:
    """``toaster (fp32 AP 0.412; only 9 GT)``: the count only when it is below FEW_INSTANCES."""
    few = f"; only {instances[name]} GT" if _few(name, instances) else ""
    return f"{name} (fp32 AP {baseline_ap:.3f}{few})"


def category_delta_ap(report: dict) -> Figure | None:
    """Per compared variant, horizontal bars of the TOP_CATEGORIES most negative per-category ΔAP vs
    float32 (AP units), on one shared x axis; None when there is nothing to compare."""
    compared = _compared_variants(report)
    if not compared:
        return None
    base = next(e for e in report["variants"] if e["variant"] == BASELINE)["per_category_AP"]
    instances = (report.get("dataset") or {}).get("instances_per_category") or {}
    shown = [(variant, sorted(deltas.items(), key=lambda item: item[1])[:TOP_CATEGORIES], len(deltas)) for variant, deltas in compared]
    heights = [0.9 + 0.26 * len(bars) for _, bars, _ in shown]
    figure = _figure(9.5, 1.1 + sum(heights))
    axes = figure.subplots(len(shown), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (variant, bars, total) in zip(axes, shown):
        _category_bars(ax, bars, base, instances)
        ax.set_title(_category_title(variant, bars, total, len(base)), loc="left", fontweight="bold", fontsize=10)
    values = [d for _, bars, _ in shown for _, d in bars]
    low, high = min(0.0, *values), max(0.0, *values)
    pad = 0.3 * ((high - low) or 0.001)
    axes[0].set_xlim(low - pad if low < 0 else -pad / 4, high + pad if high > 0 else pad / 4)
    axes[-1].set_xlabel("ΔAP vs float32 (AP units, COCO mAP@[.5:.95] bbox); negative = accuracy lost to quantization")
    note = f"\n'only N GT': fewer than {FEW_INSTANCES} ground-truth instances in the evaluated images (noisy AP)" if instances else ""
    absent = [e["variant"] for e in report["variants"] if e["variant"] not in (BASELINE, SAVED_MODEL) and e["variant"] not in dict(compared)]
    note += f"\nnot shown (no per-category AP defined): {', '.join(absent)}" if absent else ""
    figure.suptitle(f"Per-category ΔAP vs float32, most hurt first\n{run_title(report)}{note}", fontsize=11)
    return figure


def _category_title(variant: str, bars: list[tuple[str, float]], compared: int, categories: int) -> str:
    """``int8: 20 most hurt of 79 categories (1 undefined, skipped), 17 below float32``."""
    shown = f"{len(bars)} most hurt of {compared} categories" if len(bars) < compared else f"all {compared} categories"
    skipped = f" ({categories - compared} undefined, skipped)" if categories > compared else ""
    return f"{variant}: {shown}{skipped}, {sum(1 for _, d in bars if d < 0)} below float32"


def _category_bars(ax: Axes, bars: list[tuple[str, float]], base: dict, instances: dict) -> None:
    """One variant's bars, most hurt on top, each with its ΔAP written at its end; categories with
    few ground-truth instances hatched and paler."""
    names = [_category_label(name, _number(base[name]), instances) for name, _ in bars]
    values = [d for _, d in bars]
    positions = np.arange(len(bars))
    few = [_few(name, instances) for name, _ in bars]
    ax.barh(positions, values, color=[("#d62728" if v < 0 else "#2ca02c", 0.45 if f else 1.0) for v, f in zip(values, few)],
            hatch=["//" if f else "" for f in few], height=0.7)
    ax.set_yticks(positions, names, fontsize=9)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.grid(axis="y", visible=False)
    for y, value in zip(positions, values):
        ax.annotate(f"{value:+.4f}", (value, y), xytext=(-4 if value < 0 else 4, 0), textcoords="offset points",
                    ha="right" if value < 0 else "left", va="center", fontsize=8)


# --- latency distribution -----------------------------------------------------------------------


def _times(latency: dict) -> list[float]:
    """The timed runs in ms (``times_ms``), finite ones only; [] when the report has none."""
    return [float(t) for t in latency.get("times_ms") or [] if _number(t) is not None]


def latency_distribution(report: dict, colors: dict[str, str]) -> Figure:
    """Per variant, every timed ``invoke()`` (box plot plus the individual runs) in ms, or, for a
    report without ``times_ms``, its min–max range and p50/p90/p99."""
    entries = [e for e in report["variants"] if _p50_ms(e) is not None]
    figure = _figure(max(8.0, 1.4 * len(entries) + 2), 5.4)
    ax = figure.add_subplot()
    values, rng, timed = [], np.random.default_rng(0), []
    for i, entry in enumerate(entries):
        latency = entry.get("latency") or entry.get("latency_ms") or {}
        times = _times(latency)
        timed.append(bool(times))
        values += _draw_times(ax, i, times, colors[entry["variant"]], rng) if times else _draw_percentiles(ax, i, latency, colors[entry["variant"]])
    log = _log_if_wide(ax, values, "y")
    ax.set_xticks(range(len(entries)), [f"{e['variant']}\np50 {ms_text(_p50_ms(e))}" for e in entries])
    ax.set_xlim(-0.6, len(entries) - 0.4)
    ax.set_ylabel("invoke() latency (ms" + (", log scale)" if log else ")"))
    ax.grid(axis="x", visible=False)
    if not all(timed):
        ax.legend(handles=_percentile_legend(), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
    threads = (report.get("settings") or {}).get("threads", "?")
    percentiles_only = [e["variant"] for e, has_times in zip(entries, timed) if not has_times]
    what = "\n".join(text for text, shown in (
        ("dots: every timed run; box: quartiles, whiskers: 1.5 IQR", any(timed)),
        (f"percentiles only (no per-run times): {', '.join(percentiles_only)}", bool(percentiles_only))) if shown)
    ax.set_title(f"Latency per variant: invoke() only, {threads} thread(s), one variant at a time\n{run_title(report)}\n{what}")
    return figure


def ms_text(value: float) -> str:
    """Milliseconds with 3 significant digits, never in exponent form: ``1.69 ms``, ``21,000 ms``."""
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.3g} ms"


def _draw_times(ax: Axes, position: int, times: list[float], color: str, rng: np.random.Generator) -> list[float]:
    """A box plot of ``times`` (ms) with each run as a jittered dot; returns the times."""
    ax.boxplot([times], positions=[position], widths=0.5, showfliers=False, patch_artist=True,
               boxprops={"facecolor": matplotlib.colors.to_rgba(color, 0.25), "edgecolor": color},
               medianprops={"color": "black"}, whiskerprops={"color": color}, capprops={"color": color})
    jitter = rng.uniform(-0.18, 0.18, len(times))
    ax.scatter(position + jitter, times, s=8, color=color, alpha=0.6, lw=0, zorder=3)
    return times


def _percentile_legend() -> list[Line2D]:
    """Legend handles for :func:`_draw_percentiles`' marks."""
    return [Line2D([], [], color="0.4", lw=2, label="min–max"),
            Line2D([], [], color="0.4", marker="D", ls="", markeredgecolor="black", label="p50"),
            Line2D([], [], color="black", marker="_", ms=14, mew=1.5, ls="", label="p90"),
            Line2D([], [], color="black", marker="x", ms=7, ls="", label="p99")]


def _draw_percentiles(ax: Axes, position: int, latency: dict, color: str) -> list[float]:
    """min–max as a line, p50 as a diamond, p90 as a tick, p99 as a cross (ms); returns the values drawn."""
    drawn = {k: _number(latency.get(k)) for k in ("min", "max", "p50", "p90", "p99")}
    if drawn["min"] is not None and drawn["max"] is not None:
        ax.vlines(position, drawn["min"], drawn["max"], color=color, lw=2)
    for key, marker, size in (("p50", "D", 9), ("p90", "_", 20), ("p99", "x", 8)):
        if drawn[key] is not None:
            ax.plot([position], [drawn[key]], marker=marker, ms=size, ls="", mew=1.5 if key != "p50" else 0.8,
                    color=color if key == "p50" else "black", markeredgecolor="black", zorder=3)
    return [v for v in drawn.values() if v is not None]


# --- history ------------------------------------------------------------------------------------


def comparable_history(report: dict, history: pd.DataFrame) -> pd.DataFrame:
    """History rows on the report's dataset digest created up to this run, this run's own rows
    (from the report) replacing any stored ones, oldest first."""
    own = history_rows(report)
    rows = history[(history["run_id"] != report["run_id"]) & (history["created"] <= own["created"].iloc[0])]
    digest = (report.get("dataset") or {}).get("digest")
    if digest:
        rows = rows[rows["dataset_digest"] == digest]
    frames = [frame for frame in (rows, own) if not frame.empty]
    return pd.concat(frames, ignore_index=True).sort_values(["created", "run_id"], kind="stable").reset_index(drop=True)


def _utc(created: pd.Series) -> np.ndarray:
    """Timestamps as naive UTC datetime64 (matplotlib's date axis)."""
    return created.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()


def history_ap(report: dict, runs: pd.DataFrame, colors: dict[str, str]) -> Figure:
    """Top: bbox AP (solid) and mask AP (dashed) per variant over runs; bottom: ΔAP vs float32 with
    its 95% CI. Variants with equal values stay visible (markers shrink from the first variant to
    the last; CI bars are spread a little in time). This run's AP/ΔAP regressions are circled in
    red and named; the others (size, latency) are named in the lower panel."""
    figure = _figure(9.5, 7.0)
    top, bottom = figure.subplots(2, 1, sharex=True)
    when_all = _utc(runs["created"])
    span = max((when_all.max() - when_all.min()) / np.timedelta64(1, "s"), 60.0)
    variants = list(dict.fromkeys(runs["variant"]))
    for i, (variant, rows) in enumerate((v, runs[runs["variant"] == v]) for v in variants):
        when, color = _utc(rows["created"]), colors.get(variant, "0.5")
        style = {"marker": HISTORY_MARKERS[i % len(HISTORY_MARKERS)], "ms": max(11 - 1.5 * i, 4), "color": color}
        top.plot(when, rows["AP"], label=variant, **style)
        if rows["mask_AP"].notna().any():
            top.plot(when, rows["mask_AP"], ls="--", mfc="none", label=f"{variant} mask", **style)
        if variant != BASELINE:
            shift = np.timedelta64(int(span * 0.012 * (i - (len(variants) - 1) / 2)), "s")
            _delta_series(bottom, when + shift, rows, variant, style)
    current = _utc(runs.loc[runs["run_id"] == report["run_id"], "created"])[0]
    for ax in (top, bottom):
        ax.axvline(current, color="0.6", lw=0.8, ls=":")
        _plain_ap_axis(ax)
    bottom.axhline(0, color="black", lw=0.8)
    top.set_ylabel("AP (COCO mAP@[.5:.95])")
    bottom.set_ylabel("ΔAP vs float32, 95% CI")
    bottom.set_xlabel("run created (UTC); dotted line: this run")
    bottom.xaxis.set_major_locator(AutoDateLocator())
    bottom.xaxis.set_major_formatter(ConciseDateFormatter(bottom.xaxis.get_major_locator()))
    _mark_regressions(report, current, top, bottom)  # after every series: it adds the legends
    top.set_title(f"bbox AP over the {runs['run_id'].nunique()} runs on this dataset\n{run_title(report)}")
    return figure


def _delta_series(ax: Axes, when: np.ndarray, rows: pd.DataFrame, variant: str, style: dict) -> None:
    """ΔAP per run with its CI as error bars (runs without a CI: the point alone)."""
    delta = rows["delta_AP_vs_float32"].to_numpy(dtype=float)
    below = np.nan_to_num(delta - rows["delta_AP_vs_float32_ci_low"].to_numpy(dtype=float), nan=0.0)
    above = np.nan_to_num(rows["delta_AP_vs_float32_ci_high"].to_numpy(dtype=float) - delta, nan=0.0)
    ax.errorbar(when, delta, yerr=[np.clip(below, 0, None), np.clip(above, 0, None)], capsize=3, label=variant, **style)


def _mark_regressions(report: dict, current: np.datetime64, top: Axes, bottom: Axes) -> None:
    """Circle this run's AP, mask AP and ΔAP regressions at their current value and name them in a
    box where the panel has room (the other regressions, size and latency, in the lower panel's box);
    then add each panel's legend of variants."""
    named: dict[Axes, list[str]] = {top: [], bottom: []}
    others = []
    for regression in report.get("regressions") or []:
        value, metric = _delta(regression.get("current")), regression.get("metric")
        ax = top if metric in ("AP", "mask_AP") else bottom if metric == "delta_AP_vs_float32" else None
        if ax is None or value is None:
            others.append(regression_text(regression))
            continue
        ax.scatter([current], [value], s=260, facecolor="none", edgecolor=REGRESSION, lw=2, zorder=4)
        named[ax].append(regression_text(regression))
    unplotted = ["also regressed (not plotted here):", *others] if others else []
    for ax, names in named.items():
        lines = names + (unplotted if ax is bottom else [])
        if lines:
            circle = Line2D([], [], marker="o", ms=12, mfc="none", mec=REGRESSION, mew=2, ls="", visible=bool(names))
            ax.add_artist(ax.legend([circle], [f"regressed vs {report.get('compared_with')}:\n" + "\n".join(lines)],
                                    loc="best", fontsize=8, labelcolor=REGRESSION, framealpha=0.9))
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))


def metric_text(metric: str, value) -> str:
    """A regression metric's value in its unit: AP 3 decimals, ΔAP signed 4, size MB, latency ms."""
    number = _delta(value)
    if number is None:
        return "n/a"
    if metric == "model_bytes":
        return f"{number / MB:.2f} MB"
    if metric == "latency_p50_ms":
        return ms_text(number)
    return f"{number:+.4f}" if metric.startswith("delta") else f"{number:.3f}"


def regression_text(regression: dict) -> str:
    """``int8 AP 0.909 → 0.402`` (previous → current, in the metric's unit)."""
    metric = str(regression.get("metric"))
    return (f"{regression.get('variant')} {metric} {metric_text(metric, regression.get('previous'))} → "
            f"{metric_text(metric, regression.get('current'))}")


# --- op diagnosis (issue 19) --------------------------------------------------------------------

SIGNIFICANT = "#1b7a1b"


def _sqnr_series(ax: Axes, errors: list[dict], key: str, style: dict, label: str) -> None:
    """One SQNR series (dB) per op index, the ops with a finite value only."""
    finite = [(e["index"], e[key]) for e in errors if _delta(e.get(key)) is not None]
    if finite:
        ax.plot(*zip(*finite), label=label, **style)


def _no_error(ax: Axes, errors: list[dict], key: str, height: float, color: str, label: str) -> None:
    """The ops whose ``key`` is None (no error: infinite SQNR) as triangles at ``height`` (axes fraction)."""
    infinite = [e["index"] for e in errors if e.get(key) is None]
    if infinite:
        top = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(infinite, [height] * len(infinite), ls="", marker="^", ms=6, color=color, transform=top, clip_on=False, label=label)


def _sqnr_limits(ax: Axes, errors: list[dict]) -> None:
    """y limits (dB) leaving the top quarter free for the no-error triangles and the swept ops' labels."""
    values = [e[key] for e in errors for key in ("sqnr_db", "own_sqnr_db") if _delta(e.get(key)) is not None]
    if not values:
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no op output differs from float32", transform=ax.transAxes, ha="center", va="center")
        return
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    ax.set_ylim(low - 0.05 * span, high + 0.4 * span)


def diagnosis_error(report: dict) -> Figure:
    """Per compared op (x: op index, network order): the SQNR of its output vs float32 (grey line)
    and of the noise it adds itself (blue dots, filled when the op reads a quantized weight), in dB;
    lower means more error. No error (None: infinite SQNR) is drawn as a triangle near the top edge
    (own SQNR above output SQNR). The swept ops get a red vertical line, numbered under the triangles."""
    diagnosis = report["diagnosis"]
    errors = sorted(diagnosis.get("errors") or [], key=lambda e: e["index"])
    figure = _figure(9.5, 5.0)
    ax = figure.add_subplot()
    own = {"color": "#1f77b4", "ls": "", "marker": "o", "ms": 5}
    _sqnr_series(ax, errors, "sqnr_db", {"color": "0.55", "lw": 1.0, "marker": ".", "ms": 4}, "output SQNR")
    _sqnr_series(ax, [e for e in errors if e.get("quantized")], "own_sqnr_db", own, "own SQNR (noise the op adds), quantized weight")
    _sqnr_series(ax, [e for e in errors if not e.get("quantized")], "own_sqnr_db", {**own, "mfc": "none"},
                 "own SQNR, float weights or none")
    _no_error(ax, errors, "own_sqnr_db", 0.97, "#1f77b4", "own SQNR: no error (∞ dB)")
    _no_error(ax, errors, "sqnr_db", 0.92, "0.55", "output SQNR: no error (∞ dB)")
    _sqnr_limits(ax, errors)
    top = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for op in diagnosis.get("ops") or []:
        ax.axvline(op["index"], color=REGRESSION, lw=0.9, alpha=0.6, zorder=0)
        ax.text(op["index"], 0.88, f"{op['index']} ", transform=top, rotation=90, color=REGRESSION, fontsize=8, ha="center", va="top")
    ax.plot([], [], color=REGRESSION, lw=0.9, alpha=0.6, label="swept op (kept float alone and scored)")
    ax.set_xlabel("op index (network order, main subgraph)")
    ax.set_ylabel("SQNR vs float32 (dB; lower = more error)")
    ax.set_title(f"Numeric error per op: {diagnosis['variant']} vs float32, {len(errors)} ops compared\n{run_title(report)}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    return figure


def _op_label(op: dict) -> str:
    return f"op {op['index']} {op['op_type']}"


def diagnosis_recovery(report: dict) -> Figure:
    """Per swept op (most AP recovered on top): the AP recovered by keeping it float alone (AP units)
    with its paired bootstrap 95% CI as whiskers, green when the CI lies above 0; a dashed line at
    the AP the variant loses (full recovery). Ops whose AP is undefined are named under the axis."""
    diagnosis = report["diagnosis"]
    ops = diagnosis.get("ops") or []
    shown = [op for op in ops if _delta(op.get("recovered")) is not None]
    missing = [_op_label(op) for op in ops if _delta(op.get("recovered")) is None]
    figure = _figure(9.5, 2.4 + 0.4 * max(len(shown), 1))
    ax = figure.add_subplot()
    for position, op in enumerate(shown):
        value, ci = op["recovered"], op.get("ci")
        significant = bool(ci) and ci[0] > 0
        error = [[max(value - ci[0], 0.0)], [max(ci[1] - value, 0.0)]] if ci else None
        ax.errorbar([value], [position], xerr=error, fmt="o", ms=7, capsize=4, color=SIGNIFICANT if significant else "0.45")
        ax.annotate(f"{value:+.3f}", (value, position), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=8)
    ax.set_yticks(range(len(shown)), [_op_label(op) for op in shown])
    ax.set_ylim(len(shown) - 0.4 if shown else 1, -0.6)  # most recovered on top
    ax.grid(axis="y", visible=False)
    ax.axvline(0, color="black", lw=0.8)
    lost = _delta(diagnosis.get("lost"))
    handles = [Line2D([], [], color=SIGNIFICANT, marker="o", label="95% CI above 0"),
               Line2D([], [], color="0.45", marker="o", label="95% CI reaches 0 or below (not significant)")]
    if lost is not None and lost > 0:
        handles.append(ax.axvline(lost, color=REGRESSION, ls="--", lw=1.2, label=f"AP lost by {diagnosis['variant']}: {lost:.3f}"))
    ends = [0.0, *(op["recovered"] for op in shown), *(bound for op in shown for bound in op.get("ci") or [])]
    ends += [lost] if lost is not None and lost > 0 else []
    pad = 0.08 * ((max(ends) - min(ends)) or 0.01)
    ax.set_xlim(min(ends) - pad, max(ends) + pad)
    if not shown:
        ax.text(0.5, 0.5, "no swept op has a defined AP", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel(f"AP recovered = AP (op kept float) − AP ({diagnosis['variant']}), COCO mAP@[.5:.95]"
                  + (f"\nnot plotted (AP undefined): {', '.join(missing)}" if missing else ""))
    ax.set_title(f"AP recovered by keeping one op float: {diagnosis['variant']}\n"
                 f"{diagnosis['images']} images, reference: {diagnosis['reference']}; whiskers: paired bootstrap 95% CI")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2 - 0.06 * bool(missing)), ncol=2, fontsize=8, frameon=False)
    return figure
