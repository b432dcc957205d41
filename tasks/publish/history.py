"""Run history: one row per (run, variant) of every benchmark, as Parquet objects in the store.

Each run writes its rows as ONE object, ``history/<run id>.parquet``, in a single atomic write:
S3 has no append, and two nightly runs may finish at the same time, so a shared file that each
run reads, extends and writes back would lose rows. Readers concatenate the objects: through the
:class:`~tasks.store.object_store.Store` API (local folder and S3 alike, :func:`read_history`), or, for a local
store, with ``pd.read_parquet("<store folder>/history")`` directly. Every object has the same
Arrow schema (:data:`SCHEMA`), so all of them concatenate without dtype surprises.

Units: sizes in bytes, latencies in milliseconds, throughput in images per second, AP in [0, 1].
An undefined COCO stat (null in report.json, or pycocotools' -1 in older reports: no ground truth
in that area range) is NaN.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.store.errors import QuantbenchError
from tasks.store.object_store import Store

HISTORY = "history"
BBOX_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")  # as in tasks.publish.report, which imports Prefect
MB = 1_000_000
SETTINGS_DIGEST_CHARS = 12
SHORT_DIGEST_CHARS = 12
TREND_ALIGN = ("left", "left", "left", "left", "right", "right", "right", "right", "right")  # text left, numbers right
# Where tasks.run.latency.host_info() records the package versions (report["host"]["versions"]).
LITERT_PACKAGE = "ai-edge-litert"
TENSORFLOW_PACKAGE = "tensorflow-cpu"

SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("created", pa.timestamp("us", tz="UTC")),
    ("model_source", pa.string()),
    ("model_digest", pa.string()),
    ("dataset_digest", pa.string()),
    ("variant", pa.string()),
    *((name, pa.float64()) for name in BBOX_COLUMNS),
    ("mask_AP", pa.float64()),
    ("model_bytes", pa.int64()),
    ("size_vs_float32", pa.float64()),
    ("latency_p50_ms", pa.float64()),
    ("latency_p90_ms", pa.float64()),
    ("images_per_s", pa.float64()),
    ("images", pa.int64()),
    ("failed_images", pa.int64()),
    ("delta_AP_vs_float32", pa.float64()),
    ("delta_AP_vs_float32_ci_low", pa.float64()),
    ("delta_AP_vs_float32_ci_high", pa.float64()),
    ("litert_version", pa.string()),
    ("tensorflow_version", pa.string()),
    ("cpu", pa.string()),
    ("settings_digest", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)


def _to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with nullable integers (Int64), so a missing count does not turn the column to float."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def empty_history() -> pd.DataFrame:
    """A frame with every history column and no rows (the same dtypes as a non-empty one)."""
    return _to_frame(SCHEMA.empty_table())


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float:
    """A float, NaN for None or anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _stat(stats: Any, name: str) -> float:
    """A COCO summary stat in [0, 1]; NaN when absent, null, or pycocotools' -1 (undefined)."""
    value = _number(_dict(stats).get(name))
    return math.nan if value < 0 else value


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _created(report: dict) -> pd.Timestamp:
    """report["created"] (ISO 8601) as a UTC timestamp; a time without zone is taken as UTC."""
    try:
        created = pd.Timestamp(str(report["created"]))
    except (KeyError, ValueError) as error:
        raise QuantbenchError(f"report of run {report.get('run_id')} has no valid 'created' time ({error})") from None
    if pd.isna(created):
        raise QuantbenchError(f"report of run {report.get('run_id')} has no valid 'created' time")
    return created.tz_localize("UTC") if created.tzinfo is None else created.tz_convert("UTC")


def settings_digest(report: dict) -> str | None:
    """The report's own "settings_digest" when present, else the first 12 hex digits of the
    SHA-256 of its settings as sorted JSON; None when the report has neither."""
    if report.get("settings_digest"):
        return str(report["settings_digest"])
    if report.get("settings") is None:
        return None
    return hashlib.sha256(json.dumps(report["settings"], sort_keys=True).encode()).hexdigest()[:SETTINGS_DIGEST_CHARS]


