"""Request ids: accept a sane `X-Request-ID` or make one, echo it on the response, and expose it to logging
(a filter adds `request_id` to every record) and to the query log through a context variable.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIdMiddleware", "RequestIdFilter", "current_request_id"]

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # anything else is replaced, never logged verbatim


def current_request_id() -> str | None:
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` ('-' outside a request) so formatters can print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        return True


class RequestIdMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware cost on the cache-hit path)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _SANE.match(given) else uuid.uuid4().hex
        token = _request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)
