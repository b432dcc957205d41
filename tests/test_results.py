"""``quantbench results list|show|fetch`` on runs the benchmark flow really produced: two in a
local store, one in a real S3 server (SeaweedFS on 127.0.0.1)."""
import io
import json
import time
import uuid
from datetime import datetime, timezone

import pandas as pd
import pytest

from flows.benchmark import BenchmarkConfig, benchmark
from flows.cli import main
from tasks.publish.presentation import render_run_page
from tasks.publish.report import format_table, report_table
from tasks.publish.results import read_report_csv
from tasks.store.object_store import open_store

INCOMPLETE_ID = "20991231T235959Z-0badf00d"  # newest of all: a run still in progress (or one that failed)


def _config(oracle_data, oracle_models, store: str) -> BenchmarkConfig:
    return BenchmarkConfig(
        model=str(oracle_models["fixed"]), annotations=str(oracle_data), images=str(oracle_data.parent),
        variants=["float32", "int8"], shard_size=4, latency_images=3, store=store,
    )


def _run_id(report_url: str) -> str:
    return report_url.rsplit("/", 2)[-2]


@pytest.fixture(scope="module")
def local_runs(prefect_backend, oracle_data, oracle_models, tmp_path_factory):
    """(store, [older run id, newer run id]) with an incomplete run folder beside them."""
    store = open_store(tmp_path_factory.mktemp("results-store").as_uri())
    ids = []
    for _ in range(2):
        # A run id starts with its UTC start time to the second: start the second run in a later second.
        while ids and datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") <= ids[-1].split("-")[0]:
            time.sleep(0.1)
        ids.append(_run_id(benchmark(_config(oracle_data, oracle_models, store.url))))
    assert ids[0] < ids[1], ids
    store.write_bytes(f"runs/{INCOMPLETE_ID}/detections/float32.json", b"[]")
    return store, ids


