"""``quantbench serve`` over real stores, through HTTP: the three nightly runs of conftest's
``nightly_runs`` (two clean, then a regressed checkpoint in the same model location) served from
their local folder and from the tests' real S3 server; what a store holds that must not be served
(stored HTML, paths out of a run, symbolic links out of the store); broken and incomplete runs; an
unreachable store at start and while serving; the token."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.browse.catalog import Catalog
from tasks.store.object_store import LocalStore, open_store
from tests.prefect_server import REPO, free_port
from tests.s3server import S3Process
from tests.serve_process import serving

CHART_METRICS = {"AP", "delta_AP_vs_float32", "latency_p50_ms", "model_bytes"}  # the nightly view's charts


@pytest.fixture(scope="module")
def site(nightly_runs):
    """(base URL of serve over the nightly store, the three reports, the store folder)."""
    runs, store = nightly_runs
    with serving(str(store)) as base:
        yield base, [report for _, report in runs], store


def _copy(store: Path, tmp_path: Path) -> Path:
    """A copy of a store's runs and history, for tests that change what it holds."""
    copy = tmp_path / "store"
    for part in ("runs", "history"):
        shutil.copytree(store / part, copy / part)
    return copy


def _upload(source: Path, url: str) -> None:
    """Every object of a local store's runs and history into the store at ``url``."""
    target = open_store(url)
    for path in sorted(source.rglob("*")):
        key = path.relative_to(source).as_posix()
        if path.is_file() and key.split("/")[0] in ("runs", "history"):
            target.write_bytes(key, path.read_bytes())


def test_the_runs_list_shows_every_run_newest_first_with_its_regressions(site):
    base, reports, _ = site
    page = httpx.get(f"{base}/")
    assert page.status_code == 200
    listed = re.findall(r'<a class="run" href="/runs/([^"]+)">', page.text)
    assert listed == sorted((r["run_id"] for r in reports), reverse=True)
    rows = {row["run_id"]: row for row in httpx.get(f"{base}/api/runs").json()["runs"]}
    first, second, third = reports
    assert len(third["regressions"]) >= 4
    assert f'{len(third["regressions"])} regressions</span>' in page.text
    assert [len(rows[r["run_id"]]["regressions"]) for r in reports] == [0, 0, len(third["regressions"])]
    assert rows[second["run_id"]]["compared_with"] == first["run_id"] and rows[first["run_id"]]["compared_with"] is None
    for report in reports:
        shown = {v["variant"]: v for v in rows[report["run_id"]]["variants"]}
        for entry in report["variants"]:
            assert shown[entry["variant"]]["AP"] == entry["bbox"]["AP"]
            assert shown[entry["variant"]]["delta_AP_vs_float32_ci"] == entry["delta_AP_vs_float32_ci"]
    # filters: the first two runs share a checkpoint; all three the dataset
    digest = first["model"]["digest"][:12]
    by_model = httpx.get(f"{base}/api/runs", params={"model": digest}).json()["runs"]
    assert sorted(r["run_id"] for r in by_model) == sorted([first["run_id"], second["run_id"]])
    assert len(httpx.get(f"{base}/api/runs", params={"dataset": first["dataset"]["digest"][:8]}).json()["runs"]) == 3
    assert httpx.get(f"{base}/api/runs", params={"dataset": "0000"}).json()["runs"] == []
    filtered = httpx.get(f"{base}/", params={"model": digest}).text
    assert re.findall(r'<a class="run" href="/runs/([^"]+)">', filtered) == [second["run_id"], first["run_id"]]


def test_a_runs_page_is_rendered_from_its_report_and_offers_its_files(site):
    base, reports, store = site
    third = reports[2]
    run_id = third["run_id"]
    page = httpx.get(f"{base}/runs/{run_id}")
    assert page.status_code == 200 and "<script" not in page.text.lower()
    assert "script-src" not in page.headers["content-security-policy"] and "default-src 'none'" in page.headers["content-security-policy"]
    assert len(re.findall(r'<img [^>]*src="data:image/', page.text)) >= 5  # the plots, the history trend among them
    assert f'href="/compare?a={third["compared_with"]}&amp;b={run_id}"' in page.text
    for name in ("report.json", "report.csv", "report.md", "detections/int8.json"):
        download = httpx.get(f"{base}/runs/{run_id}/{name}")
        assert download.status_code == 200, name
        assert download.content == (store / "runs" / run_id / name).read_bytes(), name
        assert download.headers["content-disposition"].startswith("attachment")
    assert httpx.get(f"{base}/api/runs/{run_id}").json()["variants"][0]["bbox"] == third["variants"][0]["bbox"]


