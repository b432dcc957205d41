"""One run's report as a single self-contained HTML page, and a short markdown summary of it.

:func:`render_html` embeds the plots of :func:`tasks.publish.plots.render_plots` as ``data:`` URIs (SVG
where there is one, else PNG): the page loads nothing from anywhere and runs no script. Every
string taken from the report is HTML-escaped. A report with a ``diagnosis`` (issue 19) gets a
Diagnosis section: its summary line and swept ops' table (worded by :mod:`tasks.publish.diagnosis`)
and its two plots. :func:`summary_markdown` is the few lines of a
Prefect markdown artifact: size and speed vs float32, ΔAP with its 95% CI and whether the loss is
significant, failures, regressions and where to open the results.

Units as in report.json: sizes in bytes (shown in MB = 10^6 bytes), latency in ms, AP in [0, 1].
"""
from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable


from tasks.publish.diagnosis import cost_text, diagnosis_summary, op_cells, recovered_text
from tasks.publish.history import delta_text
from tasks.publish.links import RunLinks
from tasks.publish.plots import MB, metric_text, ms_text, run_title
from tasks.publish.report import report_table

BASELINE = "float32"
PLOTS = (  # (file name without extension, caption), in page order
    ("accuracy_vs_size", "bbox AP (and mask AP) vs model size; the dashed staircase is the Pareto front."),
    ("accuracy_vs_latency", "bbox AP vs invoke() latency p50; the dashed staircase is the Pareto front."),
    ("accuracy_vs_energy", "bbox AP vs energy per image (J) of the inference stage; the dashed staircase is the Pareto front."),
    ("latency_distribution", "Every timed invoke() per variant (or its percentiles)."),
    ("category_delta_ap", "Per-category ΔAP vs float32, the most hurt categories first."),
    ("history_ap", "AP and ΔAP vs float32 over the runs on this dataset; this run's regressions circled."),
)
DIAGNOSIS_PLOTS = (  # shown in the Diagnosis section, not under Plots
    ("diagnosis_error", ("Numeric error along the network: per op (network order), the SQNR vs float32 of its output (grey) and of "
                         "the noise it adds itself (blue), in dB, lower = more error; an op with no error (∞ dB) is a triangle near the "
                         "top edge. Red lines: the swept ops.")),
    ("diagnosis_recovery", ("AP recovered by keeping each swept op float alone, with its paired bootstrap 95% CI (green: CI above 0); "
                            "dashed: the AP the variant loses.")),
)
DIAGNOSIS_COLUMNS = ("op", "type", "tensor", "shape", "SQNR dB", "own SQNR dB", "NRMSE", "AP with op float", "AP recovered [95% CI]",
                     "size change kB")
