"""The Prefect automations quantbench ships (``deployments/automations/``) and their installers.

Regression alerts: a benchmark run that finds regressions emits one Prefect event, and the
automation shipped in ``deployments/automations/regression-alert.yaml`` turns that event into a
notification through a webhook block.

- :func:`emit_regression_event` (called by the flow): the event ``quantbench.regression.detected``
  about the resource ``quantbench.run.<run id>``, with the model as a related resource and the
  regressions in its payload.
- :func:`install_regression_alert` (``quantbench alerts install``): saves the webhook block and
  creates the automation against the configured Prefect API (``PREFECT_API_URL``). The webhook URL
  (whose path, query or user info often holds a token) is kept only in the block's ``secrets``,
  which the API shows as ``********`` unless asked for secrets; messages show its origin alone.

Dead workers: ``deployments/automations/crash-silent-shards.yaml`` marks a shard flow run Crashed
when its heartbeats stop, so the benchmark resubmits it in minutes (:func:`install_crash_detection`,
``quantbench crash-detection install``).
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import yaml
from prefect.automations import AutomationCore
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL

from tasks.publish.links import run_links
from tasks.store.errors import QuantbenchError

REGRESSION_EVENT = "quantbench.regression.detected"
AUTOMATIONS = Path(__file__).resolve().parents[2] / "deployments" / "automations"
AUTOMATION_FILE = AUTOMATIONS / "regression-alert.yaml"
CRASH_DETECTION_FILE = AUTOMATIONS / "crash-silent-shards.yaml"
BLOCK_ID_PLACEHOLDER = "${QUANTBENCH_ALERT_BLOCK_ID}"
"""The shipped YAML's ``block_document_id``: the installer puts the webhook block's id there (by
hand: ``QUANTBENCH_ALERT_BLOCK_ID=<id> envsubst < regression-alert.yaml``)."""
WEBHOOK_SECRET = "webhook_url"
"""The key of the webhook URL in the block's ``secrets``; the block's ``url`` is the template
``{{webhook_url}}``, filled from the secrets only when a notification is sent."""


def regression_event(report: dict, report_url: str) -> dict:
    """The keyword arguments of ``emit_event`` for a report with regressions. Its payload's ``page`` is the
    link a browser opens (:func:`tasks.publish.links.run_links`; None for a local store), ``links_expire``
    when that link stops working (None: it does not)."""
    run_id, model, regressions = report["run_id"], report["model"], report["regressions"]
    links = run_links(report_url)
    return {
        "event": REGRESSION_EVENT,
        "resource": {"prefect.resource.id": f"quantbench.run.{run_id}", "prefect.resource.name": run_id},
        "related": [{
            "prefect.resource.id": f"quantbench.model.{model['digest'][:16]}",
            "prefect.resource.role": "model",
            "prefect.resource.name": model["source"],
        }],
        "payload": {
            "run_id": run_id,
            "model": model["source"],
            "model_digest": model["digest"],
            "report": report_url,
            "page": links.page,
            "links_expire": links.expiry,
            "compared_with": report["compared_with"],
            "variants": sorted({r["variant"] for r in regressions}),
            "metrics": sorted({r["metric"] for r in regressions}),
            "regressions": regressions,
        },
    }


def emit_regression_event(report: dict, report_url: str) -> None:
    """Emit ``quantbench.regression.detected`` for the report's regressions; nothing without any.

    Sent to the configured Prefect API by Prefect's events worker (in the background; flushed
    when the process exits). Inside a flow run, Prefect adds the flow run, flow and deployment as
    related resources."""
    if not report["regressions"]:
        return
    emit_event(**regression_event(report, report_url))


def install_regression_alert(webhook_url: str, block_name: str = "quantbench-regressions") -> tuple[str, str]:
    """Against the configured Prefect API: save (or overwrite) the webhook notification block
    ``block_name`` that POSTs ``{"subject": …, "body": …}`` as JSON to ``webhook_url``, and create
    the shipped automation pointing at it, replacing any automation of the same name (so running
    this again leaves one, with a new id). Returns (block document id, automation id)."""
    check_webhook_url(webhook_url)
    require_api()
    block_id = save_webhook_block(webhook_url, block_name)
    automation_id = replace_automation(automation_definition(block_id))
    return str(block_id), str(automation_id)


def install_crash_detection(path: Path = CRASH_DETECTION_FILE) -> str:
    """Against the configured Prefect API: create the automation that marks silent shard flow runs
    Crashed, replacing any of the same name. Returns its id."""
    require_api()
    return str(replace_automation(read_definition(path)))


def require_api() -> None:
    """Refuse to run without ``PREFECT_API_URL``: Prefect would install into a throw-away
    ephemeral server."""
    if not PREFECT_API_URL.value():
        raise QuantbenchError("no Prefect API configured: set PREFECT_API_URL to the server the benchmark flows report to")


def read_definition(path: Path) -> dict:
    if not path.is_file():
        raise QuantbenchError(f"the automation definition {path} is missing: run this from a quantbench checkout")
    return yaml.safe_load(path.read_text())


def check_webhook_url(webhook_url: str) -> None:
    """Refuse anything but an ``http(s)://`` URL with a host; the message does not repeat the URL."""
    parts = urlsplit(webhook_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise QuantbenchError("the webhook URL must start with http:// or https:// and name a host")


def webhook_origin(webhook_url: str) -> str:
    """``scheme://host[:port]`` of the webhook URL: all of it a message may show (webhook tokens sit
    in the user info, the query or the path, as Slack's and Discord's do)."""
    parts = urlsplit(webhook_url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def save_webhook_block(webhook_url: str, block_name: str) -> UUID:
    """Save a Custom Webhook notification block (the notification block that POSTs to any URL)
    whose URL is a secret: ``url`` is ``{{webhook_url}}`` and the URL itself is in ``secrets``."""
    block = CustomWebhookNotificationBlock(
        name=block_name, url="{{" + WEBHOOK_SECRET + "}}", secrets={WEBHOOK_SECRET: webhook_url},
        method="POST", json_data={"subject": "{{subject}}", "body": "{{body}}"},
    )
    return block.save(block_name, overwrite=True)


def automation_definition(block_id: UUID, path: Path = AUTOMATION_FILE) -> dict:
    """The shipped automation with the webhook block's id in place of the placeholder."""
    definition = read_definition(path)
    for action in definition["actions"]:
        if action.get("block_document_id") == BLOCK_ID_PLACEHOLDER:
            action["block_document_id"] = str(block_id)
    return definition


def replace_automation(definition: dict) -> UUID:
    """Delete every automation of the definition's name, then create it; returns its id."""
    automation = AutomationCore.model_validate(definition)
    with get_client(sync_client=True) as client:
        for existing in client.read_automations_by_name(automation.name):
            client.delete_automation(existing.id)
        return client.create_automation(automation)
