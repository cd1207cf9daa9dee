"""The real search service (create_app + uvicorn) on a free localhost port in a background thread, so the
HTTP evaluation mode and the notebooks can go through the whole stack without a separate process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from indexer.models.clip import ClipEncoder

__all__ = ["serve_store"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_store(store: Path, encoder: ClipEncoder, pretrained: str, text_backend: Literal["torch", "onnx"] = "torch",
                startup_timeout_s: float = 300.0) -> Iterator[str]:
    """Serve `store` (its artifact's own ONNX encoder, pinned to `encoder`'s identity); yields the base URL.
    `pretrained` and `text_backend` are kept for callers and no longer used."""
    import uvicorn

    from search.http.app import create_app
    from search.settings import EncoderSettings, ReloadSettings, Settings

    settings = Settings(store=Path(store), encoder=EncoderSettings(key=encoder.identity.key),
                        reload=ReloadSettings(watch=False))
    ready = threading.Event()

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
            await super().startup(sockets=sockets)
            ready.set()

    port = _free_port()
    server = _Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                    log_level="warning", lifespan="on"))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # reported to the caller below, never swallowed
            errors.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="eval-service", daemon=True)
    thread.start()
    if not ready.wait(startup_timeout_s) or errors or not server.started:
        server.should_exit = True
        thread.join(timeout=30)
        raise RuntimeError(f"the search service did not start on port {port}: {errors[0] if errors else 'timeout'}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
