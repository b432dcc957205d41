"""Shared fixtures: an isolated Prefect backend, oracle models, the shared COCO sample, S3, the images."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.oracle import build_oracle_model, oracle_tables, write_oracle_dataset
from tests.s3server import running_s3_server

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = Path(os.environ.get("QUANTBENCH_COCO_MINI", REPO.parent / "shared" / "coco-mini"))
# Different, non-square sizes: portrait, landscape, extreme aspect ratios, one square.
ORACLE_SIZES = [(200, 120), (97, 310), (640, 480), (333, 222), (128, 128), (500, 77), (61, 45), (300, 451)]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the demo dataset and downloads out of the user's ~/.cache."""
    os.environ["QUANTBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def prefect_backend():
    """A throw-away Prefect API (temporary database) for flows run in this process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def oracle_data(tmp_path_factory) -> Path:
    """Annotations JSON of the oracle dataset (PNG images beside it)."""
    return write_oracle_dataset(tmp_path_factory.mktemp("oracle-data"), ORACLE_SIZES)


@pytest.fixture(scope="session")
def oracle_models(tmp_path_factory, oracle_data) -> dict[str, Path]:
    """Two oracle SavedModels: fixed non-square input (96x160) and dynamic [1, None, None, 3]."""
    root = tmp_path_factory.mktemp("oracle-models")
    tables = oracle_tables(oracle_data)
    return {
        "fixed": build_oracle_model(root / "fixed", tables, (96, 160)),
        "dynamic": build_oracle_model(root / "dynamic", tables, None),
    }


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    if not (COCO_MINI / "instances_train2017_subset.json").is_file():
        pytest.skip(f"the shared COCO sample is not at {COCO_MINI} (set QUANTBENCH_COCO_MINI)")
    return COCO_MINI


DEFAULT_VARIANTS = ["saved_model", "float32", "float16", "int8"]
NIGHTLY_SETTINGS = ["--limit", "100", "--latency-images", "20"]


def report_of_output(output: str) -> dict:
    """The report.json of the run whose CLI output this is (its last ``report: <url>`` line)."""
    from tasks.store.object_store import split_url

    line = next(line for line in reversed(output.splitlines()) if line.startswith("report: "))
    store, key = split_url(line.removeprefix("report: "))
    return store.read_json(key)


@pytest.fixture(scope="session")
def nightly_runs(prefect_backend, tmp_path_factory):
    """Three nightly runs of one model location into one store: the demo model, the same again, then
    a regressed checkpoint (the demo model with its boxes shifted by 0.02) exported into the same
    location, with --fail-on-regression. ``([(exit status, report.json dict)] * 3, store folder)``."""
    import contextlib
    import io
    import shutil

    from demo import DEMO_MODEL_DIR
    from flows.cli import main
    from tests.regressed import build_shifted_model

    root = tmp_path_factory.mktemp("nightly")
    store, location = root / "store", root / "model"
    shifted = build_shifted_model(DEMO_MODEL_DIR, root / "shifted-checkpoint", shift=0.02)
    shutil.copytree(DEMO_MODEL_DIR, location)
    runs = []
    for night, extra in enumerate(([], [], ["--fail-on-regression"])):
        if night == 2:
            shutil.rmtree(location)
            shutil.copytree(shifted, location)
        arguments = ["run", "--store", str(store), "--model", str(location), *NIGHTLY_SETTINGS, *extra]
        with contextlib.redirect_stdout(io.StringIO()) as stdout:
            status = main(arguments)
        runs.append((status, report_of_output(stdout.getvalue())))
    return runs, store


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on 127.0.0.1 for the whole test session."""
    with running_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def container_images() -> str:
    """quantbench:slim, quantbench:full and quantbench:s3, built once per session (``make images``;
    layers cached by the engine). Skipped, with the reason, where no Docker engine answers."""
    from tests import docker_engine

    problem = docker_engine.engine_problem()
    if problem:
        pytest.skip(problem)
    try:
        yield docker_engine.build_images()
    finally:
        docker_engine.remove_containers()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The server's endpoint and credentials in the environment, as a user would set them."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server
