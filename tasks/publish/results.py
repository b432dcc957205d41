"""Browse the runs in a store: list them, show one's report, fetch one's files.

Plain functions over the :class:`~tasks.store.object_store.Store` API, so a local folder and S3 behave the same.
A run is the folder ``runs/<run id>/``; it is complete once ``report.json`` is there (the report
is written last). Run ids start with a UTC timestamp, so sorting them descending is newest first.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from tasks.store.errors import QuantbenchError
from tasks.store.object_store import LocalStore, Store

RUNS = "runs"
REPORT_FILES = ("report.json", "report.csv", "report.md")
INCOMPLETE = "incomplete (no report.json: still running, or failed)"


@dataclass(frozen=True)
class RunSummary:
    """One run folder: its report when complete, else why it is not shown as a result."""

    run_id: str
    keys: tuple[str, ...] = field(default=())  # every key under runs/<run id>/, sorted
    report: dict | None = None
    problem: str | None = None  # set when report.json is absent or unreadable

    @property
    def complete(self) -> bool:
        return self.report is not None


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_text(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (ANSI escape sequences, bells,
    carriage returns, …) that stored strings may carry are shown as ``\\xNN`` instead of acting;
    newlines and tabs stay."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def run_prefix(run_id: str) -> str:
    return f"{RUNS}/{run_id}"


def _runs_by_id(store: Store) -> dict[str, list[str]]:
    """run id -> its keys, for every run folder holding at least one object."""
    runs: dict[str, list[str]] = {}
    for key in store.list_keys(RUNS):
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == RUNS and parts[1]:
            runs.setdefault(parts[1], []).append(key)
    return runs


def run_ids(store: Store) -> list[str]:
    """Ids of the run folders in ``store``, newest first."""
    return sorted(_runs_by_id(store), reverse=True)


def parse_report(store: Store, run_id: str, data: bytes) -> dict:
    """report.json bytes as a dict; one-line QuantbenchError unless it is JSON with a "variants" list."""
    try:
        report = json.loads(data)
    except ValueError as error:
        raise QuantbenchError(f"report.json of run {run_id} in {store.url} is not JSON: {error}") from None
    if not isinstance(report, dict) or not isinstance(report.get("variants"), list):
        raise QuantbenchError(f"report.json of run {run_id} in {store.url} is not a quantbench report (no 'variants' list)")
    return report


def _read_report(store: Store, run_id: str) -> tuple[bytes, dict]:
    key = f"{run_prefix(run_id)}/report.json"
    if not store.exists(key):
        raise QuantbenchError(f"run {run_id} in {store.url} is incomplete: no report.json (still running, or failed)")
    data = store.read_bytes(key)
    return data, parse_report(store, run_id, data)


def load_report(store: Store, run_id: str) -> dict:
    """The parsed report.json of a run; one-line error if the run is incomplete or the file is bad."""
    return _read_report(store, run_id)[1]


def list_runs(store: Store) -> list[RunSummary]:
    """Every run folder in ``store``, newest first; incomplete or unreadable ones included, marked."""
    summaries = []
    for run_id, keys in sorted(_runs_by_id(store).items(), reverse=True):
        report_key = f"{run_prefix(run_id)}/report.json"
        if report_key not in keys:
            summaries.append(RunSummary(run_id, tuple(keys), problem=INCOMPLETE))
            continue
        try:
            summaries.append(RunSummary(run_id, tuple(keys), report=parse_report(store, run_id, store.read_bytes(report_key))))
        except QuantbenchError as error:  # one bad run does not hide the others
            summaries.append(RunSummary(run_id, tuple(keys), problem=f"unreadable report.json: {error}"))
    return summaries


def resolve_run(store: Store, run: str) -> str:
    """The run id that ``run`` names: a full run id or a unique prefix of one (``runs/`` may lead)."""
    wanted = run.strip().strip("/")
    if wanted.startswith(f"{RUNS}/"):
        wanted = wanted[len(RUNS) + 1:]
    if not wanted or "/" in wanted:
        raise QuantbenchError(f"{run!r} is not a run id (see: quantbench results list --store {store.url})")
    ids = run_ids(store)
    if wanted in ids:
        return wanted
    matches = [run_id for run_id in ids if run_id.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise QuantbenchError(f"no run {wanted!r} in {store.url} (see: quantbench results list --store {store.url})")
    shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
    raise QuantbenchError(f"run {wanted!r} is ambiguous in {store.url}: it matches {shown}; give more of the run id")


def _model_name(source: str) -> str:
    """A short name for a model source: the last path segment, except for Kaggle handles."""
    if source.startswith("kaggle:"):
        return source
    return source.rstrip("/").rpartition("/")[2] or source


def _ap(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def format_run_line(summary: RunSummary) -> str:
    """``<run id>  <created>  <model>  <variant> AP <ap>, …`` or ``<run id>  incomplete (…)``."""
    if not summary.complete:
        return f"{summary.run_id}  {summary.problem}"
    report = summary.report
    model = report.get("model") or {}
    variants = ", ".join(
        f"{v.get('variant', '?')} AP {_ap((v.get('bbox') or {}).get('AP'))}" for v in report["variants"] if isinstance(v, dict)
    )
    return f"{summary.run_id}  {report.get('created', '?')}  {_model_name(str(model.get('source', '?')))}  {variants or 'no variants'}"


def list_text(store: Store) -> str:
    """What ``quantbench results list`` prints."""
    summaries = list_runs(store)
    if not summaries:
        return f"no runs in {store.url}"
    incomplete = sum(not s.complete for s in summaries)
    head = f"{len(summaries)} run(s) in {store.url}, newest first" + (f" ({incomplete} incomplete)" if incomplete else "") + ":"
    return "\n".join([head, *(format_run_line(s) for s in summaries)])


def show_text(store: Store, run_id: str) -> str:
    """What ``quantbench results show`` prints: a short header and the report table."""
    from tasks.publish.report import format_table, report_table

    report = load_report(store, run_id)
    try:
        model, dataset = report["model"], report["dataset"]
        header = [
            f"run {report['run_id']}  created {report['created']}",
            f"model: {model['source']} ({model['kind']}, sha256 {str(model['digest'])[:16]}…, input {model['input']['shape']})",
            f"dataset: {dataset['annotations']}, {dataset['images']} images",
            f"report: {store.url_for(run_prefix(run_id) + '/report.json')}",
        ]
        table = format_table(report_table(report))
    except (KeyError, TypeError) as error:
        raise QuantbenchError(f"report.json of run {run_id} in {store.url} is not a quantbench report (missing {error})") from None
    return "\n".join([*header, "", table])


def report_json_text(store: Store, run_id: str) -> str:
    """report.json exactly as stored (the benchmark writes it indented), checked to be a report."""
    return _read_report(store, run_id)[0].decode().rstrip("\n")


def read_report_csv(store: Store, run_id: str) -> pd.DataFrame:
    """The run's report.csv as a DataFrame, read through the store (S3 included, no s3fs needed)."""
    return pd.read_csv(io.BytesIO(store.read_bytes(f"{run_prefix(run_id)}/report.csv")))


