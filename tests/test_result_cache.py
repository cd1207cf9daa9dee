"""The exact result-page cache: a repeated request skips ANN, rerank and metadata and answers the same page;
anything that could change the page (version, takedowns, the request, the vector) misses; bounded by bytes."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from search.http.app import create_app
from search.query.filters import Filters
from search.query.pipeline import SearchSpec
from search.query.result_cache import ResultCache, page_key
from search.settings import CacheSettings, RankSettings
from tests.service_support import runtime_for, settings_for


def _hits(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"id": start + i, "score": 1.0 - i / 100, "tags": ["a"]} for i in range(n)]


def _key(version: str = "v1", hidden: frozenset[int] = frozenset(), k: int = 10, seed: int = 0) -> tuple[object, ...]:
    vector = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return page_key(version, hidden, SearchSpec(k=k), vector)


def test_pages_come_back_as_fresh_copies() -> None:
    cache = ResultCache(1 << 20)
    cache.put(_key(), _hits(3), 7)
    first = cache.get(_key())
    assert first is not None and first[1] == 7 and [h["id"] for h in first[0]] == [0, 1, 2]
    first[0][0]["id"] = 99  # a caller editing its copy changes nothing cached
    first[0].clear()
    again = cache.get(_key())
    assert again is not None and [h["id"] for h in again[0]] == [0, 1, 2]


def test_every_part_of_the_key_matters() -> None:
    cache = ResultCache(1 << 20)
    cache.put(_key(), _hits(3), 3)
    assert cache.get(_key()) is not None
    assert cache.get(_key(version="v2")) is None
    assert cache.get(_key(hidden=frozenset({1}))) is None
    assert cache.get(_key(k=11)) is None
    assert cache.get(_key(seed=1)) is None
    other = page_key("v1", frozenset(), SearchSpec(k=10, filters=Filters(orientation="portrait")),
                     np.random.default_rng(0).standard_normal(8).astype(np.float32))
    assert cache.get(other) is None


def test_bounded_by_bytes_least_recently_used_first() -> None:
    one_page = len(_key()[-1]) + 256 + len(json.dumps(_hits(10), separators=(",", ":")))  # a 10-hit page
    cache = ResultCache(3 * one_page)
    for seed in range(3):
        cache.put(_key(seed=seed), _hits(10), 10)
    assert cache.get(_key(seed=0)) is not None  # now the most recently used
    cache.put(_key(seed=3), _hits(10), 10)
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes
    assert cache.get(_key(seed=1)) is None  # the least recently used went
    assert cache.get(_key(seed=0)) is not None and cache.get(_key(seed=3)) is not None
    cache.put(_key(seed=9), _hits(100), 100)  # bigger than the whole cache: not kept, nothing evicted
    assert cache.get(_key(seed=9)) is None and len(cache) == 3


def test_cached_pages_leave_nothing_for_the_garbage_collector_to_walk() -> None:
    cache = ResultCache(1 << 24)
    gc.collect()
    before = len(gc.get_objects())
    for seed in range(200):
        cache.put(_key(seed=seed), _hits(20), 20)
    gc.collect()
    assert (len(gc.get_objects()) - before) / 200 <= 4  # the key's spec and filters, not one object per hit


@pytest.mark.parametrize("max_mb, freshness, enabled", [(64, 0.0, True), (0, 0.0, False), (64, 0.1, False)])
def test_off_when_disabled_or_when_ranking_reads_the_clock(max_mb: float, freshness: float, enabled: bool) -> None:
    assert (ResultCache.for_rank(max_mb, freshness) is not None) is enabled


def _stages(response) -> set[str]:  # type: ignore[no-untyped-def]
    return {part.split(";")[0].strip() for part in response.headers["Server-Timing"].split(",")}


def _page_cache_hits(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('photostock_page_cache_total{result="hit"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_repeated_search_answers_the_same_page_without_ann(world) -> None:
    with TestClient(create_app(settings_for(world), encoder=runtime_for(world))) as client:
        params = {"q": "a red circle", "k": 5}
        first = client.get("/search", params=params)
        again = client.get("/search", params=params)
        assert first.status_code == again.status_code == 200
        assert again.json()["hits"] == first.json()["hits"] and again.json()["total"] == first.json()["total"]
        assert "ann" in _stages(first) and "ann" not in _stages(again) and "page_cache" in _stages(again)
        assert _page_cache_hits(client) == 1
        deeper = client.get("/search", params={**params, "offset": 5})  # another page of the same query: a miss
        assert "ann" in _stages(deeper) and {h["id"] for h in deeper.json()["hits"]}.isdisjoint(
            {h["id"] for h in first.json()["hits"]})
        similar_id = first.json()["hits"][0]["id"]
        similar = [client.get(f"/search/similar/{similar_id}", params={"k": 5}) for _ in range(2)]
        assert similar[0].json()["hits"] == similar[1].json()["hits"] and "ann" not in _stages(similar[1])
        assert similar_id not in {h["id"] for h in similar[1].json()["hits"]}


def test_freshness_blending_searches_every_time(world) -> None:
    settings = settings_for(world, rank=RankSettings(freshness_weight=0.1), cache=CacheSettings(results_max_mb=64))
    with TestClient(create_app(settings, encoder=runtime_for(world))) as client:
        responses = [client.get("/search", params={"q": "a red circle", "k": 5}) for _ in range(2)]
        assert all("ann" in _stages(r) and "page_cache" not in _stages(r) for r in responses)
        assert _page_cache_hits(client) == 0
