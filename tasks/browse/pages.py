"""The results site's pages as HTML text: the runs list, a run's page with the site's navigation,
the nightly view of a model, two runs compared, and the page that says what went wrong.

Every string from the store (run ids, model sources, file names, category names) is HTML-escaped
and every URL path segment quoted; pages load nothing from elsewhere and run no script (the
application's Content-Security-Policy forbids both). Units as in report.json: AP in [0, 1], sizes
in MB (10^6 bytes), latency in ms.
"""
from __future__ import annotations

import html
import math
from urllib.parse import quote, urlencode

import pandas as pd

from tasks.browse.charts import Point, Series, color_of, line_chart
from tasks.publish.history import MB
from tasks.publish.html_report import CSS, delta_with_ci
from tasks.publish.plots import model_name

SITE_CSS = """
nav.site { margin: 0 0 1em; padding: .4em .6em; background: #f4f4f4; border: 1px solid #ddd; font-size: 13px; }
nav.site a { margin-right: .8em; } .badge { padding: 1px 6px; border-radius: 8px; font-size: 12px; white-space: nowrap; }
.badge.bad { background: #fde2e2; color: #b00020; } .badge.ok { background: #e3f4e3; color: #1b7a1b; }
.badge.none { background: #eee; color: #555; } td.variants div { white-space: nowrap; }
form.filter { margin: .6em 0; } form.filter select { max-width: 28em; } svg.chart { margin: .3em .6em .6em 0; }
.charts { display: flex; flex-wrap: wrap; } .problem { color: #b00020; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _ap(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _mb(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value / MB:.2f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.4f}"


def layout(title: str, body: str, store_url: str) -> str:
    """A whole page: the site's navigation, a heading and ``body`` (already HTML)."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)} · quantbench</title>'
            f"<style>{CSS}{SITE_CSS}</style></head><body>"
            f'<nav class="site"><a href="/">all runs</a> <span class="muted">store <code>{_e(store_url)}</code></span></nav>'
            f"<h1>{_e(title)}</h1>{body}</body></html>\n")


def message_page(title: str, line: str, store_url: str) -> str:
    """A page that says one thing: not found, the store unreachable, …"""
    return layout(title, f'<p class="problem" id="message">{_e(line)}</p>', store_url)


# --- the runs list ------------------------------------------------------------------------------


def matches(summary: dict, model: str, dataset: str) -> bool:
    """Whether a run passes the filters: ``model`` is its model source or a prefix of its model
    digest; ``dataset`` a prefix of its dataset digest ("" passes everything)."""
    if not model and not dataset:
        return True
    if summary["status"] != "complete":
        return False
    return ((not model or summary["model"]["source"] == model or summary["model"]["digest"].startswith(model.lower()))
            and (not dataset or summary["dataset"]["digest"].startswith(dataset.lower())))


def _options(name: str, label: str, choices: dict[str, str], chosen: str) -> str:
    items = "".join(f'<option value="{_e(value)}"{" selected" if value == chosen else ""}>{_e(text)}</option>'
                    for value, text in sorted(choices.items(), key=lambda item: item[1]))
    return f'<label>{_e(label)} <select name="{name}"><option value="">any</option>{items}</select></label> '


def _filters(runs: list[dict], model: str, dataset: str) -> str:
    complete = [r for r in runs if r["status"] == "complete"]
    models = {r["model"]["source"]: r["model"]["name"] for r in complete}
    datasets = {r["dataset"]["digest"]: f"{r['dataset']['name']} ({r['dataset']['digest'][:12]})" for r in complete}
    return ('<form class="filter" method="get" action="/">' + _options("model", "model", models, model)
            + _options("dataset", "dataset", datasets, dataset) + '<button type="submit">filter</button> <a href="/">clear</a></form>')


def _variant_line(variant: dict) -> str:
    delta = "" if variant["variant"] == "float32" else (
        f' ΔAP <span class="{_delta_class(variant)}">{_e(delta_with_ci(variant["delta_AP_vs_float32"], variant["delta_AP_vs_float32_ci"]))}</span>')
    return f"<div>{_e(variant['variant'])} AP {_ap(variant['AP'])}{delta}</div>"


