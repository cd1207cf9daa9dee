"""Entry shedding (search/http/shedding.py): the gate's accounting, the middleware's answers (503 JSON +
Retry-After before routing) and what it never sheds (cache hits, health, readiness, metrics), the loop-lag
clock, the admission's cost from a window of releases; then the same through the real service."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from search.http.app import create_app
from search.http.shedding import EntryGate, EntryShedder, LoopLag, encode_kind
from search.query.admission import Admission
from search.settings import AccessSettings, TrafficSettings
from tests.admission_support import FixedCost
from tests.service_support import runtime_for, settings_for


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Target:
    """The service as the shedder sees it: one admission per encoder, a set of cached queries."""

    def __init__(self, admission: Admission | None, cached: set[str]):
        self._admission = admission
        self._cached = cached

    def admission(self, kind: str) -> Admission | None:
        return self._admission

    def cached(self, query: str, phase: str) -> bool:
        return query in self._cached


class Backend:
    """The app behind the middleware: answers 200 at once, except paths in `hold`, which wait for `release`."""

    def __init__(self, hold: set[str]):
        self.hold = hold
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.seen: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen.append(scope["path"])
        if scope["path"] in self.hold:
            self.entered.set()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app: Any, method: str, path: str, query: str = "") -> tuple[int, dict[str, str], bytes]:
    """One request through an ASGI app; (status, headers, body)."""
    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(), "headers": []}
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def test_encode_bound_requests_are_text_gets_and_image_uploads():
    assert encode_kind("GET", "/search") == "text"
    assert encode_kind("POST", "/search/image") == "image"
    for method, path in [("POST", "/search"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
                         ("GET", "/search/similar/3"), ("GET", "/images/3"), ("GET", "/search/image")]:
        assert encode_kind(method, path) is None


def test_gate_counts_requests_inside_and_refuses_at_the_cap():
    gate = EntryGate(max_in_flight=2)
    admission = Admission(deadline_s=10.0, max_queue=100, cost=FixedCost(0.01))
    assert gate.check("text", admission) is None
    gate.enter("text")
    gate.enter("text")
    shed = gate.check("text", admission)
    assert shed is not None and shed.reason == "in_flight"
    assert shed.retry_after_s == pytest.approx(0.03)  # 2 inside + this one, 10 ms each
    assert gate.check("image", admission) is None  # the other encoder has its own count
    gate.leave("text")
    assert gate.check("text", admission) is None
    assert gate.shed == {"text:in_flight": 1}


def test_gate_refuses_when_predicted_wait_plus_loop_lag_exceeds_the_deadline():
    clock = Clock()
    lag = LoopLag(interval_s=0.01, clock=clock)
    lag.tick()
    gate = EntryGate(max_in_flight=100, lag=lag)
    admission = Admission(deadline_s=0.1, max_queue=100, cost=FixedCost(0.03))
    assert gate.check("text", admission) is None  # nothing inside: an idle encoder always admits
    gate.enter("text")
    gate.enter("text")
    assert gate.check("text", admission) is None  # 3 x 30 ms = 90 ms fits 100 ms
    clock.now = 0.03  # the next tick was due at 10 ms: the loop is 20 ms late right now
    shed = gate.check("text", admission)
    assert shed is not None and shed.reason == "predicted_wait"
    assert shed.retry_after_s == pytest.approx(0.11)
    held = [admission.admit() for _ in range(3)]  # the queue is deeper than the requests counted here
    clock.now = 0.0
    lag.last_s = 0.0
    gate.leave("text")
    gate.leave("text")
    assert gate.check("text", admission) is not None  # 4 x 30 ms: the admission's depth counts too
    for ticket in held:
        ticket.release()


def test_loop_lag_is_how_late_the_tick_runs_or_how_overdue_it_is():
    clock = Clock()
    lag = LoopLag(interval_s=0.01, clock=clock)
    assert lag.current() == 0.0
    lag.tick()
    clock.now = 0.005
    assert lag.current() == 0.0  # not due yet
    clock.now = 0.025
    assert lag.current() == pytest.approx(0.015)  # due at 10 ms, the loop has not run it
    lag.tick()
    assert lag.last_s == pytest.approx(0.015)
    clock.now = 0.035
    lag.tick()
    assert lag.current() == 0.0 and lag.last_s == 0.0


def test_admission_cost_is_busy_time_per_completion_over_batches_of_releases():
    clock, cost = Clock(), FixedCost(0.01)
    admission = Admission(deadline_s=10, max_queue=100, cost=cost, window=8, clock=clock)
    tickets = [admission.admit() for _ in range(4)]
    for batch in range(1, 7):  # batches of 4 every 40 ms: 10 ms of encoder time per request
        clock.now = batch * 0.040 - 0.020
        queued = [admission.admit() for _ in range(4)] if batch < 6 else []  # the next batch arrives meanwhile
        for i, ticket in enumerate(tickets):
            clock.now = batch * 0.040 + i * 0.0001  # a batch ends in a cluster of releases
            ticket.release()
        tickets = queued
    assert admission.depth == 0
    assert cost.seen[-1] == pytest.approx(0.010, rel=0.02)  # not 0.1 ms (within a cluster), not 40 ms (a batch)
    assert all(0.005 < seen < 0.021 for seen in cost.seen)
    clock.now = 10.0  # idle, then one request alone: busy time is its own duration; idle time never counts
    alone = admission.admit()
    clock.now = 10.050
    alone.release()
    assert cost.seen[-1] == pytest.approx((0.040 + 0.050) / 8, rel=0.02)  # the window: last batch + this one


def test_middleware_sheds_misses_at_the_cap_and_lets_hits_and_health_through():
    async def scenario() -> None:
        backend = Backend(hold={"/search"})
        shed_calls: list[tuple[str, str]] = []
        gate = EntryGate(max_in_flight=1)
        admission = Admission(deadline_s=10.0, max_queue=100, cost=FixedCost(0.2))
        app = EntryShedder(backend, gate, Target(admission, {"a cached query"}),
                           on_shed=lambda kind, reason: shed_calls.append((kind, reason)))
        first = asyncio.create_task(call(app, "GET", "/search", "q=first+miss"))
        await backend.entered.wait()  # the first miss is inside the app
        assert gate.in_flight["text"] == 1
        status, headers, body = await call(app, "GET", "/search", "q=second+miss&k=5")
        assert status == 503 and headers["retry-after"] == "1"
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["detail"] == {"reason": "in_flight"} and "error" in json.loads(body)
        assert shed_calls == [("text", "in_flight")]
        backend.hold = set()  # the held request stays held; the rest answer at once
        for method, path, query in [("GET", "/search", "q=a+cached+query"), ("GET", "/healthz", ""),
                                    ("GET", "/readyz", ""), ("GET", "/metrics", ""), ("POST", "/search", "")]:
            assert (await call(app, method, path, query))[0] == 200, path
        assert gate.in_flight["text"] == 1  # hits and the rest are not counted
        assert "/search" in backend.seen and backend.seen.count("/search") == 3  # first, the hit, POST
        backend.release.set()
        assert (await first)[0] == 200
        assert gate.in_flight["text"] == 0
        assert (await call(app, "GET", "/search", "q=third+miss"))[0] == 200
        assert gate.in_flight["text"] == 0

    asyncio.run(scenario())


def test_middleware_releases_its_count_when_the_app_raises():
    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("broken")

    async def scenario() -> None:
        gate = EntryGate(max_in_flight=1)
        app = EntryShedder(boom, gate, Target(None, set()))
        with pytest.raises(RuntimeError):
            await call(app, "POST", "/search/image")
        assert gate.in_flight["image"] == 0

    asyncio.run(scenario())


def test_service_sheds_at_the_entry_and_keeps_hits_health_and_metrics(world):
    settings = settings_for(world, traffic=TrafficSettings(deadline_ms=50, initial_cost_ms=20),
                            access=AccessSettings(cors_origins=["https://app.example"]))
    with TestClient(create_app(settings, encoder=runtime_for(world)), raise_server_exceptions=False) as c:
        warm = world.queries[0]["query"]
        assert c.get("/search", params={"q": warm}).json()["cache"] == "miss"
        service = c.app.state.service
        held = [service.embedder.admission.admit(0.001) for _ in range(3)]  # >= 4 x 16 ms > 50 ms
        shed = c.get("/search", params={"q": "a query nobody asked before"},
                     headers={"X-Request-ID": "shed-1", "Origin": "https://app.example"})
        assert shed.status_code == 503 and int(shed.headers["retry-after"]) >= 1
        body = shed.json()
        assert body["detail"] == {"reason": "predicted_wait"} and body["request_id"] == "shed-1"
        assert shed.headers["x-request-id"] == "shed-1"
        assert shed.headers["access-control-allow-origin"] == "https://app.example"
        hit = c.get("/search", params={"q": warm.upper()})  # normalised like the pipeline: the same key
        assert hit.status_code == 200 and hit.json()["cache"] == "hit"
        for path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(path).status_code == 200, path
        uploads = c.app.state.uploads.admission
        held_uploads = [uploads.admit(0.001) for _ in range(3)]
        image = c.post("/search/image", files={"file": ("x.png", b"not read", "image/png")})
        assert image.status_code == 503 and image.json()["detail"] == {"reason": "predicted_wait"}
        for ticket in [*held, *held_uploads]:
            ticket.release()
        assert c.get("/search", params={"q": "a query nobody asked before"}).status_code == 200
        metrics = c.get("/metrics").text
        assert 'photostock_shed_total{encoder="text",reason="predicted_wait"} 1.0' in metrics
        assert 'photostock_shed_total{encoder="image",reason="predicted_wait"} 1.0' in metrics
        assert "photostock_event_loop_lag_seconds" in metrics


def test_entry_shedding_can_be_switched_off(world):
    settings = settings_for(world, traffic=TrafficSettings(deadline_ms=50, entry_shedding=False))
    with TestClient(create_app(settings, encoder=runtime_for(world)), raise_server_exceptions=False) as c:
        held = [c.app.state.service.embedder.admission.admit(0.001) for _ in range(3)]  # 4 x 20 ms > 50 ms
        refused = c.get("/search", params={"q": "another query nobody asked"})
        assert refused.status_code == 503 and "queue" in refused.json()["error"]  # the pipeline's admission
        assert refused.json()["detail"] is None
        for ticket in held:
            ticket.release()
