"""Where people open a run's results: the one place that decides a run's links (no Prefect here).

Used by the ``quantbench-summary`` artifact, the CLI's last lines and the regression event. A link
is only ever one a browser opens from a web page (the Prefect UI): never ``file://`` nor ``s3://``.
In order:

1. ``QUANTBENCH_RESULTS_URL`` set (the http(s) base URL where ``quantbench serve`` is reachable):
   the run's page ``{base}/runs/{run_id}`` and its downloads ``…/report.json``, ``…/report.csv``.
2. Else an S3 store: presigned https GET URLs (SigV4) of report.html (served as HTML, so a browser
   shows it), report.json and report.csv, valid ``QUANTBENCH_LINK_EXPIRY_S`` seconds (default and
   maximum 604800 = 7 days), with the time they expire stated in UTC. A presigned URL carries the
   access key id and a signature, never the secret key; anyone holding it can read that one object
   until it expires.
3. Else a local store: no link at all, the paths as plain text (they are on the machine that ran
   the flow).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tasks.store.errors import QuantbenchError
from tasks.store.object_store import S3Store, open_store

RESULTS_URL_ENV = "QUANTBENCH_RESULTS_URL"
EXPIRY_ENV = "QUANTBENCH_LINK_EXPIRY_S"
MAX_EXPIRY_S = 604800  # SigV4's longest presigned URL: 7 days
# (label, file in the run's folder, Content-Type a presigned link is answered with)
PRESIGNED = (("HTML report", "report.html", "text/html; charset=utf-8"),
             ("report.json", "report.json", "application/json"),
             ("report.csv", "report.csv", "text/csv; charset=utf-8"))


@dataclass(frozen=True)
class Link:
    """One thing to open: ``url`` (http(s)) when a browser can, else ``path`` shown as text."""

    label: str
    url: str | None = None
    path: str | None = None

    def markdown(self) -> str:
        return f"[{self.label}]({self.url})" if self.url else f"{self.label}: {code_span(self.path or '')}"


@dataclass(frozen=True)
class RunLinks:
    """A run's links: ``page`` (the first link's URL: the run's page or report.html; None for a
    local store), every link in order, and ``expiry`` (``links expire 2026-12-12 20:15 UTC``) when they do."""

    links: tuple[Link, ...]
    expiry: str | None = None

    @property
    def page(self) -> str | None:
        return self.links[0].url

    def markdown(self) -> str:
        """One markdown line: ``[run page](…) · [report.json](…) · …``, the expiry after them."""
        line = " · ".join(link.markdown() for link in self.links)
        if self.links[0].url is None:
            line = f"on the machine that ran the flow: {line}"
        return f"{line} ({self.expiry})" if self.expiry else line


def code_span(text: str) -> str:
    """``text`` as a markdown code span, fenced with more backticks than it holds in a row."""
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def results_url() -> str | None:
    """``QUANTBENCH_RESULTS_URL`` without its trailing ``/``, None when unset or empty; QuantbenchError
    (one line, never repeating the value) unless it is an http(s) URL with a host and no user info."""
    value = os.environ.get(RESULTS_URL_ENV, "").strip()
    if not value:
        return None
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid or "@" in parts.netloc or parts.query or parts.fragment:
        raise QuantbenchError(f"{RESULTS_URL_ENV} must be the http(s) URL where `quantbench serve` is reachable, with no user "
                              "name, password, query or fragment (e.g. http://127.0.0.1:8600): fix it, or unset it")
    return value.rstrip("/")


def link_expiry_s() -> int:
    """``QUANTBENCH_LINK_EXPIRY_S`` (seconds a presigned link works), default and maximum 604800."""
    value = os.environ.get(EXPIRY_ENV, "").strip() or str(MAX_EXPIRY_S)
    if not value.isdigit() or not 1 <= int(value) <= MAX_EXPIRY_S:
        raise QuantbenchError(f"{EXPIRY_ENV} must be a whole number of seconds from 1 to {MAX_EXPIRY_S} (7 days, "
                              f"the longest a presigned S3 link can work), not {value!r}")
    return int(value)


def check_link_settings() -> None:
    """Fail with one line, before a run starts, where the link settings are invalid."""
    results_url()
    link_expiry_s()


def run_links(report_url: str) -> RunLinks:
    """The links of the run whose report.json is at ``report_url`` (a store URL: ``file://…`` or
    ``s3://…/runs/<run id>/report.json``)."""
    folder = report_url.rsplit("/", 1)[0]
    base = results_url()
    if base:
        page = f"{base}/runs/{quote(unquote(folder.rsplit('/', 1)[1]), safe='')}"
        return RunLinks((Link("run page", page), Link("report.json", f"{page}/report.json"), Link("report.csv", f"{page}/report.csv")))
    store = open_store(folder)
    if isinstance(store, S3Store):
        return _presigned(store)
    return RunLinks((Link("HTML report", path=str(store.root / "report.html")), Link("report.json", path=str(store.root / "report.json")),
                     Link("plots", path=f"{store.root / 'plots'}/")))


def _presigned(store: S3Store) -> RunLinks:
    """Presigned links of the run folder's files, and when they expire (read from the first URL)."""
    expiry_s = link_expiry_s()
    links = tuple(Link(label, store.presigned_get(name, expiry_s, content_type)) for label, name, content_type in PRESIGNED)
    expires = presigned_expiry(links[0].url or "")
    sooner = ", or sooner: signed with temporary credentials, they end with them" if store.temporary_credentials() else ""
    return RunLinks(links, f"links expire {expires:%Y-%m-%d %H:%M} UTC{sooner}")


def presigned_expiry(url: str) -> datetime:
    """When a SigV4 presigned URL stops working: its ``X-Amz-Date`` plus ``X-Amz-Expires`` seconds (UTC)."""
    query = parse_qs(urlsplit(url).query)
    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return signed + timedelta(seconds=int(query["X-Amz-Expires"][0]))
