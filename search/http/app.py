"""FastAPI application factory: `create_app(settings)`; the lifespan builds the service state.

Every error leaves as JSON: validation problems 422, known client errors their own 4xx, a missing index 503.
An unexpected exception is logged with its traceback and answered 500 (it is a bug, never bad input).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from search.artifact.reload import NoIndexError, watch_current
from search.http.auth import load_api_keys
from search.http.bodies import BodyGuard, body_cap
from search.http.docs import install_docs
from search.http.errors import error_body
from search.http.guidance import router as guidance_router
from search.http.hosts import HostCheck, allowed_hosts
from search.http.openapi import document_limits, document_security
from search.http.ratelimit import RateLimiter
from search.http.request_id import RequestIdMiddleware
from search.http.routes import STATIC_DIR, router
from search.http.security import AccessControl
from search.http.shedding import EncodeKind, EntryGate, EntryShedder, LoopLag
from search.http.uploads import UploadGuard
from search.query.admission import Admission, MeasuredCost, Overloaded
from search.query.clean import clean_query
from search.query.shard import ShardUnavailable
from search.runtime.pool import PoolUnavailable
from search.runtime.threads import use_loop_workers
from search.runtime.towers import RuntimeEncoder
from search.runtime.uploads import DecodeGate, UploadRejected
from search.serving import freeze_startup_heap
from search.settings import Settings
from search.state import EncoderUnavailable, RemoteParts, ServiceState, build_state

log = logging.getLogger(__name__)

__all__ = ["create_app"]


def create_app(settings: Settings, encoder: RuntimeEncoder | None = None,
               remote: RemoteParts | None = None) -> FastAPI:
    """The encoder comes from the store's artifact; `encoder` lets a caller that already holds that artifact's
    runtime encoder share it (it must equal the artifact's). `remote`: a fleet's ingress (search/fleet/) runs
    this same app with the query encodes and the shard searches in other deployments."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServiceState = await asyncio.to_thread(build_state, settings, encoder, remote)
        state.embedder.admission = _admission(settings)
        if state.fast_embedder is not None and state.fast_embedder is not state.embedder:
            state.fast_embedder.admission = _admission(settings)  # its own session: its own queue
        app.state.service = state
        lag: LoopLag = app.state.loop_lag
        state.metrics.loop_lag.set_function(lag.current)
        use_loop_workers(asyncio.get_running_loop())
        await _warm_up(state)
        log.info("start-up heap frozen: %d objects outside the cyclic collector", freeze_startup_heap())
        tasks = [asyncio.create_task(lag.run())]
        if settings.reload.watch:
            tasks.append(asyncio.create_task(watch_current(state.holder, settings.reload.poll_s)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            state.close()

    app = FastAPI(title="PhotoStock semantic image search", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None)  # /docs: search.http.docs, from local assets (/redoc stays off)
    app.include_router(router)
    app.include_router(guidance_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_docs(app)
    _install_handlers(app)
    _install_guards(app, settings)
    document_limits(app, settings.limits)
    document_security(app, api_keys=app.state.access.api_keys.enabled,
                      admin_token=settings.reload.admin_token is not None)
    return app


def _admission(settings: Settings) -> Admission:
    traffic = settings.traffic
    return Admission(traffic.deadline_ms / 1000.0, traffic.max_queue, MeasuredCost(traffic.initial_cost_ms / 1000.0))


def _install_guards(app: FastAPI, settings: Settings) -> None:
    """Access control, upload limits and the middleware stack (outermost first: trusted proxy headers decide
    the client address, then the request id, the Host check, CORS, the body cap, entry shedding of
    encode-bound requests, request metrics)."""
    access = settings.access
    rate = settings.traffic.rate_limit
    app.state.access = AccessControl(settings, load_api_keys(access.api_keys_file, access.api_keys_env),
                                     RateLimiter(rate, settings.traffic.rate_limit_storage,
                                                 _error_counter(app, "rate_limit_storage")) if rate else None)
    app.state.uploads = UploadGuard(DecodeGate(settings.limits.decode_concurrency), _admission(settings))
    app.add_middleware(RequestMetrics)
    app.state.loop_lag = LoopLag(settings.traffic.loop_lag_probe_ms / 1000.0)
    if settings.traffic.entry_shedding:  # inside CORS and the request id: a shed answer carries both
        front = _ServiceFront(app)
        app.add_middleware(EntryShedder, gate=EntryGate(settings.traffic.max_in_flight, app.state.loop_lag),
                           target=front, on_shed=front.count_shed)
    limits = settings.limits
    app.add_middleware(BodyGuard, cap=lambda method, path: body_cap(method, path, limits.max_upload_bytes,
                                                                    limits.max_body_bytes),
                       timeout_s=settings.server.body_timeout_s, on_refuse=_status_counter(app))
    if access.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=access.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-API-Key", "Authorization", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After", "Server-Timing"], max_age=600)
    app.add_middleware(HostCheck, allowed=allowed_hosts(access.allowed_hosts, access.bind_host),
                       on_refuse=_status_counter(app))
    app.add_middleware(RequestIdMiddleware)
    if access.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=access.trusted_proxies)


def _error_counter(app: FastAPI, kind: str) -> Callable[[], None]:
    """`photostock_errors_total{kind}` += 1, once the lifespan has built the service's metrics."""
    def count() -> None:
        service: ServiceState | None = getattr(app.state, "service", None)
        if service is not None:
            service.metrics.errors.labels(kind=kind).inc()
    return count


def _status_counter(app: FastAPI) -> Callable[[int], None]:
    """`photostock_errors_total{kind=status}` += 1 for an answer a middleware gave."""
    def count(status: int) -> None:
        _error_counter(app, str(status))()
    return count


class _ServiceFront:
    """The service as the entry shedder sees it (search.http.shedding.ShedTarget): nothing before the lifespan
    has built the state, then the text/upload admissions and the query cache."""

    def __init__(self, app: FastAPI):
        self.app = app

    def _service(self) -> ServiceState | None:
        return getattr(self.app.state, "service", None)

    def admission(self, kind: EncodeKind) -> Admission | None:
        if kind == "image":
            guard: UploadGuard = self.app.state.uploads
            return guard.admission
        service = self._service()
        return service.embedder.admission if service is not None else None

    def cached(self, query: str, phase: str) -> bool:
        service = self._service()
        if service is None or len(query) > service.settings.limits.max_query_chars:
            return False
        cleaned = clean_query(query)
        return bool(cleaned) and service.embedder_for(phase).cached(cleaned)

    def count_shed(self, kind: EncodeKind, reason: str) -> None:
        service = self._service()
        if service is not None:
            service.metrics.shed.labels(encoder=kind, reason=reason).inc()
            service.metrics.errors.labels(kind="503").inc()


async def _warm_up(state: ServiceState) -> None:
    path = state.settings.cache.warmup_file
    if path is None:
        return
    texts = Path(path).read_text(encoding="utf-8").splitlines()
    added = await state.embedder.warm(texts[: state.settings.cache.maxsize])
    log.info("query cache warmed with %d queries from %s", added, path)


def _error(request: Request, status: int, error: str, detail: object = None,
           headers: dict[str, str] | None = None) -> Response:
    """Every handled error: the JSON body of search/http/errors.py (bad values described, echoes bounded)."""
    service = getattr(request.app.state, "service", None)
    if service is not None:
        service.metrics.errors.labels(kind=str(status)).inc()
    return Response(error_body(error, detail), status_code=status, headers=headers, media_type="application/json")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (Starlette's own 405 names only the first route's)."""
    methods: set[str] = set()
    for route in [*router.routes, *request.app.router.routes]:  # FastAPI wraps included routers: list ours
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE and route.methods:
            methods |= route.methods
    return ", ".join(sorted(methods - {"HEAD"} if "GET" not in methods else methods))


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return _error(request, 422, "invalid request", exc.errors())

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        headers = dict(exc.headers or {})  # keeps Retry-After, WWW-Authenticate
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return _error(request, exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(NoIndexError)
    async def no_index(request: Request, exc: NoIndexError) -> Response:
        return _error(request, 503, "no index is loaded", str(exc))

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> Response:
        return _error(request, 503, str(exc), headers={"Retry-After": str(max(1, round(exc.retry_after_s + 0.5)))})

    @app.exception_handler(PoolUnavailable)
    async def no_encoder(request: Request, exc: PoolUnavailable) -> Response:
        return _error(request, 503, "no encode session is available", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(ShardUnavailable)
    async def no_shard(request: Request, exc: ShardUnavailable) -> Response:
        return _error(request, 503, str(exc), {"shard": exc.shard},
                      headers={"Retry-After": str(max(1, round(exc.retry_after_s + 0.5)))})

    @app.exception_handler(EncoderUnavailable)
    async def no_remote_encoder(request: Request, exc: EncoderUnavailable) -> Response:
        return _error(request, 503, str(exc), {"encoder": exc.encoder},
                      headers={"Retry-After": str(max(1, round(exc.retry_after_s + 0.5)))})

    @app.exception_handler(UploadRejected)
    async def bad_upload(request: Request, exc: UploadRejected) -> Response:
        return _error(request, exc.status, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(request, 500, "internal error", type(exc).__name__)


class RequestMetrics:
    """Pure ASGI middleware timing every HTTP request by route template and status (cheaper than
    BaseHTTPMiddleware, which matters on the millisecond cache-hit path; benchmarks/http_load.py)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            service = getattr(scope["app"].state, "service", None)
            if service is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                service.metrics.requests.labels(route=route, status=str(status)).observe(
                    time.perf_counter() - start)
