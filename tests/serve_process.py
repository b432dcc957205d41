"""``quantbench serve`` as a user starts it: a real process on 127.0.0.1, stopped at the end."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.prefect_server import REPO, free_port

START_SECONDS = 60


@contextlib.contextmanager
def serving(store: str, env: dict[str, str] | None = None, *options: str, port: int | None = None):
    """Yield the base URL (``http://127.0.0.1:<port>``) of ``quantbench serve --store <store>`` (on
    ``port``, else a free one)."""
    port = port or free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"quantbench-serve-{port}.log"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--store", store, "--port", str(port), *options],
                                   cwd=REPO, env={**os.environ, **(env or {})}, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited with {process.returncode}: {log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not answer within {START_SECONDS} s: {log.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
