"""Run history (tasks.publish.history): rows of a report, Parquet objects per run, local and S3 reads, trend text."""
from __future__ import annotations

import hashlib
import io
import json
import threading

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.store.errors import QuantbenchError
from tasks.publish.history import (
    BBOX_COLUMNS, COLUMNS, history_key, history_rows, history_table_text, read_history, write_history,
)
from tasks.store.object_store import LocalStore, open_store

MODEL_DIGEST = "3f1a9c0b7d2e" + "0" * 52
OTHER_DIGEST = "a0b1c2d3e4f5" + "1" * 52
FLOAT_COLUMNS = (*BBOX_COLUMNS, "mask_AP", "size_vs_float32", "latency_p50_ms", "latency_p90_ms", "images_per_s",
                 "delta_AP_vs_float32", "delta_AP_vs_float32_ci_low", "delta_AP_vs_float32_ci_high")
TEXT_COLUMNS = ("run_id", "model_source", "model_digest", "dataset_digest", "variant", "litert_version",
                "tensorflow_version", "cpu", "settings_digest")
VARIANT_BYTES = {"float32": 24_000_000, "float16": 12_000_000, "int8": 6_500_000, "int16x8": 7_000_000}
VARIANT_AP = {"float32": 0.412, "float16": 0.4121, "int8": 0.398, "int16x8": 0.41}


def bbox_stats(ap: float) -> dict:
    """The 12 COCO stats as tasks.score.evaluation writes them; APs undefined (-1: no small objects)."""
    return {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.05, "APs": -1.0, "APm": ap - 0.1, "APl": ap + 0.05,
            "AR1": 0.3, "AR10": 0.45, "AR100": 0.5, "ARs": -1.0, "ARm": 0.4, "ARl": 0.55}


def variant_entry(variant: str, ci: bool) -> dict:
    """A report.json entry shaped like tasks.publish.report.variant_entry's (float32 is the reference)."""
    ap, size = VARIANT_AP[variant], VARIANT_BYTES[variant]
    entry = {
        "variant": variant,
        "model": f"s3://models/{variant}.tflite",
        "model_bytes": size,
        "size_vs_float32": size / VARIANT_BYTES["float32"],
        "weights_by_dtype": {"float32": size},
        "quantized_weight_share": 0.0 if variant == "float32" else 0.97,
        "op_counts": {"CONV_2D": 52, "LOGISTIC": 1},
        "flex_ops": [],
        "max_abs_diff_vs_float32": {} if variant == "float32" else {"detection_boxes": 0.01},
        "latency_ms": {"mean": 21.0, "p50": 20.5, "p90": 24.25, "p99": 30.0},
        "latency": {"mean": 21.0, "p50": 20.5, "p90": 24.25, "p99": 30.0, "images_per_s": 47.6},
        "images_per_s": 47.6,
        "images": 50,
        "failed_images": 1 if variant == "int8" else 0,
        "failures": [{"image_id": 7, "file_name": "7.jpg", "reason": "truncated"}] if variant == "int8" else [],
        "bbox": bbox_stats(ap),
        "per_category_AP": {"person": ap},
        "delta_AP_vs_float32": ap - VARIANT_AP["float32"],
        "detections": f"s3://bench/runs/x/detections/{variant}.json",
        "detections_count": 400,
        "detections_outside_categories": {},
    }
    if ci:
        entry["delta_AP_vs_float32_ci"] = [entry["delta_AP_vs_float32"] - 0.002, entry["delta_AP_vs_float32"] + 0.003]
    return entry


