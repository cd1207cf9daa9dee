"""Load shedding at the door: refuse an encode-bound request before routing, validation and query cleaning.

Why here and not only in the pipeline: under overload the event loop itself is the first queue. Every refused
request that went through FastAPI (routing, dependencies, validation, cleaning, tokenizing, the exception
handler) cost the loop about as much as a cache hit, and requests waited behind that work before admission
ever saw them. This pure ASGI middleware answers 503 + Retry-After + a JSON body in a few hundred
microseconds of loop time when

- the encode-bound requests already inside reach `max_in_flight`, or
- one more would not fit the admission's deadline: (requests inside + 1) x the measured cost per request, plus
  the event loop's current lag (`LoopLag`), exceeds it.

Cache hits, health, readiness, metrics, images and every other endpoint pass untouched: a text query is looked
up in the query cache first (a hit never counts and is never shed). Encode-bound: GET /search (a miss), POST
/search/image. POST /search carries its query in the body, so it passes here and meets the admission in the
pipeline (search/query/admission.py), which refuses it with the same 503.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from search.http.errors import send_error
from search.query.admission import Admission

__all__ = ["EncodeKind", "EntryGate", "EntryShedder", "LoopLag", "Shed", "ShedTarget", "encode_kind"]

EncodeKind = Literal["text", "image"]


def encode_kind(method: str, path: str) -> EncodeKind | None:
    """Which encoder a request would need, by method and path alone (None: not encode-bound here)."""
    if path == "/search" and method == "GET":
        return "text"
    if path == "/search/image" and method == "POST":
        return "image"
    return None


class ShedTarget(Protocol):
    """What the middleware asks the service (None / False while it is starting: then nothing is shed)."""

    def admission(self, kind: EncodeKind) -> Admission | None: ...

    def cached(self, query: str, phase: str) -> bool: ...


class LoopLag:
    """How late the event loop runs a periodic tick: the time a request arriving now waits before the loop
    reaches it. `current()` also counts a tick that is overdue right now (the loop is busy this moment)."""

    def __init__(self, interval_s: float = 0.01, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock  # asyncio's loop.time() is time.monotonic()
        self.last_s = 0.0
        self._due: float | None = None

    def tick(self) -> None:
        """One tick ran now: record how late it was and when the next is due."""
        now = self._clock()
        if self._due is not None:
            self.last_s = max(0.0, now - self._due)
        self._due = now + self.interval_s

    def current(self) -> float:
        overdue = self._clock() - self._due if self._due is not None else 0.0
        return max(self.last_s, overdue, 0.0)

    async def run(self) -> None:
        """Ticks until cancelled (a lifespan task)."""
        while True:
            self.tick()
            await asyncio.sleep(self.interval_s)


@dataclass(frozen=True)
class Shed:
    reason: Literal["in_flight", "predicted_wait"]
    message: str
    retry_after_s: float


class EntryGate:
    """The accounting: encode-bound requests inside, per encoder, and the decision for one more."""

    def __init__(self, max_in_flight: int, lag: LoopLag | None = None):
        self.max_in_flight = max_in_flight
        self.lag = lag
        self.in_flight: dict[EncodeKind, int] = {"text": 0, "image": 0}
        self.shed: dict[str, int] = {}

    def check(self, kind: EncodeKind, admission: Admission | None) -> Shed | None:
        """None: let it in (the caller then `enter`s and `leave`s). Else why not, and when to come back."""
        inside = self.in_flight[kind]
        queued = max(inside, admission.depth) if admission is not None else inside
        cost = admission.cost.predicted_cost() if admission is not None else 0.0
        if inside >= self.max_in_flight:
            return self._count(kind, Shed("in_flight", f"{inside} {kind} encodes are in flight (the limit)",
                                          (queued + 1) * cost))
        if admission is None:
            return None
        lag = self.lag.current() if self.lag is not None else 0.0
        if not admission.fits(queued, extra_wait_s=lag, predicted_cost=cost):
            wait = lag + admission.predicted_wait(cost, queued)
            return self._count(kind, Shed("predicted_wait", f"encoder queue is full (predicted wait "
                                          f"{wait * 1000:.0f} ms > deadline {admission.deadline_s * 1000:.0f} ms)",
                                          wait))
        return None

    def enter(self, kind: EncodeKind) -> None:
        self.in_flight[kind] += 1

    def leave(self, kind: EncodeKind) -> None:
        self.in_flight[kind] -= 1

    def _count(self, kind: EncodeKind, shed: Shed) -> Shed:
        key = f"{kind}:{shed.reason}"
        self.shed[key] = self.shed.get(key, 0) + 1
        return shed


class EntryShedder:
    """Pure ASGI middleware in front of the router (see the module docstring). `target` gives the service's
    admissions and query cache; `on_shed(kind, reason)` counts refusals (metrics)."""

    def __init__(self, app: ASGIApp, gate: EntryGate, target: ShedTarget,
                 on_shed: Callable[[EncodeKind, str], None] | None = None):
        self.app = app
        self.gate = gate
        self.target = target
        self.on_shed = on_shed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = encode_kind(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if kind is None or (kind == "text" and self._hit(scope)):
            await self.app(scope, receive, send)
            return
        shed = self.gate.check(kind, self.target.admission(kind))
        if shed is not None:
            if self.on_shed is not None:
                self.on_shed(kind, shed.reason)
            await _refuse(shed, send)
            return
        self.gate.enter(kind)
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave(kind)

    def _hit(self, scope: Scope) -> bool:
        """A text query already in the query cache (a malformed query string is no hit: the route answers it)."""
        try:
            params = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        except ValueError:
            return False
        query = params.get("q", [""])[-1]
        return bool(query) and self.target.cached(query, params.get("phase", ["full"])[-1])


async def _refuse(shed: Shed, send: Send) -> None:
    retry_after = max(1, math.ceil(shed.retry_after_s))
    await send_error(send, 503, shed.message, {"reason": shed.reason}, [(b"retry-after", str(retry_after).encode())])
