"""Several worker processes on one port: uvicorn's own supervisor (`uvicorn.supervisors.Multiprocess`).

The CLI binds the socket once; uvicorn hands it to each spawned worker, and the kernel spreads connections over
the workers that accept on it. Each worker builds the whole service from the settings the supervisor pickles
to it (`WorkerConfig.load`, in the worker): its own thread budget (the node's cores split between workers,
`worker_settings`), its own encoder sessions and its own query and result caches (not shared: a query cached by
one worker is a miss on another). `server.max_connections` bounds each worker. The index and the rerank
vectors are memory-mapped read-only (search/artifact/ann.py), so the page cache holds one copy for every
worker. The supervisor restarts a worker that dies and stops when one fails to start.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from search.http.server import header_timeout_protocol, uvicorn_options
from search.runtime.threads import available_cores
from search.settings import Settings

__all__ = ["WorkerConfig", "serve_workers", "worker_settings"]

log = logging.getLogger("uvicorn.error")


def worker_settings(settings: Settings, cores: int | None = None) -> Settings:
    """What each of `server.workers` processes runs with: the node's cores (`cores`, default this process's
    affinity) split evenly, at least one each, unless `threads.cores` already names a share. Worker threads are
    not pinned: the share sizes each worker's ONNX Runtime, FAISS and executor threads (search/runtime/threads.py)."""
    workers = settings.server.workers
    if workers <= 1 or settings.threads.cores:
        return settings
    share = max(1, (cores or available_cores()) // workers)
    return settings.model_copy(update={"threads": settings.threads.model_copy(update={"cores": share})})


class WorkerConfig(uvicorn.Config):
    """uvicorn's config as each worker receives it (pickled): the settings travel with it and the app and the
    header-timeout protocol (search/http/server.py) are built in the worker, when uvicorn loads the config."""

    def __init__(self, settings: Settings, log_level: str, log_format: str, **options: Any) -> None:
        super().__init__("search.http.app:create_app", log_level=log_level, log_config=None, **options)
        self.settings = settings
        self.log_format = log_format

    def load(self) -> None:
        from search.http.logs import configure_logging

        configure_logging(str(self.log_level), self.log_format)
        self.http = header_timeout_protocol(self.settings.server.header_timeout_s)
        super().load()

    def load_app(self) -> Any:
        from search.http.app import create_app

        return create_app(self.settings)


class _AnnouncingMultiprocess(Multiprocess):
    """uvicorn's supervisor that logs "Uvicorn running on ..." once every worker has started (operators and
    tests wait for that line; the workers serve a socket bound beforehand, for which uvicorn logs none). Checked
    in the supervisor's own loop, so a stop signal during the workers' start-up is handled at once."""

    started = False

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        if self.started or self.should_exit.is_set() or not all(p.is_ready() for p in self.processes):
            return
        self.started = True
        host, port = self.sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("Uvicorn running on http://%s:%d with %d workers (Press CTRL+C to quit)", shown, port,
                 len(self.processes))


def serve_workers(settings: Settings, sock: socket.socket, log_level: str, log_format: str) -> bool:
    """Run `server.workers` worker processes on `sock` until stopped. False when a worker's start-up failed."""
    config = WorkerConfig(worker_settings(settings), log_level, log_format, workers=settings.server.workers,
                          **uvicorn_options(settings.server))
    supervisor = _AnnouncingMultiprocess(config, sockets=[sock])
    supervisor.run()
    return supervisor.started
