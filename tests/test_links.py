"""A run's links (tasks.publish.links) and where they show: the ``quantbench-summary`` markdown, the
CLI's last lines and the regression event. Only links a browser opens from a web page: the serve
pages under QUANTBENCH_RESULTS_URL, presigned https links of an S3 store (fetched here from a real S3
server, without credentials), or, for a local store, the paths as text."""
from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from flows.benchmark import BenchmarkConfig, check_settings
from flows.cli import _print_published
from tasks.nightly.alerts import regression_event
from tasks.publish.html_report import summary_markdown
from tasks.publish.links import EXPIRY_ENV, RESULTS_URL_ENV, code_span, presigned_expiry, run_links
from tasks.store.errors import QuantbenchError
from tasks.store.object_store import LocalStore, open_store
from tests.test_plots import RUN_ID, make_report

PAGE = "<!doctype html><title>run</title><p>ΔAP −0.0012 — a page, not a download</p>".encode()


@pytest.fixture(autouse=True)
def no_link_settings(monkeypatch):
    """Each test starts without the link settings (the developer's shell may have them)."""
    monkeypatch.delenv(RESULTS_URL_ENV, raising=False)
    monkeypatch.delenv(EXPIRY_ENV, raising=False)


def _publish(store, report: dict) -> str:
    """report.html, report.csv and report.json of ``report`` in the store; report.json's URL."""
    folder = f"runs/{report['run_id']}"
    store.write_bytes(f"{folder}/report.html", PAGE)
    store.write_bytes(f"{folder}/report.csv", b"variant,AP\nint8,0.412\n")
    return store.write_json(f"{folder}/report.json", report, indent=2)


@pytest.fixture
def s3_run(s3_env):
    """A run published in the real S3 server: (report.json's s3:// URL, the report, the server)."""
    report = make_report()
    return _publish(open_store(f"s3://{s3_env.bucket}/links-test"), report), report, s3_env


def _cli_lines(report_url: str) -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        _print_published(report_url)
    return stdout.getvalue().splitlines()


def test_with_a_results_url_every_link_is_a_serve_page(monkeypatch, tmp_path):
    monkeypatch.setenv(RESULTS_URL_ENV, "https://results.example:8443/quantbench/")
    links = run_links("s3://bucket/prefix/runs/a b#1/report.json")
    page = "https://results.example:8443/quantbench/runs/a%20b%231"
    assert links.page == page and links.expiry is None
    assert [(link.label, link.url) for link in links.links] == [
        ("run page", page), ("report.json", f"{page}/report.json"), ("report.csv", f"{page}/report.csv")]


def test_the_cli_prints_the_page_first_and_the_store_report_last(monkeypatch, tmp_path):
    url = _publish(LocalStore(tmp_path / "store"), make_report())
    monkeypatch.setenv(RESULTS_URL_ENV, "http://127.0.0.1:8600")
    lines = _cli_lines(url)
    page = lines.index(f"page: http://127.0.0.1:8600/runs/{RUN_ID}")
    assert lines[page:] == [f"page: http://127.0.0.1:8600/runs/{RUN_ID}", f"html: {url.replace('report.json', 'report.html')}",
                            f"report: {url}"]
    assert lines[page - 1].startswith("|")  # the table ends right above: the page is the first result line


def test_a_local_store_shows_paths_never_a_file_link(tmp_path):
    store = LocalStore(tmp_path / "results store")  # a space: percent-encoded in the URL, not in the path shown
    report = make_report()
    url = _publish(store, report)
    links = run_links(url)
    folder = store.root / "runs" / RUN_ID
    assert links.page is None and links.expiry is None and all(link.url is None for link in links.links)
    assert [link.path for link in links.links] == [str(folder / "report.html"), str(folder / "report.json"), f"{folder / 'plots'}/"]
    text = summary_markdown(report, links)
    assert f"HTML report: `{folder / 'report.html'}`" in text and "](file:" not in text and "file://" not in text
    lines = _cli_lines(url)  # the CLI as before: no page line, html then report last
    assert not any(line.startswith("page: ") for line in lines) and lines[-2:] == [f"html: {url[:-len('json')]}html", f"report: {url}"]


def test_a_path_with_backticks_stays_one_code_span():
    assert code_span("/a/b") == "`/a/b`"
    assert code_span("/a`b``c") == "```/a`b``c```"
    assert code_span("`x") == "`` `x ``"


