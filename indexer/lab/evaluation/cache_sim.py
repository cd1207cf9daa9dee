"""Query-cache hit rate against cache size for a Zipf-distributed query log, replayed through the service's
own QueryEmbeddingCache (LRU with TTL) on a simulated clock, so TTL expiry is part of the answer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from search.query.text_cache import QueryEmbeddingCache, normalize_query

__all__ = ["zipf_ranks", "zipf_log", "replay", "hit_rate_curve"]


def zipf_ranks(distinct: int, length: int, exponent: float = 1.1, seed: int = 0) -> np.ndarray:
    """`length` draws of popularity ranks 0..distinct-1; rank r has weight (r + 1)^-exponent."""
    if distinct < 1 or length < 1 or exponent <= 0:
        raise ValueError("need distinct >= 1, length >= 1 and exponent > 0")
    weights = 1.0 / np.arange(1, distinct + 1, dtype=np.float64) ** exponent
    return np.random.default_rng(seed).choice(distinct, size=length, p=weights / weights.sum())


def zipf_log(distinct: int, length: int, exponent: float = 1.1, seed: int = 0) -> list[str]:
    """A query log over `distinct` query strings (differently cased, as users type, to exercise normalisation)."""
    return [f"Query Number {r}" if i % 2 else f"query number {r}"
            for i, r in enumerate(zipf_ranks(distinct, length, exponent, seed).tolist())]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replay(log: Sequence[str], maxsize: int, ttl_s: float = 3600.0, qps: float = 20.0) -> float:
    """Hit rate of one cache size over the log, queries arriving `qps` per second on a simulated clock."""
    clock = _Clock()
    cache = QueryEmbeddingCache(maxsize, ttl_s, timer=clock)
    vector = np.zeros(4, np.float32)  # the cache's behaviour does not depend on the vector's contents
    hits = 0
    for i, text in enumerate(log):
        clock.now = i / qps
        key = normalize_query(text)
        if cache.get(key) is None:
            cache.put(key, vector)
        else:
            hits += 1
    return hits / len(log)


def hit_rate_curve(log: Sequence[str], sizes: Sequence[int], ttl_s: float = 3600.0,
                   qps: float = 20.0) -> list[dict[str, float]]:
    distinct = len(set(normalize_query(t) for t in log))
    return [{"cache_size": int(s), "hit_rate": round(replay(log, int(s), ttl_s, qps), 4),
             "ceiling": round(1 - distinct / len(log), 4)} for s in sizes]
