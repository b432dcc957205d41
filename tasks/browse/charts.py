"""The nightly view's charts: small inline SVG line charts whose every point is a link to its run.

No script and no plotting library: the server writes the SVG, the browser draws it, and a click on
a point opens ``/runs/<run id>``. Runs are spaced evenly along x in time order (a nightly's runs are
a day apart; a rerun the same night stays readable), labelled with their UTC date. A point may
carry an interval (a 95% CI, drawn as a vertical bar) and be marked regressed (a red ring, class
``regressed``). Every text is HTML-escaped.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote

WIDTH, HEIGHT = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 46, 44
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
REGRESSION = "#d00000"


@dataclass(frozen=True)
class Point:
    x: int  # the run's position in time order (0 = oldest)
    y: float
    run_id: str
    label: str  # the tooltip: variant, run, value
    interval: tuple[float, float] | None = None
    regressed: bool = False


@dataclass
class Series:
    name: str
    color: str
    points: list[Point] = field(default_factory=list)


def color_of(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _limits(series: list[Series]) -> tuple[float, float]:
    values = [v for s in series for p in s.points for v in (p.y, *(p.interval or ())) if math.isfinite(v)]
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or max(abs(high) * 0.05, 1e-3)
    return low - pad, high + pad


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values between low and high."""
    step = 10 ** math.floor(math.log10((high - low) / count))
    for factor in (1, 2, 2.5, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def line_chart(title: str, series: list[Series], x_labels: list[str], value_text: Callable[[float], str],
               zero_line: bool = False) -> str:
    """One chart as an ``<svg>`` element: a line and linked points per series, a legend line above."""
    runs = max(len(x_labels), 1)
    low, high = _limits(series)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_at(i: float) -> float:
        return LEFT + (plot_w / 2 if runs == 1 else i * plot_w / (runs - 1))

    def y_at(v: float) -> float:
        return TOP + (high - v) * plot_h / (high - low)

    parts = [f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>',
             f'<text x="{LEFT}" y="14" font-size="13" font-weight="600">{_e(title)}</text>'
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#ccc"/>']
    for tick in _ticks(low, high):
        y = y_at(tick)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_e(value_text(tick))}</text>')
    if zero_line and low < 0 < high:
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y_at(0):.1f}" y2="{y_at(0):.1f}" stroke="#000" stroke-width="0.8"/>')
    every = max(1, math.ceil(runs / 8))
    for i, label in enumerate(x_labels):
        if i % every == 0 or i == runs - 1:
            anchor = "middle" if runs == 1 else "start" if i == 0 else "end" if i == runs - 1 else "middle"
            parts.append(f'<text x="{x_at(i):.1f}" y="{TOP + plot_h + 16}" text-anchor="{anchor}" font-size="11">{_e(label)}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11" fill="#555">'
                 "run created (UTC), oldest left; click a point to open its run</text>")
    legend_x = LEFT
    for s in series:
        parts.append(f'<circle cx="{legend_x + 5}" cy="30" r="4" fill="{s.color}"/>'
                     f'<text x="{legend_x + 12}" y="34" font-size="11">{_e(s.name)}</text>')
        legend_x += 18 + 7 * len(s.name)
    if any(p.regressed for s in series for p in s.points):
        parts.append(f'<circle cx="{legend_x + 5}" cy="30" r="5" fill="none" stroke="{REGRESSION}" stroke-width="2"/>'
                     f'<text x="{legend_x + 14}" y="34" font-size="11" fill="{REGRESSION}">regression</text>')
    for offset, s in enumerate(series):
        shift = (offset - (len(series) - 1) / 2) * 2.5  # equal values stay visible side by side
        finite = [p for p in s.points if math.isfinite(p.y)]
        if len(finite) > 1:
            path = " ".join(f"{x_at(p.x) + shift:.1f},{y_at(p.y):.1f}" for p in finite)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="1.5"/>')
        for p in finite:
            x, y = x_at(p.x) + shift, y_at(p.y)
            mark = ""
            if p.interval is not None:
                mark += (f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_at(p.interval[0]):.1f}" y2="{y_at(p.interval[1]):.1f}" '
                         f'stroke="{s.color}" stroke-width="1.5"/>')
            if p.regressed:
                mark += f'<circle cx="{x:.1f}" cy="{y:.1f}" r="8" fill="none" stroke="{REGRESSION}" stroke-width="2"/>'
            parts.append(f'<a href="/runs/{quote(p.run_id)}" class="point{" regressed" if p.regressed else ""}" '
                         f'data-run="{_e(p.run_id)}" data-series="{_e(s.name)}"><title>{_e(p.label)}</title>{mark}'
                         f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{s.color}" stroke="#fff"/></a>')
    parts.append("</svg>")
    return "".join(parts)
