"""What people look at, per run: the plots (``runs/<id>/plots/``), one self-contained HTML page
(``runs/<id>/report.html``) and a short Prefect markdown artifact ``quantbench-summary``.

Rendered from the published report.json and the store's run history, after both are written.
"""
from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.store.errors import STORE_RETRIES
from tasks.publish.history import read_history
from tasks.publish.html_report import render_html, summary_markdown
from tasks.publish.links import run_links
from tasks.publish.plots import render_plots
from tasks.store.object_store import Store, open_store


def html_url(report_url: str) -> str:
    """Where a run's HTML page is, given its report.json URL (the same folder)."""
    return f"{report_url.rsplit('/', 1)[0]}/report.html"


def render_run_page(store: Store, report: dict) -> tuple[str, dict[str, bytes]]:
    """(HTML page, plots by file name) of a report, with the store's history for the trend plot."""
    plots = render_plots(report, read_history(store))
    return render_html(report, plots), plots


def publish_presentation(report: dict, report_url: str, store_url: str, run_prefix: str) -> str:
    """Write the plots and report.html next to report.json; return report.html's URL."""
    store = open_store(store_url)
    page, plots = render_run_page(store, report)
    for name, data in plots.items():
        store.write_bytes(f"{run_prefix}/plots/{name}", data)
    return store.write_bytes(f"{run_prefix}/report.html", page.encode())


@task(name="presentation", cache_policy=NO_CACHE, **STORE_RETRIES)
def presentation_task(report: dict, report_url: str, store_url: str, run_prefix: str) -> str:
    """Plots, report.html and the ``quantbench-summary`` markdown artifact; returns report.html's URL."""
    url = publish_presentation(report, report_url, store_url, run_prefix)
    create_markdown_artifact(
        markdown=summary_markdown(report, run_links(report_url)),
        key="quantbench-summary",
        description=f"quantbench run {report['run_id']}: what matters",
    )
    return url
