"""Exact cache of result pages: a repeated query skips ANN, rerank and the metadata read.

Why exact: a page is a pure function of (index version, taken-down ids, query vector, what was asked for). The
version is immutable, the taken-down set is part of the key (a takedown changes the set, so the old pages are
never hit again), the vector's bytes are the key (never a rounded or hashed stand-in), and the service's rank
settings are fixed for its life. The one input that is not in the key is the clock: freshness blending decays
with time, so a service that blends freshness does not cache pages (`ResultCache.for_rank`).

Bounded by bytes (vector + an estimate per hit) with LRU eviction (cachetools). Used from the event loop only.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

import numpy as np
from cachetools import LRUCache

__all__ = ["ResultCache", "page_key"]

_HIT_BYTES = 2560  # one hit dict with a photo's metadata (caption, tags, EXIF fields): ~2.5 KB by sys.getsizeof


class _Page(NamedTuple):
    hits: tuple[dict[str, Any], ...]
    total: int
    nbytes: int  # what the entry holds: the key's vector bytes + an estimate per hit


def page_key(version: str, hidden: frozenset[int], spec: Hashable, vector: np.ndarray) -> tuple[Hashable, ...]:
    """The exact key: `hidden` is the taken-down set object (its hash is cached by Python; a new takedown is a
    new set), `spec` a frozen SearchSpec, the vector by its float32 bytes."""
    return version, hidden, spec, np.ascontiguousarray(vector, dtype=np.float32).tobytes()


class ResultCache:
    """LRU of result pages within `max_bytes`; `get` returns a fresh list of fresh dicts (callers may edit)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._pages: LRUCache[Hashable, _Page] = LRUCache(maxsize=max_bytes, getsizeof=lambda page: page.nbytes)

    @classmethod
    def for_rank(cls, max_mb: float, freshness_weight: float) -> ResultCache | None:
        """None (no page cache) when disabled (0 MB) or when ranking reads the clock (freshness blending)."""
        if max_mb <= 0 or freshness_weight != 0.0:
            return None
        return cls(int(max_mb * 1024 * 1024))

    def get(self, key: tuple[Hashable, ...]) -> tuple[list[dict[str, Any]], int] | None:
        page = self._pages.get(key)
        if page is None:
            return None
        return [dict(hit) for hit in page.hits], page.total

    def put(self, key: tuple[Hashable, ...], hits: list[dict[str, Any]], total: int) -> None:
        vector = key[-1]
        nbytes = (len(vector) if isinstance(vector, bytes) else 0) + 256 + _HIT_BYTES * len(hits)
        if nbytes <= self.max_bytes:  # a page bigger than the whole cache is not kept
            self._pages[key] = _Page(tuple(dict(hit) for hit in hits), total, nbytes)

    def __len__(self) -> int:
        return len(self._pages)

    @property
    def nbytes(self) -> int:
        return int(self._pages.currsize)
