"""The results site as an ASGI application (Starlette, which Prefect already brings), read-only.

Routes (``/api/…`` mirror the pages as JSON for scripts):

- ``GET /`` runs, newest first; ``?model=<source or digest prefix>&dataset=<digest prefix>``; ``/api/runs``
- ``GET /runs/<run id>`` the run's page, rendered again from report.json; ``/api/runs/<run id>`` its report.json
- ``GET /runs/<run id>/<file>`` report.json, report.csv, report.md, ``detections/<variant>.json`` (downloads)
- ``GET /models/<digest>`` the nightly view of a model; ``/api/models/<digest>`` its history rows
- ``GET /compare?a=<run id>&b=<run id>``; ``/api/compare?a=&b=``
- ``GET /healthz`` ``ok`` (no store access, no authentication: for probes)

Access: with a token (``QUANTBENCH_RESULTS_TOKEN``), every other request needs ``Authorization:
Bearer <token>`` or HTTP Basic with any user name and the token as password (a browser asks for it).
A run id or file name from the URL is matched against what the store lists before any key is made
from it; anything else is a 404. Responses carry a Content-Security-Policy that allows no script and
nothing from elsewhere (inline styles and ``data:`` images only). The store's URL is shown; its
credentials never are (boto3 holds them; no page or header carries them).

An unreadable store (down, credentials revoked) makes a page that says so, status 503; a broken
report.json is a run listed as unreadable; neither is a 500.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tasks.browse.catalog import MALFORMED, Catalog, UnshowableReport
from tasks.browse.pages import compare_page, comparison, matches, message_page, model_page, model_rows, runs_page, with_navigation
from tasks.store.errors import QuantbenchError
from tasks.store.object_store import Store

TOKEN_ENV = "QUANTBENCH_RESULTS_TOKEN"
DIGEST = re.compile(r"[0-9a-fA-F]{4,64}")
SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'self'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}
CONTENT_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8", "md": "text/markdown; charset=utf-8"}


class TokenRequired:
    """ASGI middleware: every request but ``/healthz`` must carry the token (Bearer, or Basic password)."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    def _allowed(self, header: bytes) -> bool:
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() == b"bearer":
            return hmac.compare_digest(credentials.strip(), self.token)
        if scheme.lower() == b"basic":
            try:
                _, _, password = base64.b64decode(credentials.strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(password, self.token)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/healthz":
            header = dict(scope["headers"]).get(b"authorization", b"")
            if not self._allowed(header):
                response = PlainTextResponse("a token is needed: Authorization: Bearer <token>, or the token as the Basic password\n",
                                             status_code=401, headers={"www-authenticate": 'Basic realm="quantbench results"'})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items() if name.encode() not in present]
            await send(message)

        return await self.app(scope, receive, with_headers)


