"""Service area: the result-page cache on its own (no service): the exact key, the byte bound per page and in
all, LRU order, and when the page cache is off."""

from __future__ import annotations

import json

import numpy as np

from search.query.result_cache import ResultCache, page_key

VECTOR = np.arange(8, dtype=np.float32)
PAGE_OVERHEAD = 256  # what `put` charges a page besides its key's vector bytes and its hits as JSON


def _key(name: str = "v1") -> tuple[object, ...]:
    return page_key(name, frozenset(), ("spec",), VECTOR)


def _hits(n: int) -> list[dict[str, object]]:
    return [{"id": i} for i in range(n)]


def _json_bytes(n: int) -> int:
    """The size of a page of `_hits(n)` as the cache stores it (compact JSON)."""
    return len(json.dumps(_hits(n), separators=(",", ":")).encode())


def test_the_key_is_the_float32_bytes_whatever_the_vector_was_given_as():
    key = _key()
    assert key[-1] == VECTOR.tobytes()
    wide = np.zeros(16, np.float64)
    wide[::2] = np.arange(8)
    assert page_key("v1", frozenset(), ("spec",), wide[::2]) == key  # float64, strided: same key
    assert page_key("v2", frozenset(), ("spec",), VECTOR) != key


def test_for_rank_is_off_at_zero_megabytes_or_with_freshness_blending():
    assert ResultCache.for_rank(0.0, 0.0) is None
    assert ResultCache.for_rank(-1.0, 0.0) is None
    assert ResultCache.for_rank(4.0, 0.1) is None
    cache = ResultCache.for_rank(0.5, 0.0)
    assert cache is not None and cache.max_bytes == 512 * 1024


def test_a_page_is_charged_its_vector_bytes_an_overhead_and_its_json():
    cache = ResultCache(1 << 20)
    assert len(cache) == 0 and cache.nbytes == 0 and cache.get(_key()) is None
    cache.put(_key(), _hits(3), 3)
    assert len(cache) == 1 and cache.nbytes == VECTOR.nbytes + PAGE_OVERHEAD + _json_bytes(3)
    cache.put(("v1", "not bytes"), _hits(1), 1)  # a key whose last part is no vector is charged no vector bytes
    assert cache.nbytes == VECTOR.nbytes + 2 * PAGE_OVERHEAD + _json_bytes(3) + _json_bytes(1)


def test_a_page_as_big_as_the_cache_is_kept_a_bigger_one_is_not():
    exact = VECTOR.nbytes + PAGE_OVERHEAD + _json_bytes(2)
    cache = ResultCache(exact)
    cache.put(_key("big"), _hits(3), 3)
    assert len(cache) == 0
    cache.put(_key("fits"), _hits(2), 2)
    got = cache.get(_key("fits"))
    assert got is not None and got == ([{"id": 0}, {"id": 1}], 2)


def test_least_recently_used_page_goes_first():
    page = VECTOR.nbytes + PAGE_OVERHEAD + _json_bytes(1)
    cache = ResultCache(2 * page)
    cache.put(_key("a"), _hits(1), 1)
    cache.put(_key("b"), _hits(1), 1)
    assert cache.get(_key("a")) is not None  # a is now the most recent
    cache.put(_key("c"), _hits(1), 1)
    assert cache.get(_key("b")) is None
    assert cache.get(_key("a")) is not None and cache.get(_key("c")) is not None
    assert cache.nbytes == 2 * page


def test_stored_hits_are_copies_of_what_was_put():
    hits = _hits(2)
    cache = ResultCache(1 << 20)
    cache.put(_key(), hits, 9)
    hits[0]["id"] = 99
    hits.append({"id": 5})
    assert cache.get(_key()) == ([{"id": 0}, {"id": 1}], 9)
