"""Command line: ``quantbench run [options]``; with no options it benchmarks the embedded demo.
``quantbench alerts install`` sets up regression notifications on the Prefect server (the webhook URL
from ``$QUANTBENCH_WEBHOOK_URL``, or from stdin with ``--webhook-url -``: never from the arguments);
``quantbench crash-detection install`` the automation that finds dead shard workers in minutes.
``quantbench results list|show|fetch|history`` browses the runs in a store (``tasks.publish.results``,
``tasks.publish.history``). ``quantbench digest --model X`` prints a model's digest, the value
``run --model-sha256`` pins it to.

``run`` and ``diagnose`` report to the Prefect server in ``PREFECT_API_URL`` when it is set; otherwise
they start Prefect's ephemeral server at once, while the CLI imports and checks its inputs, and without
automations or block registration (``flows.prefect_api``: a Prefect setting the user has set, in the
environment or the profile, always wins; ``QUANTBENCH_FAST_START=0`` keeps Prefect's own way).

Bad input ends with one line ``error: …`` on stderr and exit status 2; any other failure (an
outage that outlasted the retries, a bug) with one ``error: …`` line and exit status 1. Python
tracebacks stay in the Prefect flow-run log; ``--verbose`` shows them on the terminal too.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import re
import sys
import threading
from pathlib import Path

# Offline runs must not log "Failed to send telemetry": no usage analytics from the ephemeral server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pydantic import ValidationError

from flows.prefect_api import start_ephemeral_server
from tasks.store.errors import QuantbenchError, TransientError
from tasks.score.evaluation import EVAL_BACKENDS
from tasks.model.spec import HEADS, ModelSpec, heads_text, load_spec_file, parse_spec
from tasks.model.conversion import DIAGNOSABLE_VARIANTS
from tasks.model.variants import DEFAULT_VARIANTS, VARIANTS

WEBHOOK_URL_ENV = "QUANTBENCH_WEBHOOK_URL"
TOKEN_ENV = "QUANTBENCH_RESULTS_TOKEN"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantbench", description="What does LiteRT quantization do to my object detector?")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="benchmark a detector's variants on a COCO dataset (default: the embedded demo)")
    run.add_argument("--model", help="SavedModel dir (TF OD API signature), float .tflite, zoo .tar.gz (path or URL), "
                     "s3://bucket/prefix, kaggle:OWNER/MODEL/FRAMEWORK/VARIATION/VERSION or a tfhub.dev handle")
    run.add_argument("--model-sha256", metavar="HEX", help="pin the model: its digest ('quantbench digest --model X', report.json's "
                     "model.digest) must be this, checked before the model is cached, loaded or converted; required for an http:// model")
    run.add_argument("--annotations", help="COCO instances JSON (path or s3:// URL)")
    run.add_argument("--images", help="image folder (path or s3:// prefix)")
    run.add_argument("--variants", nargs="+", choices=VARIANTS, help=f"default: {' '.join(DEFAULT_VARIANTS)}")
    run.add_argument("--shard-size", type=int, help="images per inference task (default 50)")
    run.add_argument("--workers", type=int, help="inference tasks in parallel (default 2)")
    run.add_argument("--threads", type=int, help="CPU threads per interpreter (default 1)")
    run.add_argument("--limit", type=int, help="only the first N images by id")
    run.add_argument("--store", help="results store: folder, file:///path or s3://bucket/prefix (default ./quantbench-results)")
    run.add_argument("--latency-images", type=int, help="timed invocations per variant (default 50)")
    run.add_argument("--min-score", type=float, help="drop detections below this score (default 0)")
    run.add_argument("--head", choices=("auto", *HEADS), help="how the model's outputs become detections (default auto: "
                     "decided from its outputs where unambiguous); 'quantbench heads' lists the heads and their defaults")
    run.add_argument("--spec", metavar="FILE.yaml", help="the model spec (head, input.*, postprocess.*): any field; --head and --class-ids override it")
    run.add_argument("--class-ids", choices=("category_id", "index0", "labelmap90"),
                     help="what the model's classes are (postprocess.classes): the dataset's category ids, 0-based indices into "
                     "its sorted category ids, or 0-based over COCO's 90-entry label map (default: the head's)")
    run.add_argument("--calibration-images", help="folder of images disjoint from the evaluation set (int8_full, int16x8)")
    run.add_argument("--calibration-count", type=int, help="calibration images used (default 32)")
    run.add_argument("--bootstrap-resamples", type=int, help="paired bootstrap resamples for ΔAP CIs and regression significance (default 200)")
    run.add_argument("--eval-backend", choices=EVAL_BACKENDS,
                     help="COCO evaluation: pycocotools (default, the reference) or faster-coco-eval (pip install 'quantbench[fast-eval]')")
    run.add_argument("--grid-intensity", metavar="CODE|G_PER_KWH",
                     help="grid carbon intensity for gCO2e per image: ISO country code (FRA, DEU, USA …) or gCO2e/kWh (default: world average, 475)")
    run.add_argument("--fail-on-regression", action="store_true", default=None,
                     help="exit with status 3 (report still published) when the run regressed against the previous comparable run")
    run.add_argument("--diagnose", metavar="VARIANT", choices=DIAGNOSABLE_VARIANTS,
                     help=f"which op of this quantized variant ({', '.join(DIAGNOSABLE_VARIANTS)}) loses AP: per-op numeric error, "
                     "the top ops each kept float and scored, "
                     "and the recovered recipe VARIANT+float_k benchmarked in this run (report.json 'diagnosis', a section of report.html)")
    run.add_argument("--diagnose-ops", type=int, help="with --diagnose: ops swept, those adding the most numeric error (default 10)")
    run.add_argument("--diagnose-images", type=int, help="with --diagnose: evaluation images each op is scored on, the first N by id (default 100)")
    run.add_argument("--verbose", action="store_true", help="show Python tracebacks on the terminal (they are always in the flow-run log)")
    run.add_argument("--quiet", action="store_true", help="no progress and no Prefect log lines: only the table and the result lines")
    diagnose = commands.add_parser("diagnose", help="which op of a quantized variant loses AP: per-op numeric error vs float32, "
                                   "then the top ops each kept float and scored (AP recovered, paired bootstrap CI)")
    diagnose.add_argument("--variant", dest="diagnose", choices=DIAGNOSABLE_VARIANTS, help="the variant to diagnose (default dynamic_wi8_afp32)")
    diagnose.add_argument("--diagnose-ops", type=int, help="ops kept float and scored, those adding the most numeric error (default 10)")
    diagnose.add_argument("--diagnose-images", type=int, help="evaluation images each is scored on, the first N by id (default 100)")
    diagnose.add_argument("--pseudo-ap", action="store_true", default=None,
                          help="score against float32's detections (score >= 0.5) instead of the annotations")
    for option in ("--model", "--model-sha256", "--annotations", "--images", "--store", "--calibration-images", "--spec"):
        diagnose.add_argument(option, help=f"as for run {option}")
    for option in ("--workers", "--threads", "--calibration-count", "--bootstrap-resamples"):
        diagnose.add_argument(option, type=int, help=f"as for run {option}")
    diagnose.add_argument("--min-score", type=float, help="as for run --min-score")
    diagnose.add_argument("--eval-backend", choices=EVAL_BACKENDS, help="as for run --eval-backend (faster-coco-eval: ~8x faster scoring per op)")
    diagnose.add_argument("--head", choices=("auto", *HEADS), help="as for run --head")
    diagnose.add_argument("--class-ids", choices=("category_id", "index0", "labelmap90"), help="as for run --class-ids")
    diagnose.add_argument("--verbose", action="store_true", help="show Python tracebacks on the terminal")
    commands.add_parser("heads", help="list the model heads: the detectors each reads, their input conventions and postprocessing defaults")
    digest = commands.add_parser("digest", help="fetch a model as run does and print its SHA-256 digest (the value for --model-sha256), "
                                 "without loading it")
    digest.add_argument("--model", required=True, help="any --model source of run")
    _results_parser(commands)
    serve = commands.add_parser("serve", help="a read-only web site over a store's runs: the runs list, each run's page, "
                                "the nightly view of a model, two runs compared, JSON under /api")
    serve.add_argument("--store", help="results store: folder, file:///path or s3://bucket/prefix (default: as for run)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8600, help="port (default 8600)")
    serve.add_argument("--allow-anonymous", action="store_true", help=f"listen on a non-loopback address without ${TOKEN_ENV} "
                       "(anyone who reaches the port reads every result)")
    alerts = commands.add_parser("alerts", help="regression alerts through the Prefect server in PREFECT_API_URL")
    alert_actions = alerts.add_subparsers(dest="action", required=True)
    install = alert_actions.add_parser("install", help="create the webhook block and the regression automation "
                                       "(deployments/automations/regression-alert.yaml); rerunning replaces both")
    install.add_argument("--webhook-url", metavar="-", help="'-': read the URL where each regression notification is POSTed "
                         f"(JSON subject and body) from stdin's first line; default: ${WEBHOOK_URL_ENV}. Never the URL itself "
                         "(the arguments are visible in ps and the shell history)")
    crash = commands.add_parser("crash-detection", help="dead-worker detection through the Prefect server in PREFECT_API_URL")
    crash.add_subparsers(dest="action", required=True).add_parser(
        "install", help="create the automation that marks shard flow runs Crashed when their heartbeats stop "
                        "(deployments/automations/crash-silent-shards.yaml); rerunning replaces it")
    return parser


def _results_parser(commands) -> None:
    results = commands.add_parser("results", help="list the runs in a store, show one's report, fetch one's files")
    actions = results.add_subparsers(dest="action", required=True)
    store_help = "results store: folder, file:///path or s3://bucket/prefix (default: as for run, $QUANTBENCH_STORE or ./quantbench-results)"
    listing = actions.add_parser("list", help="runs in the store, newest first, with each variant's bbox AP")
    listing.add_argument("--store", help=store_help)
    show = actions.add_parser("show", help="a run's report table (RUN: run id or a unique prefix)")
    show.add_argument("run", metavar="RUN", help="run id, or a unique prefix of one")
    show.add_argument("--store", help=store_help)
    show.add_argument("--json", action="store_true", help="print report.json as stored")
    show.add_argument("--html", metavar="DEST", help="write the run's self-contained HTML page, rendered again from its report.json, to DEST "
                      "(a file, or a folder: DEST/<run id>.html)")
    fetch = actions.add_parser("fetch", help="download a run's report files and detections into DEST")
    fetch.add_argument("run", metavar="RUN", help="run id, or a unique prefix of one")
    fetch.add_argument("dest", metavar="DEST", help="local folder: gets report.json, report.csv, report.md, detections/<variant>.json")
    fetch.add_argument("--store", help=store_help)
    history = actions.add_parser("history", help="the run history: one row per run and variant, newest last")
    history.add_argument("--store", help=store_help)
    history.add_argument("--model", help="only runs whose model source contains TEXT (or whose digest starts with it)")
    history.add_argument("--variant", metavar="VARIANT", help="only this variant, named as in the report (e.g. int8, dynamic_wi8_afp32+float_1)")
    history.add_argument("--csv", action="store_true", help="print every column as CSV (for pandas or a spreadsheet)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "results":
        return _results(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "alerts":
        return _install(_install_alert, args.webhook_url)
    if args.command == "crash-detection":
        return _install(_install_crash_detection)
    if args.command == "heads":
        print(heads_text())
        return 0
    if args.command == "digest":
        return _digest(args.model)
    if args.command == "diagnose":
        return _diagnose(args)
    if args.quiet:
        with _native_chatter_off_the_terminal():
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    """``quantbench run``: validate, run the benchmark flow, print the table and the report's URL."""
    try:
        options = _flow_options(args)
    except QuantbenchError as error:
        return _fail(args, str(error), 2)
    if args.quiet:
        from prefect.logging.configuration import setup_logging

        setup_logging()
        logging.getLogger("prefect").setLevel(logging.WARNING)
    server = start_ephemeral_server()
    try:
        from flows.benchmark import BenchmarkConfig, benchmark, validate
        from tasks.nightly.regression import RegressionsFound, describe

        config = BenchmarkConfig(**options)
        validate(config)
        if server:
            server.wait()
        url = benchmark(config)
    except ValidationError as error:
        return _invalid_option(error)
    except RegressionsFound as error:  # the report is published: show it, then say what regressed
        _print_published(error.report_url)
        return _fail(args, f"regressions: {describe(error.regressions)}", 3)
    except TransientError as error:  # the retries are spent: the store is still out
        return _fail(args, f"{error}; the run failed and published no report, rerun when it is back (stored shards are reused)", 1)
    except QuantbenchError as error:
        return _fail(args, str(error), 2)
    except Exception as error:  # noqa: BLE001 - one line on the terminal, the traceback is in the flow-run log
        return _fail(args, f"{type(error).__name__}: {error}", 1)
    finally:
        if server:
            server.abandon()
    logging.getLogger("prefect").setLevel(logging.WARNING)  # keep the report line last (no shutdown chatter)
    _print_published(url)
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    """``quantbench diagnose``: run the diagnosis flow and print its table (:mod:`flows.diagnose`)."""
    try:
        options = _flow_options(args)
    except QuantbenchError as error:
        return _fail(args, str(error), 2)
    server = start_ephemeral_server()
    try:
        from flows.diagnose import DiagnoseConfig, diagnose
        from tasks.publish.diagnosis import diagnosis_text

        config = DiagnoseConfig(**options)
        if server:
            server.wait()
        result = diagnose(config)
    except ValidationError as error:
        return _invalid_option(error)
    except QuantbenchError as error:
        return _fail(args, str(error), 2)
    except Exception as error:  # noqa: BLE001 - one line on the terminal, the traceback is in the flow-run log
        return _fail(args, f"{type(error).__name__}: {error}", 1)
    finally:
        if server:
            server.abandon()
    logging.getLogger("prefect").setLevel(logging.WARNING)
    print(diagnosis_text(result.report))
    return 0


