"""The Prefect UI path as a user meets it, in a real (headless) Chromium: the UI of a real Prefect
server on 127.0.0.1, the `quantbench-process` pool from deployments/work-pools/process.json, the
deployments of deployments/prefect.yaml and one process worker. The user opens the UI, goes to the
`quantbench-benchmark/nightly` deployment, Run → Custom run, fills the `config` form (Image limit,
Results store, Variants, Execution), submits; the run completes on the worker and its Artifacts tab
shows the report table (`quantbench-report`), the markdown summary (`quantbench-summary`) and the
progress artifact (`quantbench-progress`).

Needs Chromium (Debian: `apt-get install -y chromium`) at /usr/bin/chromium
and the `playwright` Python package (no Playwright browser download: the system Chromium is used).
Screenshots go to $QUANTBENCH_TEST_ARTIFACTS, else to the test's tmp dir; their paths are printed.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.prefect_server import PREFECT, REPO, Cluster, free_port
from tests.serve_process import serving

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install playwright==1.65.2; no browser download needed)")

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # --headless: Playwright's headless=True
RUN_TIMEOUT_S = 360  # submit → Completed, polled through the API
UI_TIMEOUT_MS = 30_000  # any one element or navigation in the UI
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Server + process pool + deployments + one worker, as test_distributed sets them up."""
    cluster = Cluster(tmp_path_factory.mktemp("ui-cluster"))
    # Where `quantbench serve` will answer: the run's summary artifact links there (tasks.publish.links).
    cluster.results_port = free_port()
    cluster.env["QUANTBENCH_RESULTS_URL"] = f"http://127.0.0.1:{cluster.results_port}"
    # No scheduled nightly runs: the cron schedule is still registered and shown as active, but the
    # worker only ever picks up the run this test submits (not a full nightly writing to the repo's store).
    cluster.env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"
    try:
        cluster.start_server()
        cluster.run(PREFECT, "work-pool", "create", "quantbench-process", "--type", "process",
                    "--base-job-template", str(REPO / "deployments" / "work-pools" / "process.json"))
        cluster.run(PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(REPO / "deployments" / "prefect.yaml"))
        cluster.start_worker("ui-worker")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def screenshots(tmp_path, capsys):
    """Folder for the PNGs; a function that saves one and prints its path (also without -s)."""
    folder = Path(os.environ.get("QUANTBENCH_TEST_ARTIFACTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def shoot(page, name: str, full_page: bool = True) -> Path:
        path = folder / f"ui-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        with capsys.disabled():
            print(f"\nscreenshot: {path}")
        return path

    return shoot


@pytest.fixture
def page(tmp_path):
    """A fresh headless Chromium profile; requests that leave 127.0.0.1 are blocked and recorded."""
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            blocked: list[str] = []

            def block(route):
                blocked.append(route.request.url)
                route.abort()

            context.route(lambda url: not url.startswith("http://127.0.0.1"), block)
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.set_default_navigation_timeout(60_000)
            page.blocked_requests = blocked  # type: ignore[attr-defined]
            yield page
        finally:
            context.close()


def field(page, title: str):
    """The input area (fieldset) of the form field whose label is `title` (the UI appends " (Optional)")."""
    label = page.locator("label").filter(has_text=re.compile("^" + re.escape(title) + r"( \(Optional\))?$"))
    return label.locator("xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' group ')][1]"
                         ).locator("fieldset").first


def choose_type(fieldset, kind: str) -> None:
    """Nullable fields (`int | None`) show type tabs ("int" / "None", default None): pick `kind`."""
    tab = fieldset.get_by_role("tab", name=kind, exact=True)
    if tab.count():
        tab.click()


def set_variants(page, wanted: list[str]) -> None:
    """Make the Variants multi-select hold exactly `wanted`, whatever it showed at first."""
    variants = field(page, "Variants")
    while variants.get_by_role("button", name=re.compile(r"^Remove .+ tag$")).count():
        variants.get_by_role("button", name=re.compile(r"^Remove .+ tag$")).first.click()
    page.get_by_role("button", name="Select Variants").click()
    for variant in wanted:
        page.get_by_role("option", name=variant, exact=True).click()
    page.keyboard.press("Escape")
    shown = variants.get_by_role("button", name=re.compile(r"^Remove .+ tag$"))
    sync_api.expect(shown).to_have_count(len(wanted))


def select_option(page, title: str, option: str, attempts: int = 3) -> None:
    """Pick `option` in the single-select `title`. Under load the UI can re-render the open list
    while the click lands (the option is "not stable", then detached): as a user would, close it
    and open it again, at most `attempts` times."""
    for attempt in range(attempts):
        page.get_by_role("button", name=f"Select {title}").click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
            return
        except sync_api.TimeoutError:
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")


def flow_run(cluster: Cluster, flow_run_id: str) -> dict:
    return httpx.get(f"{cluster.api}/flow_runs/{flow_run_id}", timeout=10).json()


def wait_until_finished(cluster: Cluster, flow_run_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = flow_run(cluster, flow_run_id)
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(2)
    log = (cluster.root / "ui-worker.log").read_text(errors="replace")[-3000:]
    pytest.fail(f"flow run {flow_run_id} not finished after {RUN_TIMEOUT_S} s (state {run['state_type']}); worker log:\n{log}")


def artifacts_of(cluster: Cluster, flow_run_id: str) -> dict[str, dict]:
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    return {a["key"]: a for a in httpx.post(f"{cluster.api}/artifacts/filter", json=body, timeout=10).json() if a["key"]}


def submit(page, tries: int = 3) -> dict:
    """Click Submit; return the created flow run. Prefect's server on SQLite answers 503 ("Service Unavailable",
    SQLITE_BUSY_SNAPSHOT: its DEFERRED read-then-write transaction lost to a concurrent writer such as the
    worker's poll) and rolls back, so no run exists; Prefect's Python client retries such answers, the UI shows an
    error toast and keeps the form. Like a user, click again: only on 503, at most `tries` times."""
    for attempt in range(1, tries + 1):
        with page.expect_response(lambda r: r.url.endswith("/create_flow_run") and r.request.method == "POST") as created:
            page.get_by_role("button", name="Submit").click()
        response = created.value
        if response.status != 503 or attempt == tries:
            break
        print(f"note: create_flow_run answered 503 ({response.text()}); submitting again ({attempt}/{tries})")
        time.sleep(1)
    assert response.ok, f"{response.status}: {response.text()}"
    return response.json()


def test_a_custom_run_from_the_ui_completes_and_shows_its_report_artifacts(cluster, page, screenshots, tmp_path):
    store = tmp_path / "ui-store"
    started = time.monotonic()
    try:
        # The UI's front page (it redirects to the V2 UI, /v2/dashboard), then the deployment.
        page.goto(f"http://127.0.0.1:{cluster.port}/")
        page.get_by_role("link", name="Deployments").first.click()
        page.get_by_role("link", name="nightly", exact=True).first.click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Custom run").click()

        # The flow's one parameter `config`, rendered as a nested form titled by the pydantic fields.
        for title in ("Variants", "Image limit", "Results store", "Execution", "Fail on regression", "Diagnose variant"):
            sync_api.expect(field(page, title)).to_be_visible()
        limit = field(page, "Image limit")
        choose_type(limit, "int")
        limit.locator("input").fill("8")
        results_store = field(page, "Results store")
        choose_type(results_store, "str")
        results_store.locator("textarea, input[type=text]").first.fill(str(store))
        set_variants(page, ["float32", "int8"])
        select_option(page, "Execution", "local")
        sync_api.expect(page.get_by_role("button", name="Select Execution")).to_have_text("local")
        screenshots(page, "1-form-filled")

        flow_run_id = submit(page)["id"]
        submitted = flow_run(cluster, flow_run_id)["parameters"]["config"]
        assert (submitted["limit"], submitted["store"], submitted["variants"], submitted["execution"]) == (
            8, str(store), ["float32", "int8"], "local"), json.dumps(submitted)

        # The toast's "View run" link, as a user follows it (it shows for a few seconds).
        try:
            page.get_by_role("link", name="View run").click(timeout=10_000)
        except sync_api.TimeoutError:
            print("note: the 'View run' toast was gone; opening the flow run's URL")
            page.goto(f"http://127.0.0.1:{cluster.port}/v2/runs/flow-run/{flow_run_id}")
        page.wait_for_url(re.compile(f"/runs/flow-run/{flow_run_id}"))

        run = wait_until_finished(cluster, flow_run_id)
        assert run["state_type"] == "COMPLETED", (
            f"{run['state_name']}: {run['state']['message']}\n" + (cluster.root / "ui-worker.log").read_text(errors="replace")[-3000:])
        # The run's page (Logs tab, newest first) shows Completed and the flow's log line with the report's URL.
        completed = page.get_by_text("Completed", exact=True).first
        report_line = page.get_by_text(re.compile(r"report: file://.*report\.json")).first

        def newest_logs_first() -> None:
            page.get_by_role("combobox", name="log sort order").click()
            page.get_by_role("option", name="Newest to oldest").click()

        try:  # the open page refreshes the run by itself
            sync_api.expect(completed).to_be_visible(timeout=30_000)
            newest_logs_first()
            sync_api.expect(report_line).to_be_visible(timeout=15_000)
        except AssertionError:
            print("note: the flow run page, open since the run was scheduled, did not show Completed and the run's "
                  "logs by itself; reloading it")
            page.reload()
            sync_api.expect(completed).to_be_visible()
            newest_logs_first()
            sync_api.expect(report_line).to_be_visible()
        screenshots(page, "2-run-completed", full_page=False)

        # What ran is what the form said: 8 demo images, the two variants, locally, into the store.
        [report_path] = store.glob("runs/*/report.json")
        report = json.loads(report_path.read_text())
        assert [v["variant"] for v in report["variants"]] == ["float32", "int8"]
        assert all(v["images"] == 8 for v in report["variants"]) and report["settings"]["execution"] == "local"

        # The Artifacts tab: one card per artifact; the report table opens from its card.
        published = artifacts_of(cluster, flow_run_id)
        assert {"quantbench-report", "quantbench-summary", "quantbench-progress"} <= set(published), sorted(published)
        page.get_by_role("tab", name="Artifacts").click()
        sync_api.expect(page.get_by_text("quantbench-report", exact=True)).to_be_visible()
        sync_api.expect(page.get_by_text("quantbench-summary", exact=True)).to_be_visible()
        screenshots(page, "3-artifacts-tab")

        page.get_by_text("quantbench-report", exact=True).click()
        table = page.get_by_role("tabpanel").locator("table")
        sync_api.expect(table.locator("tbody tr")).to_have_count(2)
        sync_api.expect(table.locator("tbody tr td:first-child")).to_have_text(["float32", "int8"])
        screenshots(page, "4-report-artifact")

        page.go_back()
        page.get_by_text("quantbench-summary", exact=True).click()
        summary = page.get_by_test_id("markdown-display")
        sync_api.expect(summary).to_contain_text(re.compile(r"int8: \d+(\.\d+)?x smaller"))
        sync_api.expect(summary).to_contain_text("run page")
        screenshots(page, "5-summary-artifact")

        # The summary's link opens the run's page on `quantbench serve` (QUANTBENCH_RESULTS_URL), in a browser.
        link = summary.get_by_role("link", name="run page")
        results_url = cluster.env["QUANTBENCH_RESULTS_URL"]
        sync_api.expect(link).to_have_attribute("href", f"{results_url}/runs/{report['run_id']}")
        with serving(str(store), port=cluster.results_port):
            if link.get_attribute("target") == "_blank":
                with page.context.expect_page() as opened:
                    link.click()
                landed = opened.value
            else:
                link.click()
                landed = page
            landed.wait_for_url(f"{results_url}/runs/{report['run_id']}")
            sync_api.expect(landed.locator("h1")).to_have_text(f"quantbench report {report['run_id']}")
            sync_api.expect(landed.locator("table").first).to_contain_text("int8")
            screenshots(landed, "6-run-page-from-the-artifact", full_page=False)
    except Exception:
        screenshots(page, "failure")
        raise
    finally:
        if page.blocked_requests:  # type: ignore[attr-defined]
            hosts = sorted({re.sub(r"^\w+://([^/]+).*", r"\1", url) for url in page.blocked_requests})  # type: ignore[attr-defined]
            print(f"note: the UI tried to reach {', '.join(hosts)} (blocked: this test only talks to 127.0.0.1)")
        print(f"UI path took {time.monotonic() - started:.0f} s")


def _all_images_drawn(page) -> bool:
    return page.evaluate("() => [...document.images].length > 0 && [...document.images].every(i => i.complete && i.naturalWidth > 0)")


def test_the_results_site_lists_runs_opens_one_shows_the_nightly_view_and_compares(nightly_runs, page, screenshots):
    """`quantbench serve` over three nightly runs (the third a regressed checkpoint in the same
    model location), as a user clicks through it: the runs list, a run's page with its plots, the
    model's nightly view (three points per variant, the regression ringed), a point back to its
    run, and two runs compared."""
    runs, store = nightly_runs
    first, second, third = (report for _, report in runs)
    with serving(str(store)) as base:
        try:
            page.goto(f"{base}/")
            rows = page.locator("table#runs tbody tr")
            sync_api.expect(rows).to_have_count(3)
            sync_api.expect(rows.first.locator(".badge.regressions")).to_have_text(f"{len(third['regressions'])} regressions")
            screenshots(page, "serve-1-runs")

            rows.first.locator("a.run").click()
            page.wait_for_url(f"{base}/runs/{third['run_id']}")
            sync_api.expect(page.locator("h1")).to_have_text(f"quantbench report {third['run_id']}")
            plots = page.locator("figure img")
            assert plots.count() >= 5
            assert _all_images_drawn(page), "a plot of the run's page did not load"
            screenshots(page, "serve-2-run", full_page=False)

            page.locator("a#nightly").click()
            page.wait_for_url(re.compile(f"{base}/models/[0-9a-f]+$"))
            ap_chart = page.locator("svg.chart").first
            for variant in ("saved_model", "float32", "float16", "int8"):
                sync_api.expect(ap_chart.locator(f'a.point[data-series="{variant}"]')).to_have_count(3)
            regressed = ap_chart.locator("a.point.regressed")
            ap_drops = [r for r in third["regressions"] if r["metric"] == "AP"]
            sync_api.expect(regressed).to_have_count(len(ap_drops))
            assert {regressed.nth(i).get_attribute("data-run") for i in range(regressed.count())} == {third["run_id"]}
            screenshots(page, "serve-3-nightly")

            ap_chart.locator(f'a.point[data-run="{first["run_id"]}"]').last.click()  # the topmost of the run's points
            page.wait_for_url(f"{base}/runs/{first['run_id']}")
            page.go_back()
            page.goto(f"{base}/runs/{third['run_id']}")
            page.locator("a#compare").click()
            page.wait_for_url(re.compile(f"{base}/compare\\?a={second['run_id']}&b={third['run_id']}$"))
            sync_api.expect(page.locator("table#variants tbody tr")).to_have_count(4)
            sync_api.expect(page.locator("table#categories tbody tr")).to_have_count(len(third["variants"][0]["per_category_AP"]))
            screenshots(page, "serve-4-compare")
            assert not page.blocked_requests  # type: ignore[attr-defined]  # nothing loaded from elsewhere
        except Exception:
            screenshots(page, "serve-failure")
            raise