def make_report(run_id: str = "20250301T020000Z-1a2b3c4d-0a0a", created: str = "2025-03-01T02:00:00+00:00",
                variants: tuple[str, ...] = ("float32", "float16", "int8"), source: str = "kaggle:tensorflow/ssd-mobilenet-v2/tensorFlow2/fpnlite-320x320",
                digest: str = MODEL_DIGEST, ci: bool = True) -> dict:
    """A report.json dict shaped like tasks.publish.report.build_report's (the flow's run dict plus variants)."""
    return {
        "run_id": run_id,
        "created": created,
        "model": {"source": source, "kind": "saved_model", "digest": digest, "input": {"shape": [1, 320, 320, 3], "dtype": "uint8"}},
        "dataset": {"annotations": "s3://data/instances.json", "images_url": "s3://data/images", "digest": "d" * 64, "images": 50},
        "calibration": "s3://data/calib (32 images)",
        "shards": [{"shard": 0, "images": 50}],
        "settings": {"shard_size": 25, "workers": 2, "threads": 1, "limit": None, "latency_images": 20, "min_score": 0.05,
                     "variants": list(variants), "class_ids": "coco91", "calibration_count": 32, "execution": "local", "shard_deployment": None},
        "host": {"cpu": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "cpu_count": 8, "usable_cpus": 2, "platform": "Linux-6.8-x86_64",
                 "python": "3.11.9", "versions": {"tensorflow-cpu": None, "ai-edge-litert": "2.3.0", "prefect": "3.9.1",
                                                  "pycocotools": "2.0.11", "numpy": "2.0.2"}},
        "variants": [variant_entry(variant, ci) for variant in variants],
    }


def check_dtypes(frame: pd.DataFrame) -> None:
    assert tuple(frame.columns) == COLUMNS
    assert str(frame["created"].dtype) == "datetime64[us, UTC]"
    assert all(frame[name].dtype == "float64" for name in FLOAT_COLUMNS)
    assert all(frame[name].dtype == "Int64" for name in ("model_bytes", "images", "failed_images"))
    assert all(pd.api.types.is_string_dtype(frame[name]) for name in TEXT_COLUMNS)


def test_rows_one_per_variant_with_report_values():
    report = make_report()
    report["variants"][1]["bbox"]["AP75"] = None  # an undefined stat written as null
    frame = history_rows(report)

    check_dtypes(frame)
    assert list(frame["variant"]) == ["float32", "float16", "int8"]
    assert set(frame["run_id"]) == {report["run_id"]}
    assert (frame["created"] == pd.Timestamp("2025-03-01 02:00", tz="UTC")).all()
    int8 = frame.iloc[2]
    assert int8["model_source"] == report["model"]["source"] and int8["model_digest"] == MODEL_DIGEST
    assert int8["dataset_digest"] == "d" * 64
    assert int8["AP"] == pytest.approx(0.398) and int8["AP50"] == pytest.approx(0.598) and int8["AR100"] == 0.5
    assert pd.isna(int8["APs"])  # COCO's -1 (undefined) is NaN, not a number to average
    assert pd.isna(frame.iloc[1]["AP75"])
    assert frame["mask_AP"].isna().all()  # no segm: a box-only model
    assert int8["model_bytes"] == 6_500_000 and int8["size_vs_float32"] == pytest.approx(6.5 / 24)
    assert (int8["latency_p50_ms"], int8["latency_p90_ms"], int8["images_per_s"]) == (20.5, 24.25, 47.6)
    assert (int8["images"], int8["failed_images"]) == (50, 1)
    assert int8["delta_AP_vs_float32"] == pytest.approx(-0.014)
    assert (int8["delta_AP_vs_float32_ci_low"], int8["delta_AP_vs_float32_ci_high"]) == pytest.approx((-0.016, -0.011))
    assert int8["litert_version"] == "2.3.0" and pd.isna(int8["tensorflow_version"])
    assert int8["cpu"].startswith("Intel(R) Xeon(R)")
    assert int8["settings_digest"] == hashlib.sha256(json.dumps(report["settings"], sort_keys=True).encode()).hexdigest()[:12]


def test_mask_ap_and_own_settings_digest():
    report = make_report(variants=("float32", "int8"))
    report["settings_digest"] = "feedc0ffee00"
    report["host"]["versions"]["tensorflow-cpu"] = "2.18.1"
    report["variants"][0]["segm"] = {**bbox_stats(0.35), "APl": -1.0}
    frame = history_rows(report)

    assert frame["mask_AP"].iloc[0] == 0.35 and pd.isna(frame["mask_AP"].iloc[1])
    assert set(frame["settings_digest"]) == {"feedc0ffee00"}
    assert set(frame["tensorflow_version"]) == {"2.18.1"}