def _delta_class(variant: dict) -> str:
    ci = variant["delta_AP_vs_float32_ci"]
    return "loss" if ci and ci[1] < 0 else "gain" if ci and ci[0] > 0 else ""


def regressions_badge(summary: dict) -> str:
    count, previous = len(summary["regressions"]), summary["compared_with"]
    if not previous:
        return '<span class="badge none">no earlier run</span>'
    if not count:
        return f'<span class="badge ok" title="vs {_e(previous)}">none</span>'
    text = "; ".join(r["text"] for r in summary["regressions"])
    return f'<span class="badge bad regressions" title="{_e(text)}">{count} regression{"s" * (count != 1)}</span>'


def _run_row(summary: dict) -> str:
    run_id = summary["run_id"]
    if summary["status"] != "complete":
        return (f'<tr class="{summary["status"]}"><td><code>{_e(run_id)}</code></td><td colspan="6" class="problem">'
                f'{_e(summary["status"])}: {_e(summary["problem"])}</td></tr>')
    model, dataset = summary["model"], summary["dataset"]
    compare = (f'<br><a href="/compare?{_e(urlencode({"a": summary["compared_with"], "b": run_id}))}">vs previous</a>'
               if summary["compared_with"] else "")
    images = "" if dataset["images"] is None else f", {dataset['images']:.0f} images"
    return (f'<tr class="complete"><td><a class="run" href="/runs/{_q(run_id)}"><code>{_e(run_id)}</code></a></td>'
            f'<td>{_e(summary["created"].replace("T", " ").removesuffix("+00:00"))}</td>'
            f'<td>{_e(model["name"])}<br><a href="/models/{_q(model["digest"][:12])}" title="nightly view of this model">'
            f'<code>{_e(model["digest"][:12])}</code></a></td>'
            f'<td>{_e(dataset["name"])}{_e(images)}<br><code class="muted">{_e(dataset["digest"][:12])}</code></td>'
            f'<td class="variants">{"".join(_variant_line(v) for v in summary["variants"])}</td>'
            f"<td>{regressions_badge(summary)}{compare}</td><td class=\"n\">{summary['failed_images']:.0f}</td></tr>")


def runs_page(runs: list[dict], model: str, dataset: str, store_url: str) -> str:
    """``/``: every run, newest first, with the filter form."""
    shown = [r for r in runs if matches(r, model, dataset)]
    problems = {status: sum(r["status"] == status for r in runs) for status in ("incomplete", "unreadable")}
    counted = ", ".join(f"{n} {status}" for status, n in problems.items() if n)
    head = f'<p id="count">{len(shown)} of {len(runs)} runs shown, newest first{f" ({counted} in the store)" if counted else ""}.</p>'
    table = ('<div class="scroll"><table id="runs"><thead><tr><th>run</th><th>created (UTC)</th><th>model</th><th>dataset</th>'
             "<th>variants: AP, ΔAP vs float32 [95% CI]</th><th>regressions</th><th>failed images</th></tr></thead><tbody>"
             + "".join(_run_row(r) for r in shown) + "</tbody></table></div>")
    return layout("quantbench runs", _filters(runs, model, dataset) + head + table, store_url)


# --- a run's page -------------------------------------------------------------------------------


def with_navigation(page: str, summary: dict) -> str:
    """The rendered report page (tasks.publish.html_report) with the site's navigation and the run's
    downloads at the top of its body."""
    run_id = summary["run_id"]
    links = ['<a href="/">all runs</a>', f'<a id="nightly" href="/models/{_q(summary["model"]["digest"][:12])}">nightly view of this model</a>']
    if summary["compared_with"]:
        links.append(f'<a id="compare" href="/compare?{_e(urlencode({"a": summary["compared_with"], "b": run_id}))}">'
                     "compare with the previous comparable run</a>")
    downloads = " ".join(f'<a class="download" href="/runs/{_q(run_id)}/{quote(name)}" download>{_e(name)}</a>' for name in summary["files"])
    nav = (f'<nav class="site" style="margin:0 0 1em;padding:.4em .6em;background:#f4f4f4;border:1px solid #ddd;font-size:13px">'
           f'{" · ".join(links)}<br>downloads: {downloads}</nav>')
    return page.replace("<body>", f"<body>{nav}", 1)