def _flow_options(args: argparse.Namespace) -> dict:
    """The flow config's fields from the command line (options not given left to the config's
    defaults; ``spec`` built from --spec/--head/--class-ids); tracebacks off the terminal unless
    --verbose. QuantbenchError for a bad spec."""
    cli_only = ("command", "verbose", "quiet", "head", "spec", "class_ids")
    options = {k: v for k, v in vars(args).items() if k not in cli_only and v is not None}
    options["spec"] = _spec(args)
    if not args.verbose:
        _tracebacks_off_the_terminal()
    return options


def _invalid_option(error: ValidationError) -> int:
    """One line naming the first invalid option as the command line spells it; exit status 2."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "options"
    print(f"error: --{where.replace('_', '-')}: {first['msg']}", file=sys.stderr)
    return 2


def _digest(source: str) -> int:
    """``quantbench digest --model X``: the model's digest and where it came from, as run resolves it (nothing loaded)."""
    from tasks.model.sources import resolve_model
    from tasks.store.object_store import cache_dir

    try:
        model = resolve_model(source, cache_dir())
    except QuantbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{model.digest}  {model.kind} {model.path}")
    return 0


def _print_published(report_url: str) -> None:
    """The report table, then the page a browser opens (``page:``, with ``QUANTBENCH_RESULTS_URL`` or an S3
    store; see :mod:`tasks.publish.links`) and when its link expires, then where the HTML page and
    report.json are in the store (``report:`` last: scripts read it)."""
    from tasks.publish.links import run_links
    from tasks.publish.presentation import html_url

    print(_table(report_url))
    links = run_links(report_url)
    if links.page:
        print(f"page: {links.page}")
    if links.expiry:
        print(links.expiry)
    print(f"html: {html_url(report_url)}")
    print(f"report: {report_url}")


