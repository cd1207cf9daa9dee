"""uvicorn as the service runs it: slow and idle clients are closed, open connections are bounded.

uvicorn has an idle keep-alive timeout (`timeout_keep_alive`), a connection bound (`limit_concurrency`: past it
new requests get 503 at once) and the listen `backlog`, but no header timeout: its keep-alive timer is armed
only after a response, so a client that connects and sends half a request line (or nothing) holds its
connection forever (4,000 such connections were never closed). `header_timeout_protocol` adds that one timer to
uvicorn's httptools protocol: armed when a connection opens and when a request begins, cancelled when the
request's headers are complete; when it fires the connection is closed. Slow bodies are search/http/bodies.py's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from search.settings import ServerSettings

__all__ = ["header_timeout_protocol", "serve", "uvicorn_options"]


def header_timeout_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a header timeout of `seconds`."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def serve(app: Any, sock: socket.socket, server: ServerSettings, log_level: str) -> bool:
    """Run `app` under uvicorn on `sock` (bound beforehand by the CLI, so a busy port fails before start-up) until
    stopped, with the `server:` settings applied. False when the app's start-up failed."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=None,
                            http=header_timeout_protocol(server.header_timeout_s), **uvicorn_options(server))
    instance = _AnnouncingServer(config)
    instance.run(sockets=[sock])
    return bool(instance.started)


def uvicorn_options(server: ServerSettings) -> dict[str, Any]:
    """uvicorn's options from the `server:` settings (one process or each worker of several)."""
    return {"proxy_headers": False,  # only the app's own ProxyHeadersMiddleware (access.trusted_proxies)
            "server_header": False, "timeout_keep_alive": server.keep_alive_timeout_s,
            "limit_concurrency": server.max_connections, "backlog": server.backlog}


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server on a socket bound beforehand. uvicorn logs "Uvicorn running on ..." only for sockets it
    binds itself; this logs the same line once the app has started (operators and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)",
                                                    shown, port)
