"""The Prefect API a CLI run reports to, made ready while the run's own start-up goes on.

With ``PREFECT_API_URL`` set (a Prefect server), a run uses that server and starts none. Without it,
Prefect starts an ephemeral server (a ``uvicorn`` subprocess over the SQLite database in
``PREFECT_HOME``) when the flow first needs the API, and waits for it (~6-10 s on a 2-core machine;
the first run on a new database also migrates it, ~10 s more). :func:`start_ephemeral_server`
starts that same server (Prefect's ``SubprocessASGIServer``) at once, in a thread, so that its
start-up overlaps the CLI's imports (TensorFlow alone ~5 s) and input checks; the flow then finds
it running. It also starts it without what a server living for one run has no use for
(:data:`ONE_RUN_SERVER_SETTINGS`).

A setting the user has given (environment, ``.env``, ``prefect.toml``, the Prefect profile) always
wins over these; ``QUANTBENCH_FAST_START=0`` keeps Prefect's own defaults and start-up order.
"""
from __future__ import annotations

import logging
import os
import threading
import time

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
    """Prefect's ephemeral server, starting in a thread. :meth:`wait` before the flow runs (the flow
    would otherwise take the half-started server for a running one); :meth:`abandon` where the run
    ends before it (bad input): the server process is stopped instead of outliving the CLI. Either
    takes ``applied`` (the settings put into the environment for the server) out of the environment
    again, so that no server this process starts later (a test's) inherits them."""

    def __init__(self, applied: dict[str, str], timeout: float):
        from prefect.server.api.server import SubprocessASGIServer

        self.server = SubprocessASGIServer()
        self.applied, self.timeout = applied, timeout
        self.ready, self.error = False, None
        self.thread = threading.Thread(target=self._start, name="prefect-ephemeral-server", daemon=True)
        self.held = _HeldRecords(self.thread.name)
        logging.getLogger("prefect").addFilter(self.held)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.server.start(timeout=self.timeout)
        except Exception as error:  # noqa: BLE001 - raised by wait(), in the CLI's thread, as Prefect's own start would be
            self.error = error

    def wait(self) -> None:
        """Block until the server answers, then log Prefect's "Starting temporary server on …" line where
        the run used to (as the flow starts); raise what Prefect's start raised (a time-out, the process died)."""
        self.thread.join()
        self.ready = True
        self._release(replay=True)
        if self.error:
            raise self.error

    def _release(self, replay: bool) -> None:
        logging.getLogger("prefect").removeFilter(self.held)
        for record in self.held.records if replay else []:
            logging.getLogger(record.name).handle(record)
        for name, value in self.applied.items():
            if os.environ.get(name) == value:
                del os.environ[name]

    def abandon(self) -> None:
        """Stop the server unless :meth:`wait` handed it to the run (then it stops at exit, as Prefect's does);
        its log records are dropped."""
        if self.ready:
            return
        deadline = time.monotonic() + 10
        while self.server.server_process is None and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)  # the subprocess is being spawned (milliseconds)
        self.held.thread_name = None  # and Prefect's "Stopping temporary server" line
        self.server.stop()
        self._release(replay=False)


class _HeldRecords(logging.Filter):
    """Holds back the records the server thread logs (a run that ends on bad input prints only its error line)."""

    def __init__(self, thread_name: str):
        super().__init__()
        self.thread_name: str | None = thread_name  # None: every thread's
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.thread_name is not None and record.threadName != self.thread_name:
            return True
        self.records.append(record)
        return False


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