def _ci(entry: dict) -> tuple[float, float]:
    """(low, high) of entry["delta_AP_vs_float32_ci"]; NaNs when absent (older reports) or undefined."""
    interval = entry.get("delta_AP_vs_float32_ci")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return _number(interval[0]), _number(interval[1])
    return math.nan, math.nan


def _run_columns(report: dict) -> dict:
    """The columns every row of a run shares."""
    model, host = _dict(report.get("model")), _dict(report.get("host"))
    versions = _dict(host.get("versions"))
    return {
        "run_id": str(report["run_id"]),
        "created": _created(report).to_pydatetime(),
        "model_source": _text(model.get("source")),
        "model_digest": _text(model.get("digest")),
        "dataset_digest": _text(_dict(report.get("dataset")).get("digest")),
        "litert_version": _text(versions.get(LITERT_PACKAGE)),
        "tensorflow_version": _text(versions.get(TENSORFLOW_PACKAGE)),
        "cpu": _text(host.get("cpu")),
        "settings_digest": settings_digest(report),
    }


def _variant_columns(entry: dict) -> dict:
    """The columns of one variant entry of report.json."""
    latency = _dict(entry.get("latency_ms"))
    ci_low, ci_high = _ci(entry)
    return {
        "variant": str(entry["variant"]),
        **{name: _stat(entry.get("bbox"), name) for name in BBOX_COLUMNS},
        "mask_AP": _stat(entry.get("segm"), "AP"),
        "model_bytes": _count(entry.get("model_bytes")),
        "size_vs_float32": _number(entry.get("size_vs_float32")),
        "latency_p50_ms": _number(latency.get("p50")),
        "latency_p90_ms": _number(latency.get("p90")),
        "images_per_s": _number(entry.get("images_per_s")),
        "images": _count(entry.get("images")),
        "failed_images": _count(entry.get("failed_images")),
        "delta_AP_vs_float32": _number(entry.get("delta_AP_vs_float32")),
        "delta_AP_vs_float32_ci_low": ci_low,
        "delta_AP_vs_float32_ci_high": ci_high,
    }


def history_rows(report: dict) -> pd.DataFrame:
    """One row per variant of a report.json dict, with the columns of :data:`SCHEMA`, in the report's
    variant order. Optional fields an older report lacks are NaN (numbers) or missing (text)."""
    if not isinstance(report.get("run_id"), str) or not isinstance(report.get("variants"), list):
        raise QuantbenchError("not a quantbench report: it needs a 'run_id' and a 'variants' list")
    run = _run_columns(report)
    entries = [entry for entry in report["variants"] if isinstance(entry, dict) and entry.get("variant")]
    return _to_frame(pa.Table.from_pylist([{**run, **_variant_columns(entry)} for entry in entries], schema=SCHEMA))


def history_key(run_id: str) -> str:
    return f"{HISTORY}/{run_id}.parquet"