def _install(installer, *args) -> int:
    """Run one automation installer: its line on success, one ``error:`` line and status 2 otherwise."""
    try:
        print(installer(*args))
    except QuantbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _install_alert(webhook_option: str | None) -> str:
    from tasks.nightly.alerts import install_regression_alert, webhook_origin

    webhook_url = _webhook_url(webhook_option)
    block_id, automation_id = install_regression_alert(webhook_url)
    return (f"regression alert installed: automation {automation_id} notifies webhook block {block_id}, "
            f"which POSTs to {webhook_origin(webhook_url)} (the full URL is kept as a secret of the block)")


def _webhook_url(webhook_option: str | None) -> str:
    """The webhook URL: stdin's first line for ``--webhook-url -``, else ``$QUANTBENCH_WEBHOOK_URL``.
    A URL given as the option's value is refused (the arguments are visible in ps and the shell
    history), without repeating it."""
    if webhook_option is None:
        url = os.environ.get(WEBHOOK_URL_ENV, "").strip()
        if not url:
            raise QuantbenchError(f"no webhook URL: set {WEBHOOK_URL_ENV}, or pass --webhook-url - with the URL on stdin")
        return url
    if webhook_option != "-":
        raise QuantbenchError(f"--webhook-url takes only '-' (read the URL from stdin), not the URL: the arguments are visible "
                              f"in ps and the shell history; set {WEBHOOK_URL_ENV}, or run "
                              "'quantbench alerts install --webhook-url - < url.txt'")
    url = sys.stdin.readline().strip()
    if not url:
        raise QuantbenchError("--webhook-url -: stdin's first line holds no URL")
    return url


