"""Regression alerts end to end: a real Prefect server on 127.0.0.1 with its triggers and actions
services, a webhook receiver whose URL holds tokens (user info, path, query), the shipped
automation installed by ``quantbench alerts install`` (URL from the environment, then from stdin),
and real benchmark runs in processes of their own: a regressed run notifies, clean runs do not; the
API shows the block without the URL, messages show its origin alone."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from demo import DEMO_MODEL_DIR
from flows.cli import main
from tasks.nightly.alerts import AUTOMATION_FILE, BLOCK_ID_PLACEHOLDER, REGRESSION_EVENT, install_regression_alert
from tasks.store.errors import QuantbenchError
from tests.prefect_server import PREFECT, REPO, Cluster, wait_for
from tests.regressed import build_shifted_model

AUTOMATION_NAME = "quantbench-regression-alert"
NOTIFICATION_WAIT_S = 60  # the longest a notification may take to arrive
QUIET_S = 10  # how long nothing more must arrive
TOKENS = ("userinfo-token-1f3a", "path-token-9c2e", "query-token-7b5d")
HOOK_URL = f"https://alerts:{TOKENS[0]}@hooks.example/{TOKENS[1]}?token={TOKENS[2]}"


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 (a free port, its own thread) recording each POST's JSON body
    with its arrival time, and each POST's path (query included) and Authorization header. Its URL
    carries a token in each of the user info, the path and the query."""

    def __init__(self):
        self.received: list[tuple[float, dict]] = []
        self.requests: list[tuple[str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.path = f"/quantbench-alerts/{TOKENS[1]}?token={TOKENS[2]}"
        self.url = f"http://alerts:{TOKENS[0]}@{self.origin.removeprefix('http://')}{self.path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        received, requests = self.received, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                requests.append((self.path, self.headers.get("Authorization")))
                received.append((time.time(), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        return Handler

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[dict]:
        return [body for _, body in self.received]


@dataclass
class Alerting:
    """A Prefect server with the regression alert installed, notifying ``receiver``."""

    cluster: Cluster
    receiver: WebhookReceiver
    block_id: str
    automation_id: str
    first_install: tuple[str, str]
    lines: list[str]  # what each install printed (stdout and stderr)

    def install(self) -> tuple[str, str]:
        line, ids = install(self.cluster, self.receiver, stdin=True)
        self.lines.append(line)
        return ids

    def automations(self) -> list[dict]:
        automations = httpx.post(f"{self.cluster.api}/automations/filter", json={}, timeout=10).json()
        return [a for a in automations if a["name"] == AUTOMATION_NAME]

    def events(self, name: str, resource_id: str) -> list[dict]:
        body = {"filter": {"event": {"name": [name]}, "resource": {"id": [resource_id]}}, "limit": 50}
        return httpx.post(f"{self.cluster.api}/events/filter", json=body, timeout=10).json()["events"]


def install(cluster: Cluster, receiver: WebhookReceiver, stdin: bool) -> tuple[str, tuple[str, str]]:
    """``quantbench alerts install`` against the cluster's server, in a process of its own, given
    ``receiver.url`` on stdin (``--webhook-url -``) or in ``$QUANTBENCH_WEBHOOK_URL``. Returns what
    it printed and the (block document id, automation id) it names."""
    env = {**cluster.env, "PYTHONPATH": str(REPO)}
    env.pop("QUANTBENCH_WEBHOOK_URL", None)
    command = [sys.executable, "-m", "flows.cli", "alerts", "install"]
    if stdin:
        command += ["--webhook-url", "-"]
    else:
        env["QUANTBENCH_WEBHOOK_URL"] = receiver.url
    result = subprocess.run(command, env=env, cwd=REPO, input=receiver.url + "\n" if stdin else "",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    named = re.search(r"automation (\S+) notifies webhook block (\S+),", result.stdout)
    assert named, result.stdout
    return result.stdout + result.stderr, (named[2], named[1])


@pytest.fixture(scope="module")
def alerting(tmp_path_factory) -> Iterator[Alerting]:
    """A server and a webhook receiver, with ``quantbench alerts install`` run twice: the URL from
    the environment, then from stdin."""
    cluster = Cluster(tmp_path_factory.mktemp("alerts"))
    with WebhookReceiver() as receiver:
        try:
            cluster.start_server()
            first_line, first_install = install(cluster, receiver, stdin=False)
            second_line, second_install = install(cluster, receiver, stdin=True)
            yield Alerting(cluster, receiver, *second_install, first_install, [first_line, second_line])
        finally:
            cluster.stop()


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_a_webhook_url_in_the_arguments_is_refused_without_repeating_it(capsys):
    status, out, err = run_cli(["alerts", "install", "--webhook-url", HOOK_URL], capsys)
    assert status == 2 and out == ""
    assert err == ("error: --webhook-url takes only '-' (read the URL from stdin), not the URL: the arguments are visible "
                   "in ps and the shell history; set QUANTBENCH_WEBHOOK_URL, or run "
                   "'quantbench alerts install --webhook-url - < url.txt'\n")


@pytest.mark.parametrize("url, message", [
    ("", "no webhook URL: set QUANTBENCH_WEBHOOK_URL, or pass --webhook-url - with the URL on stdin"),
    ("ftp" + HOOK_URL.removeprefix("https"), "the webhook URL must start with http:// or https:// and name a host"),
])
def test_a_missing_or_unusable_webhook_url_is_one_error_line_without_the_url(url, message, capsys, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_WEBHOOK_URL", url)
    status, out, err = run_cli(["alerts", "install"], capsys)
    assert status == 2 and out == "" and err == f"error: {message}\n"


def test_an_empty_stdin_is_one_error_line(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    status, out, err = run_cli(["alerts", "install", "--webhook-url", "-"], capsys)
    assert status == 2 and err == "error: --webhook-url -: stdin's first line holds no URL\n"


def test_installing_without_a_configured_api_is_refused():
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(QuantbenchError, match="PREFECT_API_URL"):
        install_regression_alert("http://127.0.0.1:9/never-called")


def test_installing_twice_leaves_one_automation_on_one_webhook_block(alerting):
    assert alerting.first_install[0] == alerting.block_id and alerting.first_install[1] != alerting.automation_id
    [automation] = alerting.automations()
    assert automation["id"] == alerting.automation_id and automation["enabled"]
    trigger = automation["trigger"]
    assert trigger["expect"] == [REGRESSION_EVENT] and trigger["posture"] == "Reactive"
    assert trigger["match"] == {"prefect.resource.id": "quantbench.run.*"}
    [action] = automation["actions"]
    assert action["type"] == "send-notification" and action["block_document_id"] == alerting.block_id
    block = alerting.cluster.get(f"/block_documents/{alerting.block_id}")
    assert block["name"] == "quantbench-regressions" and block["data"]["method"] == "POST"


def test_the_api_shows_the_block_without_the_webhook_url(alerting):
    """What the UI and any API reader get (no ``include_secrets``): the URL is a template, its value
    ``********``; only a reader asking for secrets gets the URL."""
    path = f"/block_documents/{alerting.block_id}"
    shown = [httpx.get(f"{alerting.cluster.api}{path}", timeout=10).text,
             httpx.post(f"{alerting.cluster.api}/block_documents/filter", json={}, timeout=10).text]
    for text in shown:
        assert [token for token in TOKENS if token in text] == []
    data = alerting.cluster.get(path)["data"]
    assert data["url"] == "{{webhook_url}}" and data["secrets"] == {"webhook_url": "********"}
    with_secrets = httpx.get(f"{alerting.cluster.api}{path}", params={"include_secrets": "true"}, timeout=10).json()
    assert with_secrets["data"]["secrets"] == {"webhook_url": alerting.receiver.url}


def test_the_install_line_shows_the_webhook_origin_only(alerting):
    """Each install's whole output is its one line, naming the origin and no token."""
    for line in alerting.lines:
        automation_id = line.split()[4]
        assert line == (f"regression alert installed: automation {automation_id} notifies webhook block {alerting.block_id}, "
                        f"which POSTs to {alerting.receiver.origin} (the full URL is kept as a secret of the block)\n")


def test_the_shipped_yaml_is_accepted_by_prefect_automation_create(alerting, tmp_path):
    filled = tmp_path / "regression-alert.yaml"
    filled.write_text(AUTOMATION_FILE.read_text().replace(BLOCK_ID_PLACEHOLDER, alerting.block_id))
    alerting.cluster.run(PREFECT, "automation", "create", "--from-file", str(filled))
    assert len(alerting.automations()) == 2
    block_id, alerting.automation_id = alerting.install()  # replaces both
    assert block_id == alerting.block_id and [a["id"] for a in alerting.automations()] == [alerting.automation_id]


def test_a_regressed_run_notifies_and_clean_runs_do_not(alerting, tmp_path_factory):
    """Real benchmark runs against the server, in processes of their own, into one store: the demo
    model twice (the first has nothing to compare with, the second no regression), then a
    regressed checkpoint. Exactly one notification arrives, for the regressed run."""
    root = tmp_path_factory.mktemp("alert-runs")
    shifted = build_shifted_model(DEMO_MODEL_DIR, root / "shifted", shift=0.02)
    config = {"limit": 40, "latency_images": 5, "variants": ["float32", "int8"], "store": str(root / "store")}
    receiver, before = alerting.receiver, len(alerting.receiver.received)
    clean = [alerting.cluster.benchmark(config), alerting.cluster.benchmark(config)]
    regressed = alerting.cluster.benchmark({**config, "model": str(shifted)})
    assert clean[1]["compared_with"] == clean[0]["run_id"] and clean[1]["regressions"] == []
    assert regressed["compared_with"] == clean[1]["run_id"] and regressed["regressions"]
    wait_for(lambda: len(receiver.received) > before, NOTIFICATION_WAIT_S, "the regression notification")
    time.sleep(QUIET_S)
    [notification] = receiver.bodies()[before:]
    [(path, authorization)] = receiver.requests[before:]  # the URL from the block's secrets, tokens and all
    assert path == receiver.path and authorization == "Basic " + base64.b64encode(f"alerts:{TOKENS[0]}".encode()).decode()
    run_id = regressed["run_id"]
    assert run_id in notification["subject"] and f"{len(regressed['regressions'])} regression(s)" in notification["subject"]
    assert "float32 AP: " in notification["body"] and str(shifted) in notification["body"]
    assert f"{run_id}/report.json" in notification["body"]
    [event] = alerting.events(REGRESSION_EVENT, f"quantbench.run.{run_id}")
    assert "AP" in event["payload"]["metrics"] and event["payload"]["variants"] == ["float32", "int8"]
    roles = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event["related"]}
    assert roles["model"] == f"quantbench.model.{regressed['model']['digest'][:16]}" and roles["flow-run"].startswith("prefect.flow-run.")
    for report in clean:
        assert alerting.events(REGRESSION_EVENT, f"quantbench.run.{report['run_id']}") == []
