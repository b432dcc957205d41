"""Regression alerts end to end: a real Prefect server on 127.0.0.1 with its triggers and actions
services, a webhook receiver, the shipped automation installed by ``install_regression_alert``,
and real benchmark runs in processes of their own: a regressed run notifies, clean runs do not."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from demo import DEMO_MODEL_DIR
from tasks.nightly.alerts import AUTOMATION_FILE, BLOCK_ID_PLACEHOLDER, REGRESSION_EVENT, install_regression_alert
from tasks.store.errors import QuantbenchError
from tests.prefect_server import PREFECT, Cluster, wait_for
from tests.regressed import build_shifted_model

AUTOMATION_NAME = "quantbench-regression-alert"
NOTIFICATION_WAIT_S = 60  # the longest a notification may take to arrive
QUIET_S = 10  # how long nothing more must arrive


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 (a free port, its own thread) recording each POST's JSON body
    with its arrival time."""

    def __init__(self):
        self.received: list[tuple[float, dict]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/quantbench-alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
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

    def install(self) -> tuple[str, str]:
        return install(self.cluster, self.receiver)

    def automations(self) -> list[dict]:
        automations = httpx.post(f"{self.cluster.api}/automations/filter", json={}, timeout=10).json()
        return [a for a in automations if a["name"] == AUTOMATION_NAME]

    def events(self, name: str, resource_id: str) -> list[dict]:
        body = {"filter": {"event": {"name": [name]}, "resource": {"id": [resource_id]}}, "limit": 50}
        return httpx.post(f"{self.cluster.api}/events/filter", json=body, timeout=10).json()["events"]


def install(cluster: Cluster, receiver: WebhookReceiver) -> tuple[str, str]:
    """``install_regression_alert(receiver.url)`` against the cluster's server, from this process."""
    with temporary_settings({PREFECT_API_URL: cluster.api}):
        return install_regression_alert(receiver.url)


@pytest.fixture(scope="module")
def alerting(tmp_path_factory) -> Iterator[Alerting]:
    """A server and a webhook receiver, with ``install_regression_alert(receiver.url)`` run twice."""
    cluster = Cluster(tmp_path_factory.mktemp("alerts"))
    with WebhookReceiver() as receiver:
        try:
            cluster.start_server()
            first_install = install(cluster, receiver)
            yield Alerting(cluster, receiver, *install(cluster, receiver), first_install)
        finally:
            cluster.stop()


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
    assert block["data"]["url"] == alerting.receiver.url


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