def test_stored_html_and_paths_out_of_a_run_are_never_served(nightly_runs, tmp_path):
    runs, source = nightly_runs
    store = _copy(source, tmp_path)
    run_id = runs[0][1]["run_id"]
    folder = store / "runs" / run_id
    (folder / "report.html").write_text("<html><body><script>alert('stored')</script>planted</body></html>")
    secret = tmp_path / "outside.json"
    secret.write_text('{"secret": "outside the store"}')
    (folder / "detections" / "leak.json").symlink_to(secret)
    (store / "runs" / "escape").symlink_to(tmp_path)
    with serving(str(store)) as base:
        page = httpx.get(f"{base}/runs/{run_id}")
        assert page.status_code == 200 and "planted" not in page.text and "alert(" not in page.text
        attempts = [f"/runs/{run_id}/report.html", f"/runs/{run_id}/plots/accuracy_vs_size.svg",
                    f"/runs/{run_id}/detections/leak.json", f"/runs/{run_id}/../../history/{run_id}.parquet",
                    f"/runs/{run_id}/..%2F..%2Fhistory%2F{run_id}.parquet", f"/runs/{run_id}/%2e%2e/%2e%2e/outside.json",
                    "/runs/..%2F..%2Foutside.json", "/runs/escape", "/runs/escape/outside.json", "/runs/%2Fetc%2Fpasswd/report.json",
                    f"/runs/{run_id}/%2Fetc%2Fpasswd", "/models/..%2F..", "/compare?a=../../etc&b=" + run_id, "/api/runs/..%2Fhistory"]
        for attempt in attempts:
            response = httpx.get(f"{base}{attempt}")
            assert response.status_code == 404, (attempt, response.status_code)
            assert "outside the store" not in response.text and "PAR1" not in response.text


def test_broken_and_incomplete_runs_are_listed_as_such_not_an_error(nightly_runs, tmp_path):
    runs, source = nightly_runs
    store = _copy(source, tmp_path)
    broken, incomplete = "20991231T000000Z-broken-0000", "20991231T000001Z-running-0000"
    (store / "runs" / broken).mkdir()
    (store / "runs" / broken / "report.json").write_text('{"variants": [')
    (store / "runs" / incomplete / "detections").mkdir(parents=True)
    (store / "runs" / incomplete / "detections" / "int8.json").write_text("[]")
    (store / "history" / f"{broken}.parquet").write_bytes(b"not parquet")
    odd = "20991231T000002Z-oddshape-0000"  # JSON with a variants list, of the wrong shape for a page
    (store / "runs" / odd).mkdir()
    (store / "runs" / odd / "report.json").write_text(json.dumps({"run_id": odd, "variants": [{"variant": "int8", "bbox": [1], "latency": 3}],
                                                                  "model": "text", "dataset": [], "regressions": ["x"]}))
    with serving(str(store)) as base:
        page = httpx.get(f"{base}/")
        assert page.status_code == 200
        assert re.search(rf"<code>{broken}</code></td><td [^>]*>unreadable: unreadable report.json: [^<]*not JSON", page.text)
        assert re.search(rf"<code>{incomplete}</code></td><td [^>]*>incomplete: ", page.text)
        assert len(re.findall(r'<a class="run" href', page.text)) == 4  # the good runs are all still there, and the odd one
        statuses = {r["run_id"]: r["status"] for r in httpx.get(f"{base}/api/runs").json()["runs"]}
        assert statuses[broken] == "unreadable" and statuses[incomplete] == "incomplete"
        for run_id in (broken, incomplete):
            response = httpx.get(f"{base}/runs/{run_id}")
            assert response.status_code == 404 and f"run {run_id} is {statuses[run_id]}: " in response.text
        shown = httpx.get(f"{base}/runs/{odd}")
        assert shown.status_code == 422 and f"report.json of run {odd} is not a quantbench report the page can show" in shown.text
        odd_pair = httpx.get(f"{base}/api/compare", params={"a": odd, "b": runs[0][1]["run_id"]})
        assert odd_pair.status_code in (200, 422) and odd_pair.headers["content-type"] == "application/json"
        nightly = httpx.get(f"{base}/models/{runs[2][1]['model']['digest'][:12]}")  # the broken history object is left out, said
        assert nightly.status_code == 200 and f"left out: {(store / 'history').as_uri()}/{broken}.parquet is not a readable history file" \
            in nightly.text
        assert len(re.findall(r'class="point[^"]*" data-run="[^"]+" data-series="float32"', nightly.text)) == 9  # 3 runs x 3 charts


