"""Service area: fast-then-exact answers. phase=fast answers from the ANN order alone (no rerank stage), both
phases go through the query cache, and the fast top-10 mostly survives into the full top-10."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from search.http.app import create_app
from search.settings import RuntimeSettings
from tests.service_support import runtime_for, settings_for


@pytest.fixture(scope="module")
def client(world):
    app = create_app(settings_for(world), encoder=runtime_for(world))
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        yield client


def test_fast_phase_is_ann_only_and_shares_the_cache_with_full(client, world):
    query = world.queries[3]["query"] + " (phase test)"
    fast = client.get("/search", params={"q": query, "k": 10, "phase": "fast"})
    assert fast.status_code == 200
    body = fast.json()
    assert body["phase"] == "fast" and body["cache"] == "miss" and len(body["hits"]) == 10
    assert "ann" in body["timings_ms"] and "rerank" not in body["timings_ms"]
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    full = client.get("/search", params={"q": query, "k": 10}).json()
    assert full["phase"] == "full" and "rerank" in full["timings_ms"]
    # the full answer runs the fp32 tower here, the fast one the artifact's int8 tower: separate cache keys
    assert full["cache"] == "miss"
    assert client.get("/search", params={"q": query, "k": 10}).json()["cache"] == "hit"
    assert client.get("/search", params={"q": query, "k": 10, "phase": "fast"}).json()["cache"] == "hit"


def test_fast_phase_shares_the_full_cache_when_both_run_the_same_tower(world):
    app = create_app(settings_for(world, runtime=RuntimeSettings(text_precision="int8")))
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        query = world.queries[4]["query"] + " (shared tower)"
        assert client.get("/search", params={"q": query, "k": 5, "phase": "fast"}).json()["cache"] == "miss"
        assert client.get("/search", params={"q": query, "k": 5}).json()["cache"] == "hit"


def test_fast_top10_survives_in_the_full_top10(client, world):
    overlaps = []
    for q in world.queries[:10]:
        fast = client.get("/search", params={"q": q["query"], "k": 10, "phase": "fast"}).json()
        full = client.get("/search", params={"q": q["query"], "k": 10}).json()
        overlaps.append(len({h["id"] for h in fast["hits"]} & {h["id"] for h in full["hits"]}) / 10)
    assert sum(overlaps) / len(overlaps) >= 0.8


def test_fast_phase_keeps_filters_and_rejects_unknown_phases(client, world):
    body = {"query": world.queries[0]["query"], "k": 5, "filters": {"orientation": "landscape"}}
    r = client.post("/search", params={"phase": "fast"}, json=body)
    assert r.status_code == 200 and r.json()["phase"] == "fast"
    assert all(h["width"] > h["height"] for h in r.json()["hits"])
    bad = client.get("/search", params={"q": "cat", "phase": "medium"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid request"