def test_presigned_s3_links_open_in_a_browser_without_credentials(s3_run, monkeypatch):
    url, report, server = s3_run
    monkeypatch.setenv(EXPIRY_ENV, "3600")
    before = datetime.now(timezone.utc)
    links = run_links(url)
    assert [link.label for link in links.links] == ["HTML report", "report.json", "report.csv"]
    with httpx.Client(trust_env=False) as client:  # no AWS credentials: the URL alone
        page = client.get(links.page)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and page.content == PAGE
        data = client.get(links.links[1].url)
        assert data.status_code == 200 and data.headers["content-type"].startswith("application/json") and data.json() == report
        assert client.get(links.links[2].url).content == b"variant,AP\nint8,0.412\n"
        # The signature is what opens it: the same object without one is refused.
        assert client.get(links.page.split("?")[0]).status_code == 403
    for link in links.links:
        assert link.url.startswith(server.endpoint_url + "/") and "s3://" not in link.url
        assert server.secret_key not in unquote(link.url) and server.access_key in unquote(link.url)
    # The stated expiry is the setting's, from the time the links were signed (to the minute, never later than they end).
    query = parse_qs(urlsplit(links.page).query)
    assert query["X-Amz-Expires"] == ["3600"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    # S3 answers with the type the link asks for (the object itself is stored as binary/octet-stream, which AWS would download).
    assert query["response-content-type"] == ["text/html; charset=utf-8"]
    ends = presigned_expiry(links.page)
    assert before + timedelta(seconds=3600) - timedelta(seconds=1) <= ends <= datetime.now(timezone.utc) + timedelta(seconds=3600)
    assert links.expiry == f"links expire {ends:%Y-%m-%d %H:%M} UTC"
    text = summary_markdown(report, links)
    assert f"[HTML report]({links.page})" in text and text.rstrip().endswith(f"({links.expiry})")
    assert "](s3:" not in text and "](file:" not in text


def test_presigned_links_last_7_days_by_default_and_the_cli_prints_them(s3_run):
    url, _, _ = s3_run
    lines = _cli_lines(url)
    [page] = [line.removeprefix("page: ") for line in lines if line.startswith("page: ")]
    assert parse_qs(urlsplit(page).query)["X-Amz-Expires"] == ["604800"]
    ends = presigned_expiry(page)
    assert lines[-4:] == [f"page: {page}", f"links expire {ends:%Y-%m-%d %H:%M} UTC", f"html: {url[:-len('json')]}html", f"report: {url}"]
    assert timedelta(days=7) - timedelta(minutes=1) <= ends - datetime.now(timezone.utc) <= timedelta(days=7)


@pytest.mark.parametrize("value", ["ftp://results.example", "127.0.0.1:8600", "http://viewer:hunter2@results.example",
                                   "http://results.example:port", "http://results.example/?token=hunter2", "http://"])
def test_an_invalid_results_url_is_one_line_naming_the_variable(value, monkeypatch, tmp_path):
    monkeypatch.setenv(RESULTS_URL_ENV, value)
    with pytest.raises(QuantbenchError) as raised:
        run_links(LocalStore(tmp_path).url_for("runs/r/report.json"))
    message = str(raised.value)
    assert "\n" not in message and RESULTS_URL_ENV in message and "quantbench serve" in message and "hunter2" not in message
    # A run refuses it up front, with the other settings, before any work.
    config = BenchmarkConfig(store=str(tmp_path / "store"))
    with pytest.raises(QuantbenchError, match=RESULTS_URL_ENV):
        check_settings(config)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("value", ["0", "604801", "7d", "-1", "1.5"])
def test_an_invalid_link_expiry_is_one_line(value, monkeypatch, tmp_path):
    monkeypatch.setenv(EXPIRY_ENV, value)
    with pytest.raises(QuantbenchError, match=f"^{EXPIRY_ENV} must be a whole number of seconds from 1 to 604800") as raised:
        check_settings(BenchmarkConfig(store=str(tmp_path / "store")))
    assert "\n" not in str(raised.value)


def test_the_regression_event_carries_the_page(monkeypatch, tmp_path):
    report = make_report()
    url = LocalStore(tmp_path).url_for(f"runs/{RUN_ID}/report.json")
    local = regression_event(report, url)["payload"]
    assert local["report"] == url and local["page"] is None and local["links_expire"] is None
    monkeypatch.setenv(RESULTS_URL_ENV, "http://results.example")
    payload = regression_event(report, url)["payload"]
    assert payload["page"] == f"http://results.example/runs/{RUN_ID}" and payload["links_expire"] is None
    assert {**payload, "page": None} == local and set(payload) == {  # the existing fields kept
        "run_id", "model", "model_digest", "report", "compared_with", "variants", "metrics", "regressions", "page", "links_expire"}
    json.dumps(payload)  # an event payload is JSON


def test_the_presigned_page_in_the_regression_event(s3_run):
    url, report, server = s3_run
    payload = regression_event(report, url)["payload"]
    assert payload["report"] == url and payload["page"].startswith(server.endpoint_url) and "X-Amz-Signature=" in payload["page"]
    assert payload["links_expire"] == f"links expire {presigned_expiry(payload['page']):%Y-%m-%d %H:%M} UTC"
    assert server.secret_key not in json.dumps(payload)

