"""Service area: the query-embedding cache's single-flight rules on real asyncio tasks (no sleeps: waits are
polls with a deadline): who computes when the leader or a waiter is cancelled, what every caller gets back, and
the stored vector's type."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from search.query.text_cache import QueryEmbeddingCache


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), timeout_s)


def _vector(x: float) -> np.ndarray:
    return np.full(4, x, np.float64)  # as an encoder might return it: float64, writable


def test_every_caller_gets_the_stored_float32_read_only_vector():
    cache = QueryEmbeddingCache(maxsize=8, ttl_s=60)

    async def compute() -> np.ndarray:
        return _vector(1.0)

    async def run() -> tuple[np.ndarray, np.ndarray]:
        first, _ = await cache.get_or_compute("k", compute)
        second, _ = await cache.get_or_compute("k", compute)
        await cache.get_or_compute("k", compute)
        return first, second

    first, second = asyncio.run(run())
    assert first.dtype == np.float32 and not first.flags.writeable and first is cache.get("k")
    assert second is first and cache.stats.hits == 2 and cache.stats.misses == 1
    cache.put("j", [0.5, 0.25])
    stored = cache.get("j")
    assert stored is not None and stored.dtype == np.float32 and stored.tolist() == [0.5, 0.25]


def test_a_vector_that_expires_at_once_still_reaches_its_caller():
    ticks = iter(range(10**6))
    cache = QueryEmbeddingCache(maxsize=8, ttl_s=0.5, timer=lambda: float(next(ticks)))  # every read: 1 s later

    async def compute() -> np.ndarray:
        return _vector(3.0)

    vector, hit = asyncio.run(cache.get_or_compute("k", compute))
    assert not hit and vector is not None and vector.tolist() == [3.0] * 4


def test_when_the_leader_is_cancelled_a_waiter_computes_for_itself():
    cache = QueryEmbeddingCache(maxsize=8, ttl_s=60)

    async def run() -> tuple[np.ndarray, bool]:
        started, never = asyncio.Event(), asyncio.Event()

        async def stuck() -> np.ndarray:
            started.set()
            await never.wait()
            return _vector(1.0)

        async def quick() -> np.ndarray:
            return _vector(2.0)

        leader = asyncio.create_task(cache.get_or_compute("k", stuck))
        await asyncio.wait_for(started.wait(), 10)
        waiter = asyncio.create_task(cache.get_or_compute("k", quick))
        await _until(lambda: cache.stats.coalesced == 1)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        return await asyncio.wait_for(waiter, 10)

    vector, hit = asyncio.run(run())
    assert vector.tolist() == [2.0] * 4 and not hit
    stored = cache.get("k")
    assert stored is not None and stored.tolist() == [2.0] * 4


def test_a_cancelled_waiter_is_cancelled_and_the_leader_still_finishes():
    cache = QueryEmbeddingCache(maxsize=8, ttl_s=60)

    async def run() -> np.ndarray:
        started, go = asyncio.Event(), asyncio.Event()

        async def slow() -> np.ndarray:
            started.set()
            await go.wait()
            return _vector(1.0)

        leader = asyncio.create_task(cache.get_or_compute("k", slow))
        await asyncio.wait_for(started.wait(), 10)
        waiter = asyncio.create_task(cache.get_or_compute("k", slow))
        await _until(lambda: cache.stats.coalesced == 1)
        waiter.cancel()
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        vector, _ = await asyncio.wait_for(leader, 10)
        return vector

    assert asyncio.run(run()).tolist() == [1.0] * 4