IMAGE_TYPES = (("svg", "image/svg+xml"), ("png", "image/png"))
TABLE_NOTE = ("size_MB: model file (the SavedModel directory for saved_model), MB = 10^6 bytes; x_fp32: size relative "
              "to float32; lat_*: invoke() latency in ms; post_ms: reading the outputs, the head's decode and NMS, p50 ms per image; img_per_s: 1000 / mean latency; pipeline_img_s: images per second of the "
              "inference stage (read, decode, invoke, COCO conversion) over the wall time its shards ran; AP…AR100: COCO bbox stats "
              "(n/a: undefined, no ground truth in that range); dAP_vs_fp32: ΔAP vs float32 with its paired bootstrap "
              "95% CI; q_share: share of weight bytes in a quantized dtype.")
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafafa; }
code { font-size: 12px; background: #f4f4f4; padding: 0 3px; word-break: break-all; }
.loss { color: #b00020; font-weight: 600; } .gain { color: #1b7a1b; font-weight: 600; } .muted { color: #666; }
.scroll { overflow-x: auto; } figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dt { font-weight: 600; } dd { margin: 0; } table.nowrap td { white-space: nowrap; }
"""


# --- shared wording ---------------------------------------------------------------------------


def _finite(value) -> float | None:
    """A finite float, else None (None, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _interval(ci) -> tuple[float, float] | None:
    """``(low, high)`` of a CI list, or None when absent or undefined."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in (_finite(ci[0]), _finite(ci[1])):
        return _finite(ci[0]), _finite(ci[1])
    return None


def significance(delta, ci) -> str:
    """``significant loss`` (CI entirely below 0), ``significant gain`` (entirely above 0), ``no
    significant loss`` (contains 0), ``no CI`` or ``ΔAP undefined``."""
    interval = _interval(ci)
    if _finite(delta) is None:
        return "ΔAP undefined"
    if interval is None:
        return "no CI"
    if interval[1] < 0:
        return "significant loss"
    return "significant gain" if interval[0] > 0 else "no significant loss"


def delta_with_ci(delta, ci) -> str:
    """``+0.0004 [-0.0021, +0.0030]``; the value alone without a CI; ``n/a`` when undefined."""
    low, high = _interval(ci) or (math.nan, math.nan)
    value = _finite(delta)
    return delta_text(math.nan if value is None else value, low, high)


def _ratio(value: float | None, reference: float | None, less: str, more: str) -> str | None:
    """``3.9x smaller`` (value below reference) or ``1.2x larger``; None when either is undefined."""
    if value is None or reference is None or value <= 0 or reference <= 0:
        return None
    return f"{reference / value:.1f}x {less}" if value <= reference else f"{value / reference:.1f}x {more}"


def _p50(entry: dict) -> float | None:
    return _finite((entry.get("latency") or entry.get("latency_ms") or {}).get("p50"))


def variant_summary(entry: dict, float32: dict | None) -> str:
    """``int8: 3.9x smaller, 5.1x faster (p50), ΔAP -0.0012 [-0.0040, +0.0020]: no significant loss``
    (plus mask ΔAP for mask models); plain text."""
    parts = []
    if float32 is not None:
        parts.append(_ratio(_finite(entry.get("model_bytes")), _finite(float32.get("model_bytes")), "smaller", "larger"))
        speed = _ratio(_p50(entry), _p50(float32), "faster", "slower")
        parts.append(speed and f"{speed} (p50)")
    parts.append(_delta_phrase("ΔAP", entry.get("delta_AP_vs_float32"), entry.get("delta_AP_vs_float32_ci")))
    if "delta_mask_AP_vs_float32" in entry:
        parts.append(_delta_phrase("mask ΔAP", entry["delta_mask_AP_vs_float32"], entry.get("delta_mask_AP_vs_float32_ci")))
    return f"{entry['variant']}: " + ", ".join(p for p in parts if p)


def _delta_phrase(label: str, delta, ci) -> str:
    """``ΔAP -0.0012 [-0.0040, +0.0020]: no significant loss``, or ``ΔAP undefined``."""
    if _finite(delta) is None:
        return f"{label} undefined"
    return f"{label} {delta_with_ci(delta, ci)}: {significance(delta, ci)}"


def _baseline(report: dict) -> dict | None:
    return next((e for e in report["variants"] if e["variant"] == BASELINE), None)


def _baseline_summary(float32: dict) -> str:
    """``float32 (baseline): 6.15 MB, p50 5.83 ms, AP 0.891``."""
    size, p50, ap = _finite(float32.get("model_bytes")), _p50(float32), _finite((float32.get("bbox") or {}).get("AP"))
    return (f"float32 (baseline): {'n/a' if size is None else f'{size / MB:.2f} MB'}, "
            f"p50 {'n/a' if p50 is None else ms_text(p50)}, AP {'n/a' if ap is None or ap < 0 else f'{ap:.3f}'}")


def _failure_counts(report: dict) -> str:
    """``int8: 2 of 200 images failed; …`` or ``none``."""
    counts = [f"{e['variant']}: {len(e.get('failures') or [])} of {e.get('images', 0) + len(e.get('failures') or [])} images failed"
              for e in report["variants"] if e.get("failures")]
    return "; ".join(counts) or "none"


# --- markdown summary ---------------------------------------------------------------------------


def summary_markdown(report: dict, links: RunLinks) -> str:
    """A few markdown lines for a Prefect artifact: each variant vs float32 (size, p50 speed, ΔAP
    with CI and its significance), failures, regressions, then where to open the results
    (:mod:`tasks.publish.links`: only links a browser opens)."""
    float32 = _baseline(report)
    model = report.get("model") or {}
    lines = [f"**quantbench {report['run_id']}**: {run_title(report)}", "",
             f"- head {model.get('head', 'odapi')}; spec {spec_text(model.get('spec'))}"]
    if float32 is not None:
        lines.append(f"- {_baseline_summary(float32)}")
    lines += [f"- {variant_summary(e, float32)}" for e in report["variants"] if e["variant"] != BASELINE]
    lines.append(f"- failures: {_failure_counts(report)}")
    lines.append(f"- regressions: {_regressions_line(report)}")
    lines += ["", links.markdown()]
    return "\n".join(lines) + "\n"


def _regressions_line(report: dict) -> str:
    """``2 vs <run>: int8 AP 0.909 → 0.402; …``, ``none vs <run>`` or ``no comparable earlier run``."""
    compared, regressions = report.get("compared_with"), report.get("regressions") or []
    if not compared:
        return "no comparable earlier run"
    if not regressions:
        return f"none vs {compared}"
    return f"{len(regressions)} vs {compared}: " + "; ".join(_regression_line(r) for r in regressions)


def change_text(metric: str, change) -> str:
    """A regression's change in its metric's unit, signed: AP/ΔAP 4 decimals, size MB, latency ms."""
    value = _finite(change)
    if value is None:
        return "n/a"
    if metric == "model_bytes":
        return f"{value / MB:+.2f} MB"
    if metric == "latency_p50_ms":
        return f"{value:+,.0f} ms" if abs(value) >= 100 else f"{value:+.3g} ms"
    return f"{value:+.4f}"


def _ci_text(ci) -> str | None:
    interval = _interval(ci)
    return None if interval is None else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]"


def _regression_line(regression: dict) -> str:
    """``int8 AP 0.909 → 0.402 (-0.5071 [-0.5370, -0.4786])``."""
    metric = str(regression.get("metric"))
    ci = _ci_text(regression.get("ci"))
    return (f"{regression.get('variant')} {metric} {metric_text(metric, regression.get('previous'))} → "
            f"{metric_text(metric, regression.get('current'))} ({change_text(metric, regression.get('change'))}"
            f"{f' {ci}' if ci else ''})")


# --- HTML ---------------------------------------------------------------------------------------


def _e(value) -> str:
    """Any report value as escaped HTML text: lists and dicts as compact JSON, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, ensure_ascii=False)
    return html.escape(str(value))


def _cell(value) -> str:
    """A results-table cell: 3 decimals for floats, right-aligned numbers, n/a for undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="n muted">n/a</td>'
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"<td>{_e(value)}</td>"
    return f'<td class="n">{value:.3f}</td>' if isinstance(value, float) else f'<td class="n">{value}</td>'


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], css: str = "") -> str:
    """A table from escaped header texts and rows of ready ``<td>`` cells; ``css``: its class."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _td(value) -> str:
    return f"<td>{_e(value)}</td>"


def _definitions(items: Iterable[tuple[str, object]]) -> str:
    """``<dl>`` of (label, value) pairs, values escaped."""
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"


def _results(report: dict) -> str:
    """The results table: the columns of :func:`tasks.publish.report.report_table`."""
    table = report_table(report).astype(object)
    table = table.where(table.notna(), None)
    rows = [[_cell(value) for value in row] for row in table.itertuples(index=False)]
    return _table([_e(c) for c in table.columns], rows, "nowrap") + f'<p class="muted">{_e(TABLE_NOTE)}</p>'


def _verdict_cell(delta, ci) -> str:
    """ΔAP with CI and its significance, coloured when significant."""
    verdict = significance(delta, ci)
    style = "loss" if verdict == "significant loss" else "gain" if verdict == "significant gain" else "muted"
    return f'<td class="n">{_e(delta_with_ci(delta, ci))}</td><td class="{style}">{_e(verdict)}</td>'


def _summary(report: dict) -> str:
    """Per variant vs float32: size, p50 speed, ΔAP [95% CI] and significance (bbox, mask)."""
    float32 = _baseline(report)
    masks = any("delta_mask_AP_vs_float32" in e for e in report["variants"])
    headers = ["variant", "size vs float32", "p50 vs float32", "ΔAP vs float32 [95% CI]", "bbox verdict"]
    headers += ["mask ΔAP [95% CI]", "mask verdict"] if masks else []
    rows = []
    for entry in report["variants"]:
        if entry["variant"] == BASELINE:
            rows.append([_td(BASELINE), f'<td class="muted" colspan="{len(headers) - 1}">the baseline</td>'])
            continue
        size = _ratio(_finite(entry.get("model_bytes")), _finite((float32 or {}).get("model_bytes")), "smaller", "larger")
        speed = _ratio(_p50(entry), _p50(float32 or {}), "faster", "slower")
        row = [_td(entry["variant"]), _td(size), _td(speed),
               _verdict_cell(entry.get("delta_AP_vs_float32"), entry.get("delta_AP_vs_float32_ci"))]
        if masks:
            row.append(_verdict_cell(entry.get("delta_mask_AP_vs_float32"), entry.get("delta_mask_AP_vs_float32_ci")))
        rows.append(row)
    return _table([_e(h) for h in headers], rows, "nowrap")


def _model_and_dataset(report: dict) -> str:
    model, dataset = report.get("model") or {}, report.get("dataset") or {}
    inputs = model.get("input") or {}
    return _definitions([
        ("model", model.get("source")), ("kind", model.get("kind")), ("sha256", model.get("digest")),
        ("input", f"{inputs.get('name', '?')} {inputs.get('dtype', '?')} {inputs.get('shape', '?')}"),
        ("head", model.get("head", "odapi")), ("spec", spec_text(model.get("spec"))),
        ("annotations", dataset.get("annotations")), ("images", f"{dataset.get('images', '?')} from {dataset.get('images_url', '?')}"),
        ("dataset digest", dataset.get("digest")), ("calibration", report.get("calibration")),
        ("shards", report.get("shards")), ("created", report.get("created")),
    ])


def spec_text(spec: dict | None) -> str:
    """The resolved model spec on one line: ``input: channels rgb, … · postprocess: iou 0.7, …``."""
    if not spec:
        return "TF OD API outputs (odapi), uint8 pixels stretched to the input"
    return " · ".join(f"{part}: " + ", ".join(f"{k} {v}" for k, v in (spec.get(part) or {}).items() if v not in (None, [], ()))
                      for part in ("input", "postprocess"))


def _size_text(count: int) -> str:
    """Bytes as ``3.07 MB`` (MB = 10^6 bytes), or ``164 B`` below 10 kB."""
    return f"{count} B" if count < 10_000 else f"{count / MB:.2f} MB"


def _bytes_by_dtype(weights: dict) -> str:
    """``float16 3.07 MB, float32 4 B``."""
    return ", ".join(f"{dtype} {_size_text(count)}" for dtype, count in (weights or {}).items()) or "n/a"


def _coverage(report: dict) -> str:
    """Weights by dtype, quantized share, op count, Flex ops, max |Δ| of each output vs float32."""
    rows = []
    for entry in report["variants"]:
        share = _finite(entry.get("quantized_weight_share"))
        diffs = ", ".join(f"{name} {value:.3g}" if _finite(value) is not None else f"{name} n/a"
                          for name, value in (entry.get("max_abs_diff_vs_float32") or {}).items())
        rows.append([_td(entry["variant"]), _td(_bytes_by_dtype(entry.get("weights_by_dtype"))),
                     f'<td class="n">{"n/a" if share is None else f"{share:.1%}"}</td>',
                     f'<td class="n">{sum((entry.get("op_counts") or {}).values()) or "n/a"}</td>',
                     _td(", ".join(entry.get("flex_ops") or []) or "none"), _td(diffs or "-")])
    headers = ["variant", "weights by dtype", "quantized weight share", "ops", "Flex ops", "max |Δ| vs float32 per output"]
    return _table([_e(h) for h in headers], rows) + f'<p class="muted">Outputs compared with float32 on {_e(report.get("calibration"))}.</p>'


def _failures(report: dict) -> str:
    """Failed images per variant (image id, file, reason), and detections outside the categories."""
    rows = [[_td(e["variant"]), _td(f.get("image_id")), _td(f.get("file_name")), _td(f.get("reason"))]
            for e in report["variants"] for f in e.get("failures") or []]
    text = _table(["variant", "image id", "file", "reason"], rows) if rows else "<p>No image failed.</p>"
    outside = [f"{e['variant']}: {count} detections of class {category}" for e in report["variants"]
               for category, count in (e.get("detections_outside_categories") or {}).items()]
    if outside:
        text += "<p>Detections of classes that are not categories of the dataset, left out: " + _e("; ".join(outside)) + "</p>"
    return text


def _regressions(report: dict) -> str:
    """The regressions vs the comparable predecessor, or why there are none."""
    compared, regressions = report.get("compared_with"), report.get("regressions") or []
    if not compared:
        return "<p>No comparable earlier run in the store (same dataset digest and evaluation settings).</p>"
    intro = f"<p>Compared with run <code>{_e(compared)}</code>: "
    if not regressions:
        return intro + "no regression.</p>"
    rows = []
    for r in regressions:
        metric = str(r.get("metric"))
        rows.append([_td(r.get("variant")), _td(metric), _td(metric_text(metric, r.get("previous"))),
                     _td(metric_text(metric, r.get("current"))), _td(change_text(metric, r.get("change"))),
                     _td(_ci_text(r.get("ci"))), _td(r.get("threshold"))])
    headers = ["variant", "metric", "previous", "current", "change", "95% CI", "threshold"]
    return intro + f'<span class="loss">{len(regressions)} regression(s)</span></p>' + _table(headers, rows)


def _host(report: dict) -> str:
    host = report.get("host") or {}
    versions = host.get("versions") or {}
    return _definitions([("cpu", host.get("cpu")), ("cores", f"{host.get('usable_cpus', '?')} usable of {host.get('cpu_count', '?')}"),
                         ("platform", host.get("platform")), ("python", host.get("python")),
                         *((package, version) for package, version in versions.items())])


def _settings(report: dict) -> str:
    return _definitions(sorted((report.get("settings") or {}).items()))


def _plot_figure(plots: dict[str, bytes], name: str, caption: str) -> str:
    """The plot ``name`` as an ``<img>`` with a data: URI (SVG preferred over PNG), or "" when absent."""
    for extension, mime in IMAGE_TYPES:
        if f"{name}.{extension}" in plots:
            data = base64.b64encode(plots[f"{name}.{extension}"]).decode()
            return (f'<figure id="plot-{_e(name)}"><img alt="{_e(name)}" src="data:{mime};base64,{data}">'
                    f"<figcaption>{_e(caption)}</figcaption></figure>")
    return ""


def _figures(plots: dict[str, bytes]) -> str:
    """Each plot but the diagnosis's, known plots first."""
    known = [name for name, _ in PLOTS]
    others = sorted({name.rsplit(".", 1)[0] for name in plots} - set(known) - {name for name, _ in DIAGNOSIS_PLOTS})
    captions = dict(PLOTS)
    return "".join(_plot_figure(plots, name, captions.get(name, name)) for name in known + others) or "<p>No plots.</p>"


def _recovered_results(report: dict, variant: str) -> str:
    """`` Benchmarked in this run: AP 0.283, ΔAP vs float32 … , 1.19 MB.`` when the variant is a row of the report."""
    entry = next((e for e in report["variants"] if e["variant"] == variant), None)
    if entry is None:
        return ""
    ap, size = _finite((entry.get("bbox") or {}).get("AP")), _finite(entry.get("model_bytes"))
    return (f" Benchmarked in this run: AP {'n/a' if ap is None or ap < 0 else f'{ap:.3f}'}, "
            f"{_delta_phrase('ΔAP vs float32', entry.get('delta_AP_vs_float32'), entry.get('delta_AP_vs_float32_ci'))}, "
            f"{'n/a' if size is None else f'{size / MB:.2f} MB'}.")


def _number_text(value) -> str:
    number = _finite(value)
    return "n/a" if number is None else f"{number:.3f}"


def _diagnosis(report: dict, plots: dict[str, bytes]) -> str:
    """The op diagnosis of one variant: its summary line, the numbers it rests on, the swept ops'
    table, the recovered variant (or why none was made) and the diagnosis plots."""
    diagnosis = report["diagnosis"]
    size = _finite(diagnosis.get("variant_bytes"))
    context = (f"Each op's output in {diagnosis['variant']} compared with float32 ({len(diagnosis.get('errors') or [])} ops); "
               f"the {len(diagnosis.get('ops') or [])} ops adding the most error each kept float alone and scored on the first "
               f"{diagnosis['images']} evaluation images (reference: {diagnosis['reference']}): float32 AP "
               f"{_number_text(diagnosis.get('float32_ap'))}, {diagnosis['variant']} AP {_number_text(diagnosis.get('variant_ap'))}"
               f"{'' if size is None else f' ({size / MB:.2f} MB)'}. AP recovered = AP with the op kept float − the variant's AP, "
               "with its paired bootstrap 95% CI over the images; recoveries of different ops do not add up.")
    rows = []
    for op in diagnosis.get("ops") or []:
        cells = op_cells(op)
        ci = op.get("ci")
        style = "gain" if ci and ci[0] > 0 else "n"
        rows.append([_td(cells[0]), _td(cells[1]), f"<td><code>{_e(cells[2])}</code></td>", _td(cells[3]),
                     *(f'<td class="n">{_e(cell)}</td>' for cell in cells[4:8]), f'<td class="n {style}">{_e(cells[8])}</td>',
                     f'<td class="n">{_e(cells[9])}</td>'])
    recovered = diagnosis.get("recovered_variant")
    line = recovered_text(diagnosis) + "." + (_recovered_results(report, recovered["variant"]) if recovered else "")
    cost = cost_text(diagnosis)
    figures = "".join(_plot_figure(plots, name, caption) for name, caption in DIAGNOSIS_PLOTS)
    return (f'<p id="diagnosis-summary"><strong>{_e(diagnosis_summary(diagnosis))}</strong></p><p class="muted">{_e(context)}</p>'
            + _table([_e(h) for h in DIAGNOSIS_COLUMNS], rows, "diagnosis") + f"<p>{_e(line)}</p>"
            + (f'<p class="muted">{_e(cost)}</p>' if cost else "") + figures)


def render_html(report: dict, plots: dict[str, bytes]) -> str:
    """The run's report as one self-contained HTML page (inline CSS, plots as data: URIs, no script)."""
    run_id = _e(report.get("run_id"))
    sections = [
        ("Summary vs float32", f"<p>{_e(run_title(report))}</p>" + _summary(report)),
        ("Results", _results(report)),
        *([("Diagnosis", _diagnosis(report, plots))] if report.get("diagnosis") else []),
        ("Regressions", _regressions(report)),
        ("Failures", _failures(report)),
        ("Plots", _figures(plots)),
        ("Quantization coverage", _coverage(report)),
        ("Model and dataset", _model_and_dataset(report)),
        ("Settings", _settings(report)),
        ("Host", _host(report)),
    ]
    body = "".join(f"<section><h2>{_e(title)}</h2>{content}</section>" for title, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>quantbench report {run_id}</title><style>{CSS}</style></head>"
            f"<body><h1>quantbench report <code>{run_id}</code></h1>{body}</body></html>\n")
