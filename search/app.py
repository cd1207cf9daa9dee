"""FastAPI application factory: `create_app(settings)`; the lifespan builds the service state.

Every error leaves as JSON: validation problems 422, known client errors their own 4xx, a missing index 503.
An unexpected exception is logged with its traceback and answered 500 (it is a bug, never bad input).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search.encoder import ClipEncoder
from search.reload import NoIndexError, watch_current
from search.runtime.pool import PoolUnavailable
from search.runtime.threads import use_loop_workers
from search.routes import STATIC_DIR, router
from search.settings import Settings
from search.state import ServiceState, build_state
from search.uploads import UploadRejected

log = logging.getLogger(__name__)

__all__ = ["create_app"]


def create_app(settings: Settings, encoder: ClipEncoder | None = None) -> FastAPI:
    """`encoder` lets a caller that already holds the configured encoder skip loading it again."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServiceState = await asyncio.to_thread(build_state, settings, encoder)
        app.state.service = state
        use_loop_workers(asyncio.get_running_loop())
        await _warm_up(state)
        watcher = None
        if settings.reload.watch:
            watcher = asyncio.create_task(watch_current(state.holder, settings.reload.poll_s))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with suppress(asyncio.CancelledError):
                    await watcher
            state.close()

    app = FastAPI(title="PhotoStock semantic image search", version="0.1.0", lifespan=lifespan)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_handlers(app)
    app.add_middleware(RequestMetrics)
    return app


async def _warm_up(state: ServiceState) -> None:
    path = state.settings.cache.warmup_file
    if path is None:
        return
    texts = Path(path).read_text(encoding="utf-8").splitlines()
    added = await state.embedder.warm(texts[: state.settings.cache.maxsize])
    log.info("query cache warmed with %d queries from %s", added, path)


def _error(request: Request, status: int, error: str, detail: object = None) -> JSONResponse:
    service = getattr(request.app.state, "service", None)
    if service is not None:
        service.metrics.errors.labels(kind=str(status)).inc()
    return JSONResponse({"error": error, "detail": jsonable_encoder(detail)}, status_code=status)


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(request, 422, "invalid request", exc.errors())

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(NoIndexError)
    async def no_index(request: Request, exc: NoIndexError) -> JSONResponse:
        return _error(request, 503, "no index is loaded", str(exc))

    @app.exception_handler(PoolUnavailable)
    async def no_encoder(request: Request, exc: PoolUnavailable) -> JSONResponse:
        return _error(request, 503, "no encode session is available", str(exc))

    @app.exception_handler(UploadRejected)
    async def bad_upload(request: Request, exc: UploadRejected) -> JSONResponse:
        return _error(request, exc.status, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(request, 500, "internal error", type(exc).__name__)


class RequestMetrics:
    """Pure ASGI middleware timing every HTTP request by route template and status (cheaper than
    BaseHTTPMiddleware, which matters on the ~1 ms cache-hit path)."""

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