def test_the_nightly_view_shows_every_run_of_the_model_location_with_its_regressions(site):
    base, reports, _ = site
    third = reports[2]
    page = httpx.get(f"{base}/models/{third['model']['digest'][:12]}")
    assert page.status_code == 200
    ids = {r["run_id"] for r in reports}
    points = re.findall(r'<a href="/runs/([^"]+)" class="point( regressed)?" data-run="[^"]+" data-series="([^"]+)"', page.text)
    assert {run_id for run_id, _, _ in points} == ids
    ap_chart = page.text.split('<svg class="chart"')[1]
    for variant in ("saved_model", "float32", "float16", "int8"):
        assert len(re.findall(rf'class="point[^"]*" data-run="[^"]+" data-series="{variant}"', ap_chart)) == 3, variant
    regressed = [(run_id, variant) for run_id, mark, variant in points if mark]
    expected = [r for r in third["regressions"] if r["metric"] in CHART_METRICS]
    assert len(regressed) == len(expected) and {run_id for run_id, _ in regressed} == {third["run_id"]}
    assert "2 distinct checkpoints" in page.text and "new checkpoint" in page.text
    rows = httpx.get(f"{base}/api/models/{third['model']['digest'][:12]}").json()["rows"]
    assert len(rows) == 12 and {row["run_id"] for row in rows} == ids
    assert httpx.get(f"{base}/models/ffffffffffff").status_code == 404


def test_two_runs_compared_per_variant_and_per_category(site):
    base, reports, _ = site
    _, second, third = reports
    result = httpx.get(f"{base}/api/compare", params={"a": second["run_id"], "b": third["run_id"]}).json()
    before, after = ({v["variant"]: v for v in r["variants"]} for r in (second, third))
    for row in result["variants"]:
        assert row["AP_change"] == pytest.approx(after[row["variant"]]["bbox"]["AP"] - before[row["variant"]]["bbox"]["AP"], abs=1e-12)
    categories = {row["category"]: row for row in result["per_category_AP_change"]}
    assert set(categories) == set(after["int8"]["per_category_AP"])
    for name, row in categories.items():
        assert row["int8"] == pytest.approx(after["int8"]["per_category_AP"][name] - before["int8"]["per_category_AP"][name], abs=1e-12)
    page = httpx.get(f"{base}/compare", params={"a": second["run_id"], "b": third["run_id"]})
    assert page.status_code == 200 and "Per category" in page.text
    assert httpx.get(f"{base}/compare", params={"a": second["run_id"], "b": "nope"}).status_code == 404


class CountingStore(LocalStore):
    """A local store that counts the objects read."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.reads: list[str] = []

    def read_bytes(self, key: str) -> bytes:
        self.reads.append(key)
        return super().read_bytes(key)


class ListingStore(CountingStore):
    """A local store that also counts its full listings of the runs."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.full_listings = 0

    def versions(self, prefix: str = "") -> dict[str, str]:
        self.full_listings += prefix == "runs"
        return super().versions(prefix)


def test_the_catalog_reads_each_report_once_and_again_only_when_it_changes(nightly_runs, tmp_path):
    runs, source = nightly_runs
    store = CountingStore(_copy(source, tmp_path))
    catalog = Catalog(store, listing_s=0, max_stale_s=0)  # every call lists; the full listing is redone in the background
    assert len(catalog.runs()) == 3 and sorted(store.reads) == sorted(f"runs/{r['run_id']}/report.json" for _, r in runs)
    assert len(catalog.history()) == 12 and len(store.reads) == 6
    store.reads.clear()
    assert [r["run_id"] for r in catalog.runs()] == sorted((r["run_id"] for _, r in runs), reverse=True)
    assert len(catalog.history()) == 12 and store.reads == []
    changed = runs[1][1]["run_id"]
    report = store.root / "runs" / changed / "report.json"
    report.write_text(report.read_text().replace('"compared_with": "', '"compared_with": "x'))
    seen = _first(lambda: [r["compared_with"] for r in catalog.runs() if r["run_id"] == changed][0], lambda v: v.startswith("x"), 20)
    assert seen.startswith("x") and store.reads == [f"runs/{changed}/report.json"]


def test_every_object_is_listed_again_only_when_a_run_appears_or_completes(nightly_runs, tmp_path):
    runs, source = nightly_runs
    store = ListingStore(_copy(source, tmp_path))
    catalog = Catalog(store, listing_s=0)  # run folders and history listed at every call
    catalog.runs()
    catalog.runs()
    assert store.full_listings == 1
    running = "20991231T000000Z-running-0000"
    (store.root / "runs" / running / "detections").mkdir(parents=True)
    (store.root / "runs" / running / "detections" / "int8.json").write_text("[]")
    assert {r["run_id"]: r["status"] for r in catalog.runs()}[running] == "incomplete" and store.full_listings == 2
    shutil.copy(source / "runs" / runs[0][1]["run_id"] / "report.json", store.root / "runs" / running / "report.json")
    (store.root / "runs" / running / "report.json").write_text(
        (store.root / "runs" / running / "report.json").read_text().replace(runs[0][1]["run_id"], running))
    assert {r["run_id"]: r["status"] for r in catalog.runs()}[running] == "incomplete"  # no history object yet: not published
    shutil.copy(source / "history" / f"{runs[0][1]['run_id']}.parquet", store.root / "history" / f"{running}.parquet")
    assert {r["run_id"]: r["status"] for r in catalog.runs()}[running] == "complete" and store.full_listings == 3


