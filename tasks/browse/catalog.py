"""What a store holds, as the results site shows it, read once and kept while unchanged.

Every request rests on a listing of the store: :meth:`~tasks.store.object_store.Store.versions`
gives each object's version (local: mtime and size; S3: ETag and size) without reading it, and
:meth:`~tasks.store.object_store.Store.folders` the run folders. Every object of 1,000 runs is
~21,000 keys (22 pages, ~1.7 s on S3), so a request lists only the run folders and the history
objects (two calls) and lists every object again only when those changed (:meth:`Catalog._run_listing`).
A run's report.json is read again only when its
version changed, a history object likewise; so the first request over a store of 1,000 runs reads
1,000 reports, and the next ones read nothing but the listing. A rendered run page is kept per
(report version, history versions) — the page's trend plot draws the store's history.

A run is ``complete`` (report.json readable and a quantbench report), ``incomplete`` (no
report.json: running, or failed) or ``unreadable`` (report.json present but broken: shown as such,
with its one-line reason, never an error page). Run ids and file names that come from a URL are
checked against :data:`RUN_ID` and the run's listed objects before any key is built from them.
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from tasks.publish.history import HISTORY, history_frame, read_history_object
from tasks.publish.html_report import render_html
from tasks.publish.plots import model_name, regression_text, render_plots
from tasks.publish.results import INCOMPLETE, RUNS, parse_report
from tasks.store.errors import QuantbenchError, TransientError
from tasks.store.object_store import Store

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # what run_identity() makes, and older ids
DOWNLOADS = re.compile(r"report\.(json|csv|md)|detections/[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\.json")
READERS = 8  # report.json objects read at once on a first load
KEPT_PAGES = 16  # rendered run pages kept (each ~0.3-1 MB with its plots)
KEPT_REPORTS = 64  # parsed report.json dicts kept for pages, comparisons and the API
LISTING_S = 1.0  # a listing younger than this is used as it is: the pieces of one request list once
MAX_STALE_S = 300.0  # the full listing of the runs, unchanged in its marker, is redone in the background after this


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _interval(value) -> list[float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) is not None for v in value):
        return [float(value[0]), float(value[1])]
    return None


def variant_summary(entry: dict) -> dict:
    """What the runs list shows of one variant: AP in [0, 1], ΔAP vs float32 and its 95% CI, size
    in bytes, p50 latency in ms, failed images."""
    return {
        "variant": str(entry.get("variant")),
        "AP": _number(_dict(entry.get("bbox")).get("AP")),
        "delta_AP_vs_float32": _number(entry.get("delta_AP_vs_float32")),
        "delta_AP_vs_float32_ci": _interval(entry.get("delta_AP_vs_float32_ci")),
        "model_bytes": _number(entry.get("model_bytes")),
        "latency_p50_ms": _number(_dict(entry.get("latency_ms")).get("p50")),
        "images": _number(entry.get("images")),
        "failed_images": _number(entry.get("failed_images")) or 0,
    }


def run_summary(run_id: str, report: dict, files: list[str]) -> dict:
    """The runs list's row of a complete run (JSON-ready; every field read defensively)."""
    model, dataset = _dict(report.get("model")), _dict(report.get("dataset"))
    annotations = str(dataset.get("annotations") or "")
    variants = [variant_summary(entry) for entry in report["variants"] if isinstance(entry, dict) and entry.get("variant")]
    regressions = [r for r in report.get("regressions") or [] if isinstance(r, dict)]
    return {
        "run_id": run_id, "status": "complete", "problem": None,
        "created": str(report.get("created") or ""),
        "model": {"source": str(model.get("source") or ""), "name": model_name(str(model.get("source") or "?")),
                  "digest": str(model.get("digest") or ""), "head": str(model.get("head") or "odapi")},
        "dataset": {"annotations": annotations, "name": annotations.rstrip("/").rpartition("/")[2] or annotations,
                    "digest": str(dataset.get("digest") or ""), "images": _number(dataset.get("images"))},
        "variants": variants,
        "compared_with": report.get("compared_with") if isinstance(report.get("compared_with"), str) else None,
        "regressions": [{"variant": str(r.get("variant")), "metric": str(r.get("metric")), "previous": _number(r.get("previous")),
                         "current": _number(r.get("current")), "change": _number(r.get("change")), "ci": _interval(r.get("ci")),
                         "text": regression_text(r)} for r in regressions],
        "failed_images": sum(v["failed_images"] for v in variants),
        "files": files,
    }


def problem_summary(run_id: str, status: str, problem: str, files: list[str]) -> dict:
    """The runs list's row of an incomplete or unreadable run."""
    return {"run_id": run_id, "status": status, "problem": problem, "created": "", "model": None, "dataset": None,
            "variants": [], "compared_with": None, "regressions": [], "failed_images": 0, "files": files}


MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)  # what a report.json of the wrong shape raises


class UnshowableReport(QuantbenchError):
    """A run's report.json parses and has a "variants" list, but its page cannot be made from it."""


@dataclass(frozen=True)
class _Run:
    version: str | None  # report.json's; None when the run has none
    summary: dict


class Catalog:
    """The runs and history of one store, cached by object version; safe to share between threads."""

    def __init__(self, store: Store, listing_s: float = LISTING_S, max_stale_s: float = MAX_STALE_S):
        self.store, self.listing_s, self.max_stale_s = store, listing_s, max_stale_s
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._ordered: list[dict] = []
        self._tables: dict[str, tuple[str, pa.Table | None, str | None]] = {}  # key -> (version, table, problem)
        self._history: tuple[str, pd.DataFrame] = ("", history_frame([]))
        self._reports: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._pages: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._listings: dict[str, tuple[float, object]] = {}  # what was listed -> (monotonic time, the listing)
        self._full: tuple[tuple, float, dict[str, dict[str, str]]] | None = None  # (marker, monotonic time, run listing)
        self._full_failure: QuantbenchError | None = None  # why the last background run listing failed
        self._full_refreshing = False

    def _versions(self, prefix: str) -> dict[str, str]:
        """``store.versions(prefix)``, reused for ``listing_s`` (the pieces of one request list once)."""
        return self._listed(f"versions {prefix}", lambda: self.store.versions(prefix))

    def _folders(self, prefix: str) -> list[str]:
        """``store.folders(prefix)``, reused for ``listing_s``."""
        return self._listed(f"folders {prefix}", lambda: self.store.folders(prefix))

    def _listed(self, name: str, listing):
        with self._lock:
            listed = self._listings.get(name)
        if listed is not None and time.monotonic() - listed[0] < self.listing_s:
            return listed[1]
        try:
            value = listing()
        except QuantbenchError:  # no page rests on a listing from before the failure
            with self._lock:
                self._listings.pop(name, None)
            raise
        with self._lock:
            self._listings[name] = (time.monotonic(), value)
        return value

    # --- runs ---------------------------------------------------------------------------------

    def runs(self) -> list[dict]:
        """Every run folder's summary, newest first (run ids start with their UTC start time)."""
        listing = self._run_listing()
        with self._lock:
            stale = {run_id: objects for run_id, objects in listing.items()
                     if run_id not in self._runs or self._runs[run_id].version != objects.get("report.json")}
            if stale or set(self._runs) != set(listing):
                with ThreadPoolExecutor(READERS) as readers:
                    fresh = dict(zip(stale, readers.map(self._read_run, stale, stale.values())))
                self._runs = {run_id: fresh.get(run_id) or self._runs[run_id] for run_id in listing}
                self._ordered = [self._runs[run_id].summary for run_id in sorted(self._runs, reverse=True)]
            return self._ordered

    def _run_listing(self) -> dict[str, dict[str, str]]:
        """run id -> {name inside the run folder: version}, for folders whose id is a valid run id.

        Listing every object of 1,000 runs is ~21,000 keys (~1.7 s on S3), so it is redone only when
        the store's runs changed: its *marker* — the run folders (one delimiter listing) and the
        history objects' versions (one listing; a run's history object is the last thing it writes)
        — differs from the one the kept listing was made under; a new run, or one that completed,
        is listed before the page is made. Without such a change the kept listing is used, and
        listed again in the background once it is ``max_stale_s`` old (a report.json replaced in
        place). After that background listing failed, the next request lists itself."""
        marker = (tuple(self._folders(RUNS)), tuple(sorted(self._versions(HISTORY).items())))
        with self._lock:
            kept, failed = self._full, self._full_failure
            self._full_failure = None
            start = (kept is not None and kept[0] == marker and failed is None and not self._full_refreshing
                     and time.monotonic() - kept[1] > self.max_stale_s)
            self._full_refreshing |= start
        if kept is None or kept[0] != marker or failed is not None:
            return self._list_runs(marker)
        if start:
            threading.Thread(target=self._refresh_runs, args=(marker,), name="list runs", daemon=True).start()
        return kept[2]

    def _list_runs(self, marker: tuple) -> dict[str, dict[str, str]]:
        runs: dict[str, dict[str, str]] = {}
        try:
            versions = self.store.versions(RUNS)
        except QuantbenchError:
            with self._lock:
                self._full = None
            raise
        for key, version in versions.items():
            parts = key.split("/", 2)
            if len(parts) == 3 and RUN_ID.fullmatch(parts[1]):
                runs.setdefault(parts[1], {})[parts[2]] = version
        with self._lock:
            self._full = (marker, time.monotonic(), runs)
        return runs

    def _refresh_runs(self, marker: tuple) -> None:
        try:
            self._list_runs(marker)
        except QuantbenchError as error:  # kept for the next request, which lists itself and says so
            with self._lock:
                self._full_failure = error
        finally:
            with self._lock:
                self._full_refreshing = False

    def _read_run(self, run_id: str, objects: dict[str, str]) -> _Run:
        files = sorted((name for name in objects if DOWNLOADS.fullmatch(name)), key=lambda name: (name.startswith("detections/"), name))
        version = objects.get("report.json")
        if version is None:
            return _Run(None, problem_summary(run_id, "incomplete", INCOMPLETE, files))
        try:
            report = parse_report(self.store, run_id, self.store.read_bytes(f"{RUNS}/{run_id}/report.json"))
            return _Run(version, run_summary(run_id, report, files))
        except MALFORMED as error:
            return _Run(version, problem_summary(run_id, "unreadable", f"unreadable report.json: not a quantbench report ({error!r})",
                                                 files))
        except TransientError:
            raise  # the store is out: not a property of this run, and nothing is cached
        except QuantbenchError as error:
            return _Run(version, problem_summary(run_id, "unreadable", f"unreadable report.json: {error}", files))

    def summary(self, run_id: str) -> dict | None:
        """The run's summary (None: no such run, or an id that is not one)."""
        if not RUN_ID.fullmatch(run_id):
            return None
        self.runs()
        with self._lock:
            run = self._runs.get(run_id)
        return None if run is None else run.summary

    def report(self, run_id: str) -> dict | None:
        """The parsed report.json of a complete run; None when there is no such complete run."""
        summary = self.summary(run_id)
        if summary is None or summary["status"] != "complete":
            return None
        version = self._runs[run_id].version
        with self._lock:
            if (run_id, version) in self._reports:
                self._reports.move_to_end((run_id, version))
                return self._reports[(run_id, version)]
        report = parse_report(self.store, run_id, self.store.read_bytes(f"{RUNS}/{run_id}/report.json"))
        with self._lock:
            self._reports[(run_id, version)] = report
            while len(self._reports) > KEPT_REPORTS:
                self._reports.popitem(last=False)
        return report

    def download(self, run_id: str, name: str) -> bytes | None:
        """A run's report.json/csv/md or ``detections/<variant>.json``; None for any other name or run."""
        summary = self.summary(run_id)
        if summary is None or name not in summary["files"]:
            return None
        return self.store.read_bytes(f"{RUNS}/{run_id}/{name}")

    # --- history ------------------------------------------------------------------------------

    def history(self) -> pd.DataFrame:
        """Every readable history row (:func:`tasks.publish.history.read_history`'s frame), objects
        re-read only when their version changed. An unreadable object is left out and named in
        :meth:`history_problems`; an unreachable store raises."""
        versions = {key: version for key, version in self._versions(HISTORY).items()
                    if key.count("/") == 1 and key.endswith(".parquet")}
        token = hashlib.sha256(repr(sorted(versions.items())).encode()).hexdigest()
        with self._lock:
            if token == self._history[0]:
                return self._history[1]
            stale = [key for key, version in versions.items() if key not in self._tables or self._tables[key][0] != version]
        with ThreadPoolExecutor(READERS) as readers:
            read = dict(zip(stale, readers.map(self._read_history_object, stale)))
        with self._lock:
            self._tables = {key: (version, *(read[key] if key in read else self._tables[key][1:])) for key, version in versions.items()}
            tables = [self._tables[key][1] for key in sorted(self._tables) if self._tables[key][1] is not None]
            self._history = (token, history_frame(tables))
            return self._history[1]

    def _read_history_object(self, key: str) -> tuple[pa.Table | None, str | None]:
        try:
            return read_history_object(self.store, key), None
        except TransientError:
            raise
        except QuantbenchError as error:
            return None, str(error)

    def history_problems(self) -> list[str]:
        """One line per history object left out of :meth:`history` because it cannot be read."""
        with self._lock:
            return [problem for _, _, problem in self._tables.values() if problem]

    # --- pages --------------------------------------------------------------------------------

    def run_page(self, run_id: str) -> str | None:
        """The run's report page, rendered from its report.json and the store's history exactly as the
        run rendered its report.html (that stored file is never read); None when there is no such run;
        :class:`UnshowableReport` when the report has the wrong shape for it."""
        report = self.report(run_id)
        if report is None:
            return None
        history = self.history()
        key = (run_id, self._runs[run_id].version or "", self._history[0])
        with self._lock:
            if key in self._pages:
                self._pages.move_to_end(key)
                return self._pages[key]
        try:
            page = render_html(report, render_plots(report, history))
        except MALFORMED as error:
            raise UnshowableReport(f"report.json of run {run_id} is not a quantbench report the page can show ({error!r})") from None
        with self._lock:
            self._pages[key] = page
            while len(self._pages) > KEPT_PAGES:
                self._pages.popitem(last=False)
        return page