# --- the nightly view ---------------------------------------------------------------------------

CHARTS = (  # (history column, chart title, value text, regression metric, zero line)
    ("AP", "bbox AP (COCO mAP@[.5:.95])", _ap, "AP", False),
    ("delta_AP_vs_float32", "ΔAP vs float32, bars: 95% CI", _signed, "delta_AP_vs_float32", True),
    ("latency_p50_ms", "invoke() latency p50 (ms)", _ms, "latency_p50_ms", False),
    ("model_bytes", "model size (MB)", _mb, "model_bytes", False),
)


def _finite(value) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def _chart(records: list[dict], column: str, title: str, text, metric: str, zero: bool, regressed: set, order: dict,
           labels: list[str]) -> str:
    """One metric per variant over the runs (``records``: history rows as dicts; ``order``: run id ->
    x position; ``labels``: per position)."""
    series: dict[str, Series] = {}
    for row in records:
        variant = str(row["variant"])
        if column == "delta_AP_vs_float32" and variant == "float32":
            continue
        line = series.setdefault(variant, Series(variant, color_of(len(series))))
        value = _finite(row[column])
        low, high = _finite(row["delta_AP_vs_float32_ci_low"]), _finite(row["delta_AP_vs_float32_ci_high"])
        interval = (low, high) if column == "delta_AP_vs_float32" and math.isfinite(low) and math.isfinite(high) else None
        line.points.append(Point(order[row["run_id"]], value, row["run_id"], f"{variant} · {row['run_id']} · {text(value)}", interval,
                                 (row["run_id"], variant, metric) in regressed))
    return line_chart(title, list(series.values()), labels, text, zero)


def _dataset_section(rows: pd.DataFrame, summaries: dict[str, dict]) -> str:
    runs = rows.drop_duplicates("run_id")[["run_id", "created", "model_digest"]].reset_index(drop=True)
    order = {run_id: i for i, run_id in enumerate(runs["run_id"])}
    labels = [created.strftime("%m-%d %H:%M") for created in runs["created"]]
    regressed = {(run_id, r["variant"], r["metric"]) for run_id in order for r in (summaries.get(run_id) or {}).get("regressions", [])}
    records = rows.to_dict("records")  # one pass: per-run frame filtering is quadratic, row access on frames slow
    charts = [_chart(records, column, title, text, metric, zero, regressed, order, labels) for column, title, text, metric, zero in CHARTS]
    table = _nightly_table(records, runs, summaries)
    return f'<div class="charts">{"".join(charts)}</div>{table}'


def _nightly_table(records: list[dict], runs: pd.DataFrame, summaries: dict[str, dict]) -> str:
    """The runs, newest first: each variant's AP, ΔAP [CI], p50 and size, the checkpoint, the regressions."""
    variants: dict[str, list[dict]] = {}
    for row in records:
        variants.setdefault(row["run_id"], []).append(row)
    body, previous_digest = [], None
    for run in runs.itertuples(index=False):
        cells = "".join(f"<div>{_e(v['variant'])} AP {_ap(_finite(v['AP']))} · ΔAP "
                        f"{_e(delta_with_ci(_finite(v['delta_AP_vs_float32']), [_finite(v['delta_AP_vs_float32_ci_low']), _finite(v['delta_AP_vs_float32_ci_high'])]))}"
                        f" · p50 {_ms(_finite(v['latency_p50_ms']))} ms · {_mb(_finite(v['model_bytes']))} MB</div>" for v in variants[run.run_id])
        summary = summaries.get(run.run_id)
        badge = regressions_badge(summary) if summary and summary["status"] == "complete" else ""
        changed = ' <span class="badge none">new checkpoint</span>' if previous_digest and run.model_digest != previous_digest else ""
        previous_digest = run.model_digest
        body.append(f'<tr><td><a href="/runs/{_q(run.run_id)}"><code>{_e(run.run_id)}</code></a></td>'
                    f'<td>{_e(run.created.strftime("%Y-%m-%d %H:%M"))}</td><td><code>{_e(str(run.model_digest)[:12])}</code>{changed}</td>'
                    f'<td class="variants">{cells}</td><td>{badge}</td></tr>')
    return ('<table class="nightly"><thead><tr><th>run</th><th>created (UTC)</th><th>model digest</th><th>variants</th><th>regressions</th>'
            "</tr></thead><tbody>" + "".join(reversed(body)) + "</tbody></table>")