def test_older_report_without_optional_fields():
    """A report from before the CI field, with less host detail and no float32 reference: NaN/None, no KeyError."""
    report = make_report(variants=("float16", "int8"), ci=False)
    del report["settings"], report["host"]["versions"], report["dataset"]["digest"]
    for entry in report["variants"]:
        entry.update(size_vs_float32=None, delta_AP_vs_float32=None)
        del entry["latency_ms"], entry["images"]
    old = history_rows(report)

    check_dtypes(old)
    assert old[["size_vs_float32", "delta_AP_vs_float32", "delta_AP_vs_float32_ci_low", "latency_p50_ms"]].isna().all().all()
    assert old[["settings_digest", "litert_version", "dataset_digest"]].isna().all().all()
    assert old["images"].isna().all()
    both = pd.concat([old, history_rows(make_report(run_id="20250302T020000Z-1a2b3c4d-0b0b"))], ignore_index=True)
    check_dtypes(both)
    assert len(both) == 5


@pytest.mark.parametrize(("change", "message"), [
    ({"run_id": None}, "needs a 'run_id'"), ({"variants": None}, "'variants' list"),
    ({"created": None}, "no valid 'created' time"), ({"created": ""}, "no valid 'created' time"),
])
def test_report_without_run_id_variants_or_created_is_refused(change, message):
    with pytest.raises(QuantbenchError, match=message):
        history_rows({**make_report(), **change})


def test_local_round_trip_and_read_parquet_folder(tmp_path):
    store = LocalStore(tmp_path)
    newer = make_report(run_id="20250302T020000Z-1a2b3c4d-0b0b", created="2025-03-02T02:00:00+00:00")
    older = make_report(variants=("float32", "int8", "int16x8"))
    urls = [write_history(store, report) for report in (newer, older)]
    write_history(store, older)  # a retried write replaces the run's own object

    assert urls == [store.url_for(history_key(newer["run_id"])), store.url_for(history_key(older["run_id"]))]
    expected = pd.concat([history_rows(older), history_rows(newer)], ignore_index=True)
    history = read_history(store)
    pd.testing.assert_frame_equal(history, expected)
    check_dtypes(history)

    direct = pd.read_parquet(tmp_path / "history")
    check_dtypes(direct)
    pd.testing.assert_frame_equal(direct.sort_values(["created", "run_id"], kind="stable").reset_index(drop=True), expected)


def test_read_sorts_by_created_then_run_id(tmp_path):
    store = LocalStore(tmp_path)
    same_time = "2025-03-05T02:00:00+00:00"
    for run_id, created in (("20250305T020000Z-bbbb", same_time), ("20250101T020000Z-zzzz", "2025-01-01T02:00:00Z"),
                            ("20250305T020000Z-aaaa", same_time)):
        write_history(store, make_report(run_id=run_id, created=created, variants=("float32", "int8")))

    history = read_history(store)
    assert list(history["run_id"]) == ["20250101T020000Z-zzzz"] * 2 + ["20250305T020000Z-aaaa"] * 2 + ["20250305T020000Z-bbbb"] * 2
    assert list(history["variant"]) == ["float32", "int8"] * 3


def test_filters(tmp_path):
    store = LocalStore(tmp_path)
    write_history(store, make_report())
    write_history(store, make_report(run_id="20250302T020000Z-9f9f9f9f-0c0c", created="2025-03-02T02:00:00+00:00",
                                     source="s3://models/EfficientDet-D0.tar.gz", digest=OTHER_DIGEST))

    assert set(read_history(store, model="SSD-MobileNet")["model_digest"]) == {MODEL_DIGEST}
    assert set(read_history(store, model="efficientdet")["model_digest"]) == {OTHER_DIGEST}
    assert set(read_history(store, model="A0B1C2")["model_digest"]) == {OTHER_DIGEST}  # a digest prefix
    assert read_history(store, model="b1c2d3").empty  # the digest must start with it
    int8 = read_history(store, model="3f1a9c", variant="int8")
    assert list(int8["variant"]) == ["int8"] and list(int8.index) == [0]
    assert len(read_history(store, variant="float16")) == 2
    assert read_history(store, variant="int").empty  # variant is exact
    nothing = read_history(store, model="yolo")
    assert nothing.empty and tuple(nothing.columns) == COLUMNS


