"""Query normalisation and the query-embedding cache (bounded LRU + TTL, single-flight on misses).

The cache is exact: the key is the normalised query text plus the encoder identity, so a changed encoder
never serves a stale vector. Concurrent misses for the same key share one computation (single-flight), so a
burst of identical queries costs one encode.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import numpy as np
from cachetools import TTLCache

__all__ = ["normalize_query", "exact_query", "CacheStats", "QueryEmbeddingCache"]

_SPACE = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: queries that encode alike share one cache key."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_query(text: str) -> str:
    """Whitespace collapsed only: the key text for a cased tokenizer (HF towers: XLM-R, NLLB, SigLIP), whose tokens
    change with case and with NFKC's and casefold's folds ("Kreis" and "kreis", "groß" and "gross" are two
    vectors), so only texts that encode alike share one."""
    return _SPACE.sub(" ", text).strip()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    coalesced: int = 0  # misses that waited on another request's in-flight computation


class QueryEmbeddingCache:
    """TTLCache of query vectors with single-flight misses; `timer` is injectable so tests need no sleeps.

    Used from one asyncio event loop (the service's); the computation itself runs wherever `compute` puts it.
    """

    def __init__(self, maxsize: int, ttl_s: float, timer: Callable[[], float] = time.monotonic):
        self._cache: TTLCache[Hashable, np.ndarray] = TTLCache(maxsize=maxsize, ttl=ttl_s, timer=timer)
        self._inflight: dict[Hashable, asyncio.Future[np.ndarray]] = {}
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, key: Hashable) -> np.ndarray | None:
        return self._cache.get(key)

    def put(self, key: Hashable, vector: np.ndarray) -> None:
        vector = np.array(vector, dtype=np.float32)
        vector.setflags(write=False)  # shared between requests: nobody may modify it in place
        self._cache[key] = vector

    async def get_or_compute(self, key: Hashable,
                             compute: Callable[[], Awaitable[np.ndarray]]) -> tuple[np.ndarray, bool]:
        """(vector, hit). A miss computes once per key however many requests are waiting for it."""
        cached = self._cache.get(key)
        if cached is not None:
            self.stats.hits += 1
            return cached, True
        self.stats.misses += 1
        pending = self._inflight.get(key)
        if pending is not None:
            self.stats.coalesced += 1
            try:
                return await asyncio.shield(pending), False
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise  # this waiter itself was cancelled (perhaps in the same turn as the leader)
                return await self.get_or_compute(key, compute)  # only the leader was: compute it ourselves
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            vector = await compute()
            self.put(key, vector)
            future.set_result(self._cache.get(key, vector))
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves; no "never retrieved" noise
            raise
        finally:
            del self._inflight[key]
        return future.result(), False