def model_rows(history: pd.DataFrame, digest: str) -> tuple[list[str], pd.DataFrame]:
    """(model locations, their history rows): every location that ever held a model whose digest
    starts with ``digest``, and all of its runs (a nightly re-exports its checkpoint into one place)."""
    own = history[history["model_digest"].str.startswith(digest.lower(), na=False)]
    sources = sorted(set(own["model_source"].dropna()))
    return sources, history[history["model_source"].isin(sources)] if sources else own


def model_page(digest: str, history: pd.DataFrame, summaries: dict[str, dict], store_url: str, problems: list[str]) -> str | None:
    """``/models/<digest>``: every run of the model location(s) that ever held a model with this digest
    (prefix), per dataset, over time; None when no history row has that digest. ``problems``: the
    history objects that could not be read, one line each."""
    sources, rows = model_rows(history, digest)
    if rows.empty:
        return None
    sections = []
    for dataset, group in sorted(rows.groupby("dataset_digest", sort=False), key=lambda item: -item[1]["created"].max().timestamp()):
        count = group["run_id"].nunique()
        sections.append(f'<section class="dataset"><h2>dataset <code>{_e(str(dataset)[:12])}</code>: {count} run{"s" * (count != 1)}</h2>'
                        + _dataset_section(group, summaries) + "</section>")
    digests = rows["model_digest"].nunique()
    intro = (f"<p>Model location{'s' * (len(sources) != 1)} {', '.join(f'<code>{_e(s)}</code>' for s in sources)}: every benchmark run "
             f"of it in this store, oldest left; {digests} distinct checkpoint{'s' * (digests != 1)} (model digests). "
             "Regressions (against the previous comparable run, as each run found them) are ringed in red.</p>")
    left_out = "".join(f'<p class="problem">left out: {_e(problem)}</p>' for problem in problems)
    return layout(f"nightly view: {model_name(sources[0]) if sources else digest}", intro + left_out + "".join(sections), store_url)


# --- two runs compared --------------------------------------------------------------------------


def _entries(report: dict) -> dict[str, dict]:
    return {str(v["variant"]): v for v in report["variants"] if isinstance(v, dict) and v.get("variant")}