def _install_crash_detection() -> str:
    from tasks.nightly.alerts import install_crash_detection

    return f"crash detection installed: automation {install_crash_detection()} marks shard flow runs silent for 90 s Crashed"


def _fail(args: argparse.Namespace, message: str, status: int) -> int:
    logging.getLogger("prefect").setLevel(logging.WARNING)  # keep the error line last (no shutdown chatter)
    if args.verbose:
        import traceback

        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return status


class _WithoutTraceback(logging.Formatter):
    """Formats a record as ``inner`` does, without its traceback (the record itself is untouched,
    so the Prefect API handler still sends the full traceback to the flow-run log)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        bare = copy.copy(record)
        bare.exc_info, bare.exc_text, bare.stack_info = None, None, None
        return self.inner.format(bare)


def _tracebacks_off_the_terminal() -> None:
    """Keep Python tracebacks out of Prefect's console output (one line per error on the terminal)."""
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _WithoutTraceback):
                handler.setFormatter(_WithoutTraceback(handler.formatter))


def _spec(args: argparse.Namespace) -> ModelSpec:
    """The model spec from ``--spec FILE`` (else empty), with ``--head`` and ``--class-ids`` on top."""
    spec = load_spec_file(args.spec) if args.spec else ModelSpec()
    document = spec.model_dump(exclude_none=True)
    if args.head:
        document["head"] = args.head
    if args.class_ids:
        document.setdefault("postprocess", {})["classes"] = args.class_ids
    return parse_spec(document, f"spec file {args.spec}" if args.spec else "--head/--class-ids")