def run_files(store: Store, run_id: str) -> list[str]:
    """Keys, relative to the run folder, of what ``fetch`` copies: the report files and every
    ``detections/<variant>.json``. Fails if the run is incomplete or a variant's detections are missing."""
    prefix = run_prefix(run_id)
    report = load_report(store, run_id)
    present = {key[len(prefix) + 1:] for key in store.list_keys(prefix)}
    detections = sorted(
        name for name in present
        if name.startswith("detections/") and name.count("/") == 1 and name.endswith(".json")
        and not name.rpartition("/")[2].startswith(".")
    )
    expected = {f"detections/{v['variant']}.json" for v in report["variants"] if isinstance(v, dict) and "variant" in v}
    missing = sorted(expected - set(detections))
    if missing:
        raise QuantbenchError(f"run {run_id} in {store.url} lacks {', '.join(missing)} (listed in its report.json)")
    return [name for name in REPORT_FILES if name in present] + detections


def fetch_run(store: Store, run_id: str, dest: Path, on_file: Callable[[Path, int], None] | None = None) -> list[tuple[Path, int]]:
    """Copy the run's report files and detections into ``dest`` (``dest/report.json``,
    ``dest/detections/<variant>.json``, …), one object at a time; return (path, bytes) per file.
    Each file is written atomically (existing files of the same name are replaced) and passed to
    ``on_file`` as soon as it is written."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise QuantbenchError(f"cannot fetch run {run_id} into {dest}: it is a file, not a folder")
    names = run_files(store, run_id)
    target = LocalStore(dest)
    written = []
    for name in names:
        data = store.read_bytes(f"{run_prefix(run_id)}/{name}")
        try:
            target.write_bytes(name, data)
        except OSError as error:
            raise QuantbenchError(f"cannot write {target.root / name}: {error.strerror or error}") from None
        written.append((target.root / name, len(data)))
        if on_file is not None:
            on_file(*written[-1])
    return written


def write_html(store: Store, run_id: str, dest: Path) -> Path:
    """The run's page rendered again from its report.json (and the store's history), exactly as the
    run rendered its ``report.html``, written to ``dest`` (a file, or an existing folder:
    ``dest/<run id>.html``). The stored report.html is never read: whoever can write to the store
    could have put anything in it (a script), while the renderer escapes every stored string."""
    from tasks.publish.presentation import render_run_page

    page = render_run_page(store, load_report(store, run_id))[0].encode()
    target = dest / f"{run_id}.html" if dest.is_dir() else dest
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(page)
    return target.resolve()