def comparison(a: dict, b: dict) -> dict:
    """Run ``b`` against run ``a``: per variant AP, ΔAP vs float32, size and p50 of both and the
    change (b - a); per category the AP change of each variant both runs have. JSON-ready."""
    va, vb = _entries(a), _entries(b)
    names = [name for name in vb if name in va] + [name for name in va if name not in vb] + [name for name in vb if name not in va]

    def number(entry: dict | None, *path: str) -> float | None:
        value = entry
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def change(x, y):
        return None if x is None or y is None else y - x

    variants = []
    for name in names:
        ea, eb = va.get(name), vb.get(name)
        variants.append({"variant": name, **{f"{field}_{side}": number(e, *path) for field, path in (
            ("AP", ("bbox", "AP")), ("delta_AP_vs_float32", ("delta_AP_vs_float32",)), ("model_bytes", ("model_bytes",)),
            ("latency_p50_ms", ("latency_ms", "p50"))) for side, e in (("a", ea), ("b", eb))},
            "AP_change": change(number(ea, "bbox", "AP"), number(eb, "bbox", "AP"))})
    common = [name for name in names if name in va and name in vb]
    categories = sorted({c for name in common for e in (va[name], vb[name]) for c in (e.get("per_category_AP") or {})})
    per_category = [{"category": c, **{name: change(number(va[name], "per_category_AP", c), number(vb[name], "per_category_AP", c))
                                       for name in common}} for c in categories]
    worst = {row["category"]: min((v for k, v in row.items() if k != "category" and v is not None), default=0.0) for row in per_category}
    per_category.sort(key=lambda row: worst[row["category"]])
    same = {"dataset": (a.get("dataset") or {}).get("digest") == (b.get("dataset") or {}).get("digest"),
            "settings": all((a.get("settings") or {}).get(k) == (b.get("settings") or {}).get(k) for k in ("limit", "min_score", "spec"))}
    return {"a": a.get("run_id"), "b": b.get("run_id"), "same": same, "variants": variants, "common_variants": common,
            "per_category_AP_change": per_category}


def compare_page(a: dict, b: dict, store_url: str) -> str:
    """``/compare?a=&b=``: the comparison as two tables."""
    result = comparison(a, b)
    warnings = "".join(f'<p class="problem">The runs differ in {what}: their APs are not measured on the same footing.</p>'
                       for what, same in (("dataset", result["same"]["dataset"]), ("evaluation settings", result["same"]["settings"]))
                       if not same)

    def run_line(side: str, report: dict) -> str:
        model = report.get("model") or {}
        return (f'<li>{side}: <a href="/runs/{_q(str(report.get("run_id")))}"><code>{_e(report.get("run_id"))}</code></a> '
                f'{_e(report.get("created"))}, {_e(model_name(str(model.get("source") or "?")))} <code>{_e(str(model.get("digest"))[:12])}</code></li>')

    head = "<th>variant</th><th>AP A</th><th>AP B</th><th>AP B − A</th><th>ΔAP vs fp32 A</th><th>ΔAP vs fp32 B</th>" \
           "<th>MB A</th><th>MB B</th><th>p50 ms A</th><th>p50 ms B</th>"
    rows = "".join(
        f'<tr><td>{_e(v["variant"])}</td><td class="n">{_ap(v["AP_a"])}</td><td class="n">{_ap(v["AP_b"])}</td>'
        f'<td class="n {"loss" if (v["AP_change"] or 0) < 0 else ""}">{_signed(v["AP_change"])}</td>'
        f'<td class="n">{_signed(v["delta_AP_vs_float32_a"])}</td><td class="n">{_signed(v["delta_AP_vs_float32_b"])}</td>'
        f'<td class="n">{_mb(v["model_bytes_a"])}</td><td class="n">{_mb(v["model_bytes_b"])}</td>'
        f'<td class="n">{_ms(v["latency_p50_ms_a"])}</td><td class="n">{_ms(v["latency_p50_ms_b"])}</td></tr>' for v in result["variants"])
    common = result["common_variants"]
    categories = "".join(f'<tr><td>{_e(row["category"])}</td>' + "".join(
        f'<td class="n {"loss" if (row[name] or 0) < 0 else ""}">{_signed(row[name])}</td>' for name in common) + "</tr>"
        for row in result["per_category_AP_change"])
    body = (f"<ul>{run_line('A', a)}{run_line('B', b)}</ul>{warnings}<h2>Per variant</h2>"
            f'<div class="scroll"><table id="variants"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
            "<h2>Per category: AP change, B − A (the most hurt first)</h2>"
            f'<div class="scroll"><table id="categories"><thead><tr><th>category</th>{"".join(f"<th>{_e(n)}</th>" for n in common)}</tr>'
            f"</thead><tbody>{categories}</tbody></table></div>")
    return layout("compare two runs", body, store_url)