# Lines native libraries write straight to file descriptor 2, past Python's logging: LiteRT's
# "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", and absl's INFO/WARNING lines of the
# TensorFlow converter ("W0000 00:00:1796456207.249849    4961 tf_tfl_flatbuffer_helpers.cc:365] ...").
NATIVE_CHATTER = re.compile(rb"(INFO: |fully_quantize: \d|WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] )")


@contextlib.contextmanager
def _native_chatter_off_the_terminal():
    """For ``--quiet``: stderr passes through a pipe that drops :data:`NATIVE_CHATTER` lines and
    forwards everything else (error lines included) as it comes. Neither LiteRT nor TensorFlow's
    Python API offers a switch for these lines (TFLite's minimum log severity is set in C++ only)."""
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not NATIVE_CHATTER.match(line):
                    os.write(terminal, line)

    forwarder = threading.Thread(target=forward, name="quiet-stderr", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # the pipe ends once no process holds it (a Prefect server child may, until it exits)
        forwarder.join(timeout=2)
        if not forwarder.is_alive():
            os.close(terminal)


def _results(args: argparse.Namespace) -> int:
    """``quantbench results list|show|fetch``: read-only over the store, except fetch's DEST."""
    from tasks.publish import results
    from tasks.store.object_store import open_store

    def show(text: str, **options) -> None:  # what the store holds is shown, never acted on by the terminal
        print(results.terminal_text(str(text)), **options)

    try:
        if args.store is None:
            from flows.benchmark import default_store

            args.store = default_store()
        store = open_store(args.store)
        if args.action == "list":
            show(results.list_text(store))
            return 0
        if args.action == "history":
            from tasks.publish.history import history_table_text, read_history

            frame = read_history(store, args.model, args.variant)
            show(frame.to_csv(index=False).rstrip("\n") if args.csv else history_table_text(frame, store.url_for("history")))
            return 0
        run_id = results.resolve_run(store, args.run)
        if args.action == "show" and args.html:
            show(f"wrote {results.write_html(store, run_id, Path(args.html))}")
            return 0
        if args.action == "show":
            show(results.report_json_text(store, run_id) if args.json else results.show_text(store, run_id))
            return 0
        written = results.fetch_run(store, run_id, Path(args.dest), lambda path, size: show(f"wrote {path} ({size:,} bytes)"))
    except QuantbenchError as error:
        show(f"error: {error}", file=sys.stderr)
        return 2
    show(f"fetched run {run_id} from {store.url} into {Path(args.dest).resolve()}: {len(written)} files")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """``quantbench serve``: check the store and the address, then serve until interrupted."""
    import ipaddress
    import socket

    from tasks.store.object_store import open_store

    token = os.environ.get(TOKEN_ENV) or None
    try:
        if args.store is None:
            from flows.benchmark import default_store

            args.store = default_store()
        store = open_store(args.store)
        store.check_readable()
        try:
            loopback = ipaddress.ip_address(args.host).is_loopback
        except ValueError:
            loopback = args.host == "localhost"
        if not loopback and token is None and not args.allow_anonymous:
            raise QuantbenchError(f"serve: listening on {args.host} would show every result to whoever reaches it: set ${TOKEN_ENV} "
                                  "(a secret clients send as Bearer token or Basic password), or pass --allow-anonymous")
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((args.host, args.port))
        except OSError as error:
            listener.close()
            raise QuantbenchError(f"serve: cannot listen on {args.host}:{args.port}: {error.strerror or error}") from None
    except QuantbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import uvicorn

    from tasks.browse.app import create_app

    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"serving {store.url} at http://{host}:{listener.getsockname()[1]}/{' (token required)' if token else ''}; Ctrl-C stops",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(store, token), log_level="warning", access_log=False))
    server.run(sockets=[listener])
    return 0


def _table(report_url: str) -> str:
    """The report's table, and its diagnosis summary line when it has one."""
    from tasks.publish.report import format_table, report_table
    from tasks.store.object_store import split_url

    store, key = split_url(report_url)
    report = store.read_json(key)
    diagnosis = f"\ndiagnosis: {report['diagnosis']['summary']}" if "diagnosis" in report else ""
    return format_table(report_table(report)) + diagnosis


if __name__ == "__main__":
    sys.exit(main())