def test_empty_store_reads_an_empty_frame_and_says_so(tmp_path):
    store = LocalStore(tmp_path)
    frame = read_history(store)
    check_dtypes(frame)
    assert frame.empty
    where = store.url_for("history")
    text = history_table_text(frame, where)
    assert len(text.splitlines()) == 1 and "no run history" in text and where in text


def test_history_object_of_an_older_schema_and_an_unreadable_one(tmp_path):
    store = LocalStore(tmp_path)
    old = pa.Table.from_pandas(history_rows(make_report(ci=False)).drop(columns=["delta_AP_vs_float32_ci_low", "delta_AP_vs_float32_ci_high"]))
    buffer = io.BytesIO()
    pq.write_table(old, buffer)
    store.write_bytes("history/old.parquet", buffer.getvalue())

    frame = read_history(store)
    check_dtypes(frame)
    assert frame["delta_AP_vs_float32_ci_low"].isna().all() and len(frame) == 3

    store.write_bytes("history/broken.parquet", b"not parquet")
    with pytest.raises(QuantbenchError, match="broken.parquet is not a readable history file"):
        read_history(store)


def test_trend_text():
    report = make_report(variants=("float32", "float16", "int8"))
    report["created"] = "2025-03-01T02:07:59.900000+00:00"
    report["variants"][1]["delta_AP_vs_float32_ci"] = None  # a ΔAP without an interval
    report["variants"][2].update(delta_AP_vs_float32=None, bbox={**bbox_stats(0.4), "AP": -1.0})
    text = history_table_text(history_rows(report), "unused")
    lines = text.splitlines()

    assert len(lines) == 2 + 3
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == [
        "run_id", "created (UTC)", "model", "variant", "AP", "ΔAP vs float32 [CI]", "size MB", "p50 ms", "failed"]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    assert [c[0] for c in cells] == [report["run_id"]] * 3
    assert {c[1] for c in cells} == {"2025-03-01 02:07"}
    assert {c[2] for c in cells} == {"3f1a9c0b7d2e"}
    assert cells[0][3:] == ["float32", "0.412", "+0.0000 [-0.0020, +0.0030]", "24.00", "20.50", "0"]
    assert cells[1][5] == "+0.0001"
    assert cells[2][3:] == ["int8", "n/a", "n/a", "6.50", "20.50", "1"]


def test_s3_concurrent_runs_both_land_and_results_history_reads_them(s3_env, tmp_path, capsys):
    from flows.cli import main

    url = f"s3://quantbench/history-tests/{tmp_path.name}"
    reports = [make_report(run_id=f"20250301T020000Z-1a2b3c4d-{suffix}", variants=("float32", "int8", "int16x8")) for suffix in ("0001", "0002")]
    barrier = threading.Barrier(len(reports))
    written: dict[str, str] = {}
    errors: list[BaseException] = []

    def finish_run(report: dict) -> None:
        try:
            store = open_store(url)  # each run opens its own store, as two flow runs would
            barrier.wait(timeout=30)
            written[report["run_id"]] = write_history(store, report)
        except BaseException as error:  # re-raised in the test thread below
            errors.append(error)

    threads = [threading.Thread(target=finish_run, args=(report,)) for report in reports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and not any(thread.is_alive() for thread in threads)
    store = open_store(url)
    assert written == {r["run_id"]: store.url_for(history_key(r["run_id"])) for r in reports}

    history = read_history(store)
    check_dtypes(history)
    assert list(history["run_id"]) == [reports[0]["run_id"]] * 3 + [reports[1]["run_id"]] * 3
    pd.testing.assert_frame_equal(history, pd.concat([history_rows(r) for r in reports], ignore_index=True))
    assert len(read_history(store, variant="int8")) == 2
    main(["results", "history", "--store", url])  # what a user types, on the S3 store
    out = capsys.readouterr().out
    assert all(r["run_id"] in out for r in reports) and out.count("| int8") == 2
    main(["results", "history", "--store", url, "--variant", "float32", "--csv"])
    assert pd.read_csv(io.StringIO(capsys.readouterr().out))["run_id"].tolist() == [r["run_id"] for r in reports]