@pytest.fixture(scope="module")
def s3_run(prefect_backend, s3_server, oracle_data, oracle_models):
    """(store URL, run id) of one run in the S3 server, under a prefix of its own."""
    url = f"s3://quantbench/results-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.env().items():
            env.setenv(name, value)
        return url, _run_id(benchmark(_config(oracle_data, oracle_models, url)))


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # drop whatever the fixtures printed
    code = main(["results", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys, *args) -> str:
    code, out, err = _cli(capsys, *args)
    assert code == 2 and out == "", (code, out)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")
    return err.strip()


def test_list_is_newest_first_and_marks_the_incomplete_run(local_runs, capsys):
    store, (older, newer) = local_runs
    code, out, err = _cli(capsys, "list", "--store", store.url)
    assert code == 0, err
    head, *lines = out.strip().splitlines()
    assert store.url in head and "3 run(s)" in head and "1 incomplete" in head
    assert [line.split()[0] for line in lines] == [INCOMPLETE_ID, newer, older]
    assert "incomplete" in lines[0]
    for line, run_id in zip(lines[1:], (newer, older)):
        report = store.read_json(f"runs/{run_id}/report.json")
        assert line == f"{run_id}  {report['created']}  fixed  float32 AP 1.000, int8 AP 1.000"


def test_list_uses_the_default_store_of_run(local_runs, capsys, monkeypatch):
    store, (older, newer) = local_runs
    monkeypatch.setenv("QUANTBENCH_STORE", store.url)
    code, out, _ = _cli(capsys, "list")
    assert code == 0 and store.url in out and newer in out and older in out


def test_show_by_unique_prefix(local_runs, capsys):
    store, (older, newer) = local_runs
    report = store.read_json(f"runs/{older}/report.json")
    code, out, err = _cli(capsys, "show", older.split("-")[0], "--store", store.url)  # the timestamp alone
    assert code == 0, err
    assert out.startswith(f"run {older}  created {report['created']}\n")
    assert f"report: {store.url}/runs/{older}/report.json" in out
    assert format_table(report_table(report)) in out


def test_show_json_is_the_stored_report(local_runs, capsys):
    store, (older, newer) = local_runs
    code, out, err = _cli(capsys, "show", newer, "--json", "--store", store.url)
    assert code == 0, err
    stored = store.read_bytes(f"runs/{newer}/report.json")
    assert json.loads(out) == json.loads(stored) and out.strip() == stored.decode().strip()


@pytest.mark.parametrize("action", ["show", "fetch"])
def test_unknown_ambiguous_and_incomplete_runs_are_one_line_errors(local_runs, capsys, tmp_path, action):
    store, _ = local_runs
    dest = [str(tmp_path / "dest")] if action == "fetch" else []
    error = _error(capsys, action, "19990101", *dest, "--store", store.url)
    assert error == f"error: no run '19990101' in {store.url} (see: quantbench results list --store {store.url})"
    error = _error(capsys, action, "20", *dest, "--store", store.url)
    assert "'20' is ambiguous" in error and store.url in error and INCOMPLETE_ID in error
    error = _error(capsys, action, INCOMPLETE_ID[:10], *dest, "--store", store.url)
    assert f"run {INCOMPLETE_ID} in {store.url} is incomplete" in error
    assert not (tmp_path / "dest").exists()


def test_fetch_mirrors_the_run_folder(local_runs, capsys, tmp_path):
    store, (older, _) = local_runs
    code, out, err = _cli(capsys, "fetch", older, str(tmp_path / "out"), "--store", store.url)
    assert code == 0, err
    fetched = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert fetched == ["detections/float32.json", "detections/int8.json", "report.csv", "report.json", "report.md"]
    for name in fetched:
        assert (tmp_path / "out" / name).read_bytes() == store.read_bytes(f"runs/{older}/{name}")
        assert f"wrote {tmp_path / 'out' / name} (" in out
    assert out.strip().splitlines()[-1] == f"fetched run {older} from {store.url} into {tmp_path / 'out'}: 5 files"


def test_show_html_renders_the_page_from_report_json_never_the_stored_html(local_runs, capsys, tmp_path):
    store, (older, _) = local_runs
    key = f"runs/{older}/report.html"
    stored = store.read_bytes(key)
    store.write_bytes(key, stored.replace(b"<body>", b"<body><script>alert(1)</script>"))
    try:
        code, out, err = _cli(capsys, "show", older, "--store", store.url, "--html", str(tmp_path))
    finally:
        store.write_bytes(key, stored)
    assert code == 0, err
    page = (tmp_path / f"{older}.html").read_bytes()
    assert out.strip() == f"wrote {tmp_path / f'{older}.html'}"
    assert b"<script" not in page and page == render_run_page(store, store.read_json(f"runs/{older}/report.json"))[0].encode()
    assert page == stored  # the same renderer as the run's: the page it wrote, byte for byte


def test_fetch_into_a_file_is_refused(local_runs, capsys, tmp_path):
    store, (older, _) = local_runs
    (tmp_path / "taken").write_text("x")
    assert "it is a file, not a folder" in _error(capsys, "fetch", older, str(tmp_path / "taken"), "--store", store.url)


def test_results_of_a_run_in_s3(s3_run, s3_env, capsys, tmp_path):
    url, run_id = s3_run
    store = open_store(url)
    report = store.read_json(f"runs/{run_id}/report.json")

    code, out, err = _cli(capsys, "list", "--store", url)
    assert code == 0, err
    assert out.strip().splitlines() == [f"1 run(s) in {url}, newest first:", f"{run_id}  {report['created']}  fixed  float32 AP 1.000, int8 AP 1.000"]

    code, out, err = _cli(capsys, "show", run_id[:12], "--store", url)
    assert code == 0 and format_table(report_table(report)) in out, err

    code, out, err = _cli(capsys, "fetch", run_id[:12], str(tmp_path / "out"), "--store", url)
    assert code == 0, err
    for variant in ("float32", "int8"):
        key = f"runs/{run_id}/detections/{variant}.json"
        assert report["variants"][["float32", "int8"].index(variant)]["detections"] == store.url_for(key)
        assert (tmp_path / "out" / "detections" / f"{variant}.json").read_bytes() == store.read_bytes(key)
    for name in ("report.json", "report.csv", "report.md"):
        assert (tmp_path / "out" / name).read_bytes() == store.read_bytes(f"runs/{run_id}/{name}")

    # report.csv straight from S3 into pandas, through the store (pandas' own s3:// would need s3fs).
    table = pd.read_csv(io.BytesIO(store.read_bytes(f"runs/{run_id}/report.csv")))
    assert list(table["variant"]) == ["float32", "int8"] and list(table["AP"]) == [1.0, 1.0]
    pd.testing.assert_frame_equal(table, read_report_csv(store, run_id))
    assert list(table.columns) == list(report_table(report).columns)

    assert _error(capsys, "show", "nope", "--store", url) == f"error: no run 'nope' in {url} (see: quantbench results list --store {url})"