def _clean(value):
    """JSON-ready: NaN/inf -> None (JSON has neither), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def create_app(store: Store, token: str | None = None) -> Starlette:
    """The site over ``store``; with ``token`` every request but ``/healthz`` must carry it."""
    catalog = Catalog(store)

    def page(title: str, line: str, status: int) -> HTMLResponse:
        return HTMLResponse(message_page(title, line, store.url), status_code=status)

    def not_found(what: str) -> HTMLResponse:
        return page("not found", what, 404)

    def store_down(error: QuantbenchError, api: bool) -> Response:
        line = f"the store {store.url} cannot be read right now: {error}"
        return JSONResponse({"error": line}, status_code=503) if api else page("store unreachable", line, 503)

    def guarded(handler, api: bool = False):
        """Run a handler (in Starlette's thread pool); the store's failures become a 503 that says so."""
        def endpoint(request: Request) -> Response:
            try:
                return handler(request)
            except UnshowableReport as error:
                return JSONResponse({"error": str(error)}, status_code=422) if api else page("cannot show this run", str(error), 422)
            except QuantbenchError as error:
                return store_down(error, api)
        endpoint.__name__ = handler.__name__
        return endpoint

    def filters(request: Request) -> tuple[str, str]:
        return request.query_params.get("model", "").strip(), request.query_params.get("dataset", "").strip()

    def runs(request: Request) -> Response:
        return HTMLResponse(runs_page(catalog.runs(), *filters(request), store.url))

    def runs_api(request: Request) -> Response:
        return JSONResponse({"store": store.url, "runs": _clean([r for r in catalog.runs() if matches(r, *filters(request))])})

    def run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        summary = catalog.summary(run_id)
        if summary is None:
            return not_found(f"no run {run_id!r} in this store")
        if summary["status"] != "complete":
            return page(f"run {run_id}", f"run {run_id} is {summary['status']}: {summary['problem']}", 404)
        return HTMLResponse(with_navigation(catalog.run_page(run_id), summary))

    def run_api(request: Request) -> Response:
        report = catalog.report(request.path_params["run_id"])
        if report is None:
            return JSONResponse({"error": "no such complete run"}, status_code=404)
        return JSONResponse(_clean(report))

    def download(request: Request) -> Response:
        run_id, name = request.path_params["run_id"], request.path_params["name"]
        data = catalog.download(run_id, name)
        if data is None:
            return not_found(f"run {run_id!r} has no file {name!r} to download")
        filename = f"{run_id}-{name.replace('/', '-')}"
        return Response(data, media_type=CONTENT_TYPES[name.rpartition(".")[2]],
                        headers={"content-disposition": f'attachment; filename="{filename}"'})

    def model(request: Request, api: bool = False) -> Response:
        digest = request.path_params["digest"]
        if not DIGEST.fullmatch(digest):
            return not_found(f"{digest!r} is not a model digest (hex)")
        history = catalog.history()
        if api:
            sources, rows = model_rows(history, digest)
            records = json.loads(rows.to_json(orient="records", date_format="iso"))
            return JSONResponse({"model_digest": digest, "model_sources": sources, "rows": records},
                                status_code=200 if records else 404)
        summaries = {r["run_id"]: r for r in catalog.runs()}
        html = model_page(digest, history, summaries, store.url, catalog.history_problems())
        return not_found(f"no run of a model with digest {digest} in this store's history") if html is None else HTMLResponse(html)

    def pair(request: Request) -> tuple[dict, dict] | str:
        ids = [request.query_params.get(side, "").strip() for side in ("a", "b")]
        reports = [catalog.report(run_id) for run_id in ids]
        missing = [run_id for run_id, report in zip(ids, reports) if report is None]
        if missing:
            return f"no complete run {missing[0]!r} in this store (give ?a=RUN&b=RUN, two run ids)"
        return reports[0], reports[1]

    def compared(reports: tuple[dict, dict], make):
        try:
            return make(*reports)
        except MALFORMED as error:
            raise UnshowableReport(f"the runs {reports[0].get('run_id')} and {reports[1].get('run_id')} cannot be compared: "
                                   f"a report.json is not a quantbench report ({error!r})") from None

    def compare(request: Request) -> Response:
        reports = pair(request)
        return not_found(reports) if isinstance(reports, str) else HTMLResponse(compared(reports, lambda a, b: compare_page(a, b, store.url)))

    def compare_api(request: Request) -> Response:
        reports = pair(request)
        return JSONResponse({"error": reports}, status_code=404) if isinstance(reports, str) else JSONResponse(_clean(compared(reports, comparison)))

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    def model_api(request: Request) -> Response:
        return model(request, api=True)

    routes = [
        Route("/healthz", healthz),
        Route("/", guarded(runs)),
        Route("/api/runs", guarded(runs_api, api=True)),
        Route("/api/runs/{run_id}", guarded(run_api, api=True)),
        Route("/api/models/{digest}", guarded(model_api, api=True)),
        Route("/api/compare", guarded(compare_api, api=True)),
        Route("/runs/{run_id}", guarded(run)),
        Route("/runs/{run_id}/{name:path}", guarded(download)),
        Route("/models/{digest}", guarded(model)),
        Route("/compare", guarded(compare)),
    ]

    async def missing(request: Request, exc) -> Response:
        return not_found(f"nothing at {request.url.path}")

    app = Starlette(routes=routes, exception_handlers={404: missing})
    app.add_middleware(SecurityHeaders)
    return TokenRequired(app, token) if token else app

