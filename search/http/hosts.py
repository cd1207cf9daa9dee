"""Host header checking (DNS rebinding): only the configured host names are served.

A page on `evil.example` whose name is re-pointed at 127.0.0.1 makes the operator's browser send requests with
`Host: evil.example:PORT` and a matching Origin, so an Origin check alone sees a same-origin call. Refusing
every Host outside `access.allowed_hosts` stops that; bound to loopback the default list is the loopback names
only. Matching follows Starlette's TrustedHostMiddleware (exact names, `*.domain` for subdomains, `*` for any,
the port ignored); this middleware exists because that one answers in plain text and the API answers JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from search.http.auth import is_loopback
from search.http.errors import send_error

__all__ = ["LOOPBACK_NAMES", "HostCheck", "allowed_hosts", "host_allowed", "host_name", "is_loopback_name"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(configured: Sequence[str] | None, bind_host: str) -> tuple[str, ...]:
    """The effective allow-list: as configured, else loopback names when bound to loopback, else any."""
    if configured is not None:
        return tuple(h.lower() for h in configured)
    return LOOPBACK_NAMES if is_loopback(bind_host) else ("*",)


def host_name(header: str) -> str:
    """`Host` without its port, lower case (`[::1]:8000` -> `[::1]`, `Example.COM:80` -> `example.com`)."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end != -1 else header
    return header.split(":", 1)[0]


def host_allowed(header: str, allowed: Sequence[str]) -> bool:
    name = host_name(header)
    if not name:
        return False
    for pattern in allowed:
        if pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def is_loopback_name(header: str) -> bool:
    """A Host header naming this machine's loopback (what admin calls without a token must carry)."""
    return host_name(header) in LOOPBACK_NAMES


class HostCheck:
    """Pure ASGI middleware: 400 JSON (+ close) for a Host header outside the allow-list, or none at all."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str], on_refuse: Callable[[int], None] | None = None):
        self.app = app
        self.allowed = tuple(allowed)
        self.on_refuse = on_refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if host_allowed(host, self.allowed):
            await self.app(scope, receive, send)
            return
        if self.on_refuse is not None:
            self.on_refuse(400)
        await send_error(send, 400, "this Host is not served here (access.allowed_hosts)",
                         {"host": host}, [(b"connection", b"close")])