def write_history(store: Store, report: dict) -> str:
    """Write the run's rows as ``history/<run id>.parquet`` (one atomic write; a rerun of the same
    run replaces its own object and nothing else); return the object's URL."""
    # With the pandas metadata, pd.read_parquet restores the same dtypes (Int64 counts) as read_history.
    table = pa.Table.from_pandas(history_rows(report), schema=SCHEMA, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return store.write_bytes(history_key(report["run_id"]), buffer.getvalue())


def _conform(table: pa.Table) -> pa.Table:
    """``table`` with exactly the columns of SCHEMA: ones an older writer lacked are null, unknown ones dropped."""
    columns = [table[field.name].cast(field.type) if field.name in table.column_names else pa.nulls(len(table), field.type)
               for field in SCHEMA]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def read_history_object(store: Store, key: str) -> pa.Table:
    """One history object as an Arrow table with exactly the columns of SCHEMA; one-line error if unreadable."""
    try:
        return _conform(pq.read_table(io.BytesIO(store.read_bytes(key))))
    except (pa.ArrowException, OSError) as error:
        raise QuantbenchError(f"{store.url_for(key)} is not a readable history file: {error}") from None


def history_keys(store: Store) -> list[str]:
    """Keys of the history objects, ``history/<run id>.parquet``, sorted."""
    return [key for key in store.list_keys(HISTORY) if key.count("/") == 1 and key.endswith(".parquet")]


def _matches_model(frame: pd.DataFrame, model: str) -> pd.Series:
    """Rows whose model source contains ``model`` (any case) or whose digest starts with it."""
    text = model.strip().lower()
    in_source = frame["model_source"].str.lower().str.contains(text, regex=False, na=False)
    return in_source | frame["model_digest"].str.lower().str.startswith(text, na=False)


def history_frame(tables: list[pa.Table]) -> pd.DataFrame:
    """History objects' tables (:func:`read_history_object`) as one frame, oldest run first (by
    created, then run id), a run's variants in report order; no tables -> :func:`empty_history`."""
    if not tables:
        return empty_history()
    return _to_frame(pa.concat_tables(tables)).sort_values(["created", "run_id"], kind="stable").reset_index(drop=True)


def read_history(store: Store, model: str | None = None, variant: str | None = None) -> pd.DataFrame:
    """Every history row of ``store``, oldest run first (by created, then run id), a run's variants
    in report order. ``model``: keep rows whose model source contains it (case-insensitive) or whose
    model digest starts with it; ``variant``: keep that variant only. No rows -> an empty frame with
    the history columns."""
    frame = history_frame([read_history_object(store, key) for key in history_keys(store)])
    if model:
        frame = frame[_matches_model(frame, model)]
    if variant:
        frame = frame[frame["variant"] == variant]
    return frame.reset_index(drop=True)


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def delta_text(delta: float, low: float, high: float) -> str:
    """ΔAP vs float32 with its confidence interval: ``+0.0004 [-0.0021, +0.0030]``; the value alone
    when there is no interval; ``n/a`` when ΔAP is undefined."""
    if pd.isna(delta):
        return "n/a"
    if pd.isna(low) or pd.isna(high):
        return _signed(delta)
    return f"{_signed(delta)} [{_signed(low)}, {_signed(high)}]"


def _fixed(values: pd.Series, decimals: int) -> list[str]:
    return ["n/a" if pd.isna(value) else f"{value:.{decimals}f}" for value in values]


def _trend_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The displayed cells, as text: AP (3 decimals), ΔAP with CI, size in MB, p50 latency in ms."""
    return pd.DataFrame({
        "run_id": frame["run_id"],
        "created (UTC)": frame["created"].dt.strftime("%Y-%m-%d %H:%M"),
        "model": frame["model_digest"].str.slice(0, SHORT_DIGEST_CHARS).fillna("n/a"),
        "variant": frame["variant"],
        "AP": _fixed(frame["AP"], 3),
        "ΔAP vs float32 [CI]": [delta_text(*values) for values in zip(
            frame["delta_AP_vs_float32"], frame["delta_AP_vs_float32_ci_low"], frame["delta_AP_vs_float32_ci_high"])],
        "size MB": _fixed(frame["model_bytes"].astype("float64") / MB, 2),
        "p50 ms": _fixed(frame["latency_p50_ms"], 2),
        "failed": ["n/a" if pd.isna(count) else str(count) for count in frame["failed_images"]],
    }, index=frame.index)


def history_table_text(frame: pd.DataFrame, where: str) -> str:
    """A markdown trend table of history rows, one line per (run, variant); ``where`` names what
    was searched (e.g. the store's history URL and filters), for the line printed when ``frame``
    is empty."""
    if frame.empty:
        return f"no run history in {where} yet (each benchmark run adds {HISTORY}/<run id>.parquet)"
    return _trend_table(frame).to_markdown(index=False, disable_numparse=True, colalign=TREND_ALIGN)
