"""Shared by the fleet tests: remote calls as the fan-out, the version gate and the encoder deadline see them
(without Ray), and the processes of a running fleet's replicas (for tests and benchmarks that stop one)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


def replica_pids(app: str, deployment: str) -> list[int]:
    """The processes of `deployment`'s replicas in Serve application `app`, found by the title Ray gives each:
    `ray::ServeReplica:<app>:<deployment>` when idle, `...:<deployment>.<method>` while it runs a call (a health
    check, a request), so both forms are matched: a replica caught mid-call is still one of them."""
    import psutil

    title = f"ray::ServeReplica:{app}:{deployment}"
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        first = (proc.info["cmdline"] or [""])[0].split(" ", 1)[0]
        if first == title or first.startswith(title + "."):
            pids.append(proc.info["pid"])
    return pids


def running_replica_pids(app: str, deployment: str, count: int, timeout_s: float = 60.0) -> list[int]:
    """`count` replica processes of `deployment`, polled until they are all found by title (a title is read
    while Ray may be rewriting it) or `timeout_s` passes; then AssertionError listing every Ray process title,
    so a title that no longer matches is seen, not guessed."""
    import time

    import psutil

    deadline = time.monotonic() + timeout_s
    while len(pids := replica_pids(app, deployment)) != count:
        if time.monotonic() > deadline:
            firsts = ((p.info["cmdline"] or [""])[0].split(" ", 1)[0] for p in psutil.process_iter(["cmdline"]))
            titles = sorted({first for first in firsts if first.startswith("ray::")})
            raise AssertionError(f"expected {count} {deployment} replica processes, found {pids}; titles: {titles}")
        time.sleep(0.1)
    return pids


class Done:
    """A Serve DeploymentResponse that already has its value (or its error)."""

    def __init__(self, value: Any = None, error: BaseException | None = None):
        self.value, self.error = value, error
        self.cancelled = False

    def result(self, *, timeout_s: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def cancel(self) -> None:
        self.cancelled = True


class Stuck:
    """A call to a replica that does not answer: its result waits until its deadline (TimeoutError) or until
    it is cancelled (then the error Serve raises for a cancelled call)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def result(self, *, timeout_s: float | None = None) -> Any:
        if self.cancelled.wait(timeout_s):
            raise RuntimeError("call cancelled")
        raise TimeoutError("no answer before the deadline")

    def cancel(self) -> None:
        self.cancelled.set()


class StuckAwaitable:
    """An awaitable call (as the ingress awaits the encoder's) that never answers until cancelled."""

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.cancelled = threading.Event()

    def __await__(self) -> Any:
        return self.future.__await__()

    def cancel(self) -> None:
        self.cancelled.set()


class Answered:
    """An awaitable call that answers `value` at once."""

    def __init__(self, value: Any):
        self.value = value

    def __await__(self) -> Any:
        async def value() -> Any:
            return self.value
        return value().__await__()

    def cancel(self) -> None:
        return None
