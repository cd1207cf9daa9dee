"""Load shedding: the admission object (predicted wait = depth x measured cost, learnt from completions) and
the service path (a miss over the deadline is 503 + Retry-After at once; a cache hit never queues)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from search.http.app import create_app
from search.query.admission import Admission, MeasuredCost, Overloaded
from search.settings import TrafficSettings
from tests.admission_support import FixedCost
from tests.service_support import runtime_for, settings_for


def test_admits_while_the_predicted_wait_fits_the_deadline():
    admission = Admission(deadline_s=0.1, max_queue=100, cost=FixedCost(0.03))
    tickets = [admission.try_admit() for _ in range(3)]  # waits 0.03, 0.06, 0.09
    assert all(tickets) and admission.depth == 3
    assert admission.try_admit() is None  # 4 x 0.03 = 0.12 > 0.1
    with pytest.raises(Overloaded) as info:
        admission.admit()
    assert info.value.retry_after_s == pytest.approx(0.12)
    assert tickets[0] is not None
    tickets[0].release()
    tickets[0].release()  # idempotent
    assert admission.depth == 2 and admission.try_admit() is not None
    assert (admission.admitted, admission.rejected) == (4, 2)


def test_an_idle_encoder_always_admits_and_the_queue_is_bounded():
    admission = Admission(deadline_s=0.001, max_queue=2, cost=FixedCost(10.0))
    first = admission.try_admit()
    assert first is not None  # nothing queued: even a slow request goes (refusing it would help nobody)
    assert admission.try_admit() is None
    roomy = Admission(deadline_s=100, max_queue=2, cost=FixedCost(0.001))
    assert roomy.try_admit() and roomy.try_admit() and roomy.try_admit() is None


def test_measured_cost_learns_from_completions():
    cost = MeasuredCost(initial_s=0.5, weight=0.5)
    cost.observe(0.1)
    assert cost.predicted_cost() == pytest.approx(0.3)
    cost.observe(float("nan"))
    assert cost.predicted_cost() == pytest.approx(0.3)
    admission = Admission(deadline_s=10, max_queue=10, cost=cost)
    with admission.admit():
        pass
    assert cost.predicted_cost() < 0.3  # a near-instant request pulled the estimate down


def test_service_sheds_misses_but_keeps_serving_cache_hits(world):
    """The pipeline's own admission (QueryEmbedder.embed -> Admission.admit), so the entry shedder, which
    answers the same way before routing, is off: nothing else can refuse these requests."""
    settings = settings_for(world, traffic=TrafficSettings(deadline_ms=50, initial_cost_ms=20,
                                                           entry_shedding=False))
    with TestClient(create_app(settings, encoder=runtime_for(world)),
                    raise_server_exceptions=False) as c:
        warm = world.queries[0]["query"]
        assert c.get("/search", params={"q": warm}).json()["cache"] == "miss"
        admission = c.app.state.service.embedder.admission
        # the encoder is busy: 3 queued. The cost learnt from one miss is >= 16 ms (starts at 20 ms, weight 0.2),
        # so the next miss predicts >= 4 x 16 = 64 ms > 50 ms, however fast this machine encoded the first one
        held = [admission.admit(0.001) for _ in range(3)]
        rejected = admission.rejected
        shed = c.get("/search", params={"q": "a query nobody asked before"})
        assert shed.status_code == 503 and int(shed.headers["retry-after"]) >= 1
        assert admission.rejected == rejected + 1  # refused by the pipeline's admit(), not by a layer above
        assert "queue" in shed.json()["error"]
        hit = c.get("/search", params={"q": warm})
        assert hit.status_code == 200 and hit.json()["cache"] == "hit"  # hits bypass admission
        for ticket in held:
            ticket.release()
        assert c.get("/search", params={"q": "a query nobody asked before"}).status_code == 200
        metrics = c.get("/metrics").text
        assert 'photostock_errors_total{kind="503"}' in metrics
