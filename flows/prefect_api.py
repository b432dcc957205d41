"""The Prefect API a CLI run reports to, made ready while the run's own start-up goes on.

With ``PREFECT_API_URL`` set (a Prefect server), a run uses that server and starts none. Without it,
Prefect starts an ephemeral server (a ``uvicorn`` subprocess over the SQLite database in
``PREFECT_HOME``) when the flow first needs the API, and waits for it (~6-10 s on a 2-core machine;
the first run on a new database also migrates it, ~10 s more). :func:`start_ephemeral_server`
spawns that same server process (Prefect's ``SubprocessASGIServer``) at once, so that its start-up
overlaps the CLI's imports (TensorFlow alone ~3-5 s) and input checks; the flow then finds it
running. It also starts it without what a server living for one run has no use for
(:data:`ONE_RUN_SERVER_SETTINGS`).

A setting the user has given (environment, ``.env``, ``prefect.toml``, the Prefect profile) always
wins over these; ``QUANTBENCH_FAST_START=0`` keeps Prefect's own defaults and start-up order.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import time

import httpx

FAST_START_ENV = "QUANTBENCH_FAST_START"
# Seconds the early server may take to answer, unless PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS is set (Prefect's
# default, 20 s, is short for a start that shares the CPU with the CLI's own: ~12-17 s seen on a loaded 2-core machine).
STARTUP_TIMEOUT_S = 60

# Prefect setting -> (where it lives in prefect.settings.Settings, value for a server that lives for one run).
ONE_RUN_SERVER_SETTINGS = {
    # Automations (reactive and proactive triggers, their actions): quantbench installs its automations only on
    # a server in PREFECT_API_URL (`quantbench alerts install`); the ephemeral server stops with the run.
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": ("server.services.triggers.enabled", "false"),
    # Registering Prefect's block types in the database: each start imports every installed Prefect
    # collection (prefect-dask with distributed, prefect-docker with docker) to hash their blocks, ~1 s.
    # A run saves no block; Block.save registers its own type where one ever is saved.
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": ("server.register_blocks_on_start", "false"),
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": ("server.memoize_block_auto_registration", "false"),
}


def fast_start_enabled() -> bool:
    """False where ``QUANTBENCH_FAST_START=0`` (Prefect's defaults and start-up order, e.g. to compare)."""
    return os.environ.get(FAST_START_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def user_has_set(settings, path: str) -> bool:
    """Whether ``path`` (``server.services.triggers.enabled``) of a ``prefect.settings.Settings`` came from
    a source the user controls (environment, .env, prefect.toml, pyproject.toml, profile), not a default."""
    *parents, field = path.split(".")
    for name in parents:
        settings = getattr(settings, name)
    return field in settings.model_fields_set


def apply_one_run_server_settings(settings) -> dict[str, str]:
    """Put each of :data:`ONE_RUN_SERVER_SETTINGS` the user has not set into the environment (the
    server subprocess copies it when it is spawned); return those applied."""
    applied = {name: value for name, (path, value) in ONE_RUN_SERVER_SETTINGS.items() if not user_has_set(settings, path)}
    os.environ.update(applied)
    return applied


class EphemeralServerStart:
    """Prefect's ephemeral server process, spawned at once as Prefect spawns it (``SubprocessASGIServer``'s command,
    Prefect 3.9); :meth:`wait` for it to answer before the flow runs (in the CLI's thread, once the CLI's own start-up is
    done: a thread polling the server meanwhile competes with the imports for the GIL, measured slower on a loaded
    machine); :meth:`abandon` where the run ends before (bad input): the process is stopped instead of outliving the CLI.
    The settings put into the environment for the server are taken out again once it is spawned, so that no server
    this process starts later (a test's) inherits them."""

    def __init__(self, applied: dict[str, str], timeout: float):
        from prefect.server.api.server import SubprocessASGIServer

        self.server, self.timeout = SubprocessASGIServer(), timeout
        self.ready = self.server.running  # an earlier run in this process started it
        if not self.ready:
            self.server.port = self.server.find_available_port()
            self.server.server_process = self.server._run_uvicorn_command()  # Prefect's spawn, without start()'s wait
        for name, value in applied.items():
            if os.environ.get(name) == value:
                del os.environ[name]

    def wait(self) -> None:
        """Block until the server answers; then the flow finds it running. Where the process ended (its port was
        taken meanwhile), Prefect starts one when the flow needs the API; a server silent for ``timeout`` s is an error."""
        if self.ready:
            return
        self.ready = True
        process, deadline = self.server.server_process, time.monotonic() + self.timeout
        with httpx.Client() as client:
            while process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.server.api_url}/health", timeout=5).status_code == 200:
                        self.server.running = True
                        atexit.register(self.server.stop)
                        logging.getLogger("prefect").info("Starting temporary server on %s", self.server.address)
                        return
                time.sleep(0.1)
        timed_out = process.poll() is None
        self.server.stop()
        if timed_out:
            raise RuntimeError(f"the ephemeral Prefect server did not answer within {self.timeout} s "
                               "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def abandon(self) -> None:
        """Stop the server unless :meth:`wait` handed it to the run (then it stops at exit, as Prefect's does)."""
        if self.ready:
            return
        prefect_logger = logging.getLogger("prefect")
        level = prefect_logger.level
        prefect_logger.setLevel(logging.WARNING)  # no "Stopping temporary server" line for a server the user never saw start
        try:
            self.server.stop()
        finally:
            prefect_logger.setLevel(level)


def start_ephemeral_server() -> EphemeralServerStart | None:
    """Start the ephemeral server now, unless the run has a Prefect API (``PREFECT_API_URL``), ephemeral
    mode is off (``PREFECT_SERVER_EPHEMERAL_ENABLED``) or ``QUANTBENCH_FAST_START=0``: then ``None``."""
    if not fast_start_enabled():
        return None
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    timeout = settings.server.ephemeral.startup_timeout_seconds
    if not user_has_set(settings, "server.ephemeral.startup_timeout_seconds"):
        timeout = max(timeout, STARTUP_TIMEOUT_S)
    return EphemeralServerStart(apply_one_run_server_settings(settings), timeout)
