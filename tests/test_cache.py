"""Service area: query normalisation and the query-embedding cache (TTL with a fake timer, single-flight)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from search.query.text_cache import QueryEmbeddingCache, exact_query, normalize_query


async def until(condition, timeout_s: float = 10.0) -> None:
    """Yield to the event loop until `condition()` holds; a TimeoutError (a failed test) after `timeout_s`
    rather than a spin that never ends when the cache stops counting."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0)


class FakeTimer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_exact_query_keeps_what_a_cased_tokenizer_reads():
    """HF tokenizers read case and NFKC's folds: only whitespace is collapsed in their key text."""
    assert exact_query("  ein großer\tKreis \n") == "ein großer Kreis"
    assert exact_query("Kreis") != exact_query("kreis")
    assert exact_query("ＲＥＤ") == "ＲＥＤ"


def test_normalize_query_nfkc_case_whitespace():
    assert normalize_query("  A  Red\tCAR\n") == "a red car"
    assert normalize_query("ＲＥＤ ｃａｒ") == "red car"  # full-width forms fold under NFKC
    assert normalize_query("Straße") == normalize_query("STRASSE")
    assert normalize_query(" \t ") == ""


def _vec(x: float) -> np.ndarray:
    return np.full(4, x, np.float32)


def test_hit_after_miss_returns_identical_vector():
    cache = QueryEmbeddingCache(maxsize=8, ttl_s=60)

    async def run():
        first, hit1 = await cache.get_or_compute("k", _async(_vec(1.0)))
        second, hit2 = await cache.get_or_compute("k", _async(_vec(2.0)))
        return first, hit1, second, hit2

    first, hit1, second, hit2 = asyncio.run(run())
    assert (hit1, hit2) == (False, True)
    np.testing.assert_array_equal(first, second)
    assert cache.stats.hits == 1 and cache.stats.misses == 1
    with pytest.raises(ValueError):
        second[0] = 5.0  # shared vectors are read-only


def _async(value):
    async def compute():
        return value
    return compute


def test_ttl_expiry_with_injected_timer():
    timer = FakeTimer()
    cache = QueryEmbeddingCache(maxsize=8, ttl_s=10, timer=timer)
    cache.put("k", _vec(1.0))
    timer.now = 9.9
    assert cache.get("k") is not None
    timer.now = 10.1
    assert cache.get("k") is None


def test_lru_bound():
    cache = QueryEmbeddingCache(maxsize=2, ttl_s=60)
    cache.put("a", _vec(1))
    cache.put("b", _vec(2))
    assert cache.get("a") is not None  # a is now most recently used
    cache.put("c", _vec(3))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2


def test_single_flight_concurrent_misses_compute_once():
    cache = QueryEmbeddingCache(maxsize=8, ttl_s=60)
    calls = []

    async def run():
        release = asyncio.Event()

        async def compute():
            calls.append(1)
            await release.wait()
            return _vec(7.0)

        tasks = [asyncio.create_task(cache.get_or_compute("same", compute)) for _ in range(20)]
        try:
            await until(lambda: len(calls) > 0 and cache.stats.misses >= 20)  # every task waits on the flight
        finally:
            release.set()  # on a timeout too: the tasks finish, so the failure is reported instead of a hang
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert len(calls) == 1
    assert cache.stats.coalesced == 19
    for vector, hit in results:
        assert not hit
        np.testing.assert_array_equal(vector, _vec(7.0))


def test_failed_computation_reaches_every_waiter_and_is_not_cached():
    cache = QueryEmbeddingCache(maxsize=8, ttl_s=60)

    async def run():
        release = asyncio.Event()

        async def boom():
            await release.wait()
            raise RuntimeError("encoder failed")

        tasks = [asyncio.create_task(cache.get_or_compute("k", boom)) for _ in range(3)]
        try:
            await until(lambda: cache.stats.misses >= 3)
        finally:
            release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert cache.get("k") is None


def _leader_and_waiter(cancel_waiter_too: bool) -> tuple[list[int], object]:
    """A leader computing key "k" and one waiter on it; the leader is cancelled (and, if asked, the waiter in
    the same turn). Returns the compute calls and the waiter's outcome."""
    cache = QueryEmbeddingCache(maxsize=8, ttl_s=60)
    calls: list[int] = []

    async def run() -> object:
        release = asyncio.Event()

        async def compute() -> np.ndarray:
            calls.append(1)
            await release.wait()
            return _vec(3.0)

        leader = asyncio.create_task(cache.get_or_compute("k", compute))
        await until(lambda: len(calls) == 1)
        waiter = asyncio.create_task(cache.get_or_compute("k", compute))
        await until(lambda: cache.stats.coalesced == 1)
        leader.cancel()
        if cancel_waiter_too:
            waiter.cancel()
        release.set()
        results = await asyncio.gather(leader, waiter, return_exceptions=True)
        return results[1]

    return calls, asyncio.run(run())


def test_a_waiter_whose_leader_is_cancelled_computes_the_vector_itself():
    calls, outcome = _leader_and_waiter(cancel_waiter_too=False)
    assert len(calls) == 2
    vector, hit = outcome  # type: ignore[misc]
    np.testing.assert_array_equal(vector, _vec(3.0))


def test_a_waiter_cancelled_with_its_leader_stays_cancelled():
    """Both cancelled in one turn: the waiter's own cancellation must not be taken for the leader's and
    swallowed (a client that went away would still cost an encode)."""
    calls, outcome = _leader_and_waiter(cancel_waiter_too=True)
    assert isinstance(outcome, asyncio.CancelledError)
    assert len(calls) == 1