def _serve_exit(store: str, env: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "serve", "--store", store, "--port", str(free_port()), *options],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_serve_refuses_to_start_on_a_store_it_cannot_read_or_an_open_address_without_a_token(tmp_path, nightly_runs):
    nowhere = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
               "AWS_DEFAULT_REGION": "us-east-1"}
    unreachable = _serve_exit("s3://quantbench/runs-here", nowhere)
    assert unreachable.returncode == 2 and unreachable.stdout == ""
    assert re.fullmatch(r"error: cannot reach S3 at http://127\.0\.0\.1:\d+ for s3://quantbench/runs-here: \w+ .*\n", unreachable.stderr)
    missing = _serve_exit(str(tmp_path / "no-such-store"), {})
    assert missing.returncode == 2 and missing.stderr == f"error: store {tmp_path / 'no-such-store'} does not exist " \
                                                         "(run a benchmark into it first, or fix --store)\n"
    _, store = nightly_runs
    open_address = _serve_exit(str(store), {"QUANTBENCH_RESULTS_TOKEN": ""}, "--host", "0.0.0.0")
    assert open_address.returncode == 2 and len(open_address.stderr.splitlines()) == 1
    assert "QUANTBENCH_RESULTS_TOKEN" in open_address.stderr and "--allow-anonymous" in open_address.stderr


def test_a_token_guards_every_page_but_the_health_check(nightly_runs):
    _, store = nightly_runs
    token = "t0ken-" + os.urandom(8).hex()
    with serving(str(store), {"QUANTBENCH_RESULTS_TOKEN": token}) as base:
        refused = httpx.get(f"{base}/")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert token not in refused.text
        assert httpx.get(f"{base}/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{base}/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        basic = base64.b64encode(f"anyone:{token}".encode()).decode()
        assert httpx.get(f"{base}/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        assert httpx.get(f"{base}/healthz").text == "ok"


def test_an_s3_store_is_served_like_a_local_one_and_its_outage_is_said(nightly_runs, tmp_path, monkeypatch):
    runs, store = nightly_runs
    (tmp_path / "s3").mkdir()
    s3 = S3Process(tmp_path / "s3")
    try:
        server = s3.start()
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        url = f"s3://{server.bucket}/served"
        _upload(store, url)
        with serving(str(store)) as local_base, serving(url, server.env()) as base:
            listed = httpx.get(f"{base}/api/runs").json()
            local = httpx.get(f"{local_base}/api/runs").json()
            assert listed["store"] == url and listed["runs"] == local["runs"]
            run_id = runs[2][1]["run_id"]
            page = httpx.get(f"{base}/runs/{run_id}")
            assert page.status_code == 200 and len(re.findall(r'src="data:image/', page.text)) >= 5
            assert httpx.get(f"{base}/runs/{run_id}/report.json").content == (store / "runs" / run_id / "report.json").read_bytes()
            for attempt in (f"/runs/{run_id}/..%2F..%2Fhistory%2F{run_id}.parquet", f"/runs/{run_id}/report.html", "/runs/..%2F"):
                assert httpx.get(f"{base}{attempt}").status_code == 404, attempt
            responses = [page, httpx.get(f"{base}/"), httpx.get(f"{base}/models/{runs[2][1]['model']['digest'][:12]}")]
            for response in responses:
                assert server.secret_key not in response.text and server.access_key not in response.text
                assert server.secret_key not in str(response.headers)
            s3.stop()
            # The page in hand may rest on the listing made before the outage; a later one says so.
            down = _first(lambda: httpx.get(f"{base}/", timeout=120), lambda response: response.status_code != 200, tries=10)
            assert down.status_code == 503 and f"the store {url} cannot be read right now" in down.text
            assert httpx.get(f"{base}/api/runs", timeout=120).json()["error"].startswith(f"the store {url} cannot be read right now")
    finally:
        s3.stop()


def _first(fetch, done, tries: int):
    """The first of at most ``tries`` answers (one a second) for which ``done`` holds, else the last."""
    for _ in range(tries):
        answer = fetch()
        if done(answer):
            return answer
        time.sleep(1)
    return answer
