"""The one byte cap on request bodies, for every route: checked from Content-Length before anything is read,
and counted while the body streams (chunked too), so no route ever buffers past it.

- The cap is per route kind: `limits.max_upload_bytes` + multipart framing for POST /search/image, and
  `limits.max_body_bytes` for every other body (JSON: 1 MiB by default). A declared length over the cap is
  answered 413 at once; an undeclared (chunked) or understated body raises 413 from `receive` at the first
  chunk past the cap, and the route's error handler answers it as JSON.
- A 413 or 408, and any response that starts before a body of undeclared length (chunked) was read to its
  end, carries `Connection: close`: uvicorn then closes the socket instead of reading and discarding the rest
  (a 200 MB chunked body was drained in full after its 413). An unread body whose declared length is within
  the cap (say an upload shed with 503) is still drained by uvicorn, so that client can read its answer:
  never more than the cap is read either way.
- A body whose next piece does not arrive within `server.body_timeout_s` is answered 408 (slow senders).

Why not Starlette's RequestBodyLimitMiddleware: one cap per app or per route fixed at import (ours comes from
config and differs for uploads), a plain-text 413, and no Connection: close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search.http.errors import send_error

__all__ = ["BodyGuard", "UPLOAD_FRAMING", "body_cap"]

UPLOAD_FRAMING = 64 * 1024  # multipart headers and boundaries on top of the file bytes


def body_cap(method: str, path: str, max_upload_bytes: int, max_body_bytes: int) -> int:
    """The byte cap for a request (the rule, in one place)."""
    if method == "POST" and path == "/search/image":
        return max_upload_bytes + UPLOAD_FRAMING
    return max_body_bytes


def _declared_length(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length if given and valid, whether the request carries a body at all)."""
    length: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked or bool(length)


class BodyGuard:
    """Pure ASGI middleware: see the module docstring. `cap(method, path)` gives the byte cap;
    `on_refuse(status)` counts answers given here (metrics)."""

    def __init__(self, app: ASGIApp, cap: Callable[[str, str], int], timeout_s: float,
                 on_refuse: Callable[[int], None] | None = None):
        self.app = app
        self.cap = cap
        self.timeout_s = timeout_s
        self.on_refuse = on_refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.cap(scope["method"], scope["path"])
        declared, has_body = _declared_length(scope)
        close = [(b"connection", b"close")]
        if declared is not None and declared > cap:
            if self.on_refuse is not None:
                self.on_refuse(413)
            await send_error(send, 413, f"request body exceeds {cap} bytes", {"limit": cap, "declared": declared},
                             close)
            return
        read = 0
        finished = not has_body

        async def limited_receive() -> Message:
            nonlocal read, finished
            if finished:
                return await receive()  # only a disconnect is left to come
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"request body stalled for {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > cap:
                    raise HTTPException(413, f"request body exceeds {cap} bytes")
                finished = not message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and (
                    message["status"] in (408, 413) or (not finished and declared is None)):
                message = {**message, "headers": [*message.get("headers", []), *close]}
            await send(message)

        await self.app(scope, limited_receive, closing_send)
