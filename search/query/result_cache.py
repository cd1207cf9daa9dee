"""Exact cache of result pages: a repeated query skips ANN, rerank and the metadata read.

Why exact: a page is a pure function of (index version, taken-down ids, query vector, what was asked for). The
version is immutable, the taken-down set is part of the key (a takedown changes the set, so the old pages are
never hit again), the vector's bytes are the key (never a rounded or hashed stand-in), and the service's rank
settings are fixed for its life. The one input that is not in the key is the clock: freshness blending decays
with time, so a service that blends freshness does not cache pages (`ResultCache.for_rank`).

Bounded by bytes (the key's vector + the page as JSON) with LRU eviction (cachetools). A page is kept as one
JSON bytes object, not as dicts: thousands of cached pages would otherwise be tens of thousands of objects the
cyclic garbage collector walks on every full collection, on the event loop; `get` parses a fresh copy, which
callers may edit. Used from the event loop only.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any, NamedTuple

import numpy as np
from cachetools import LRUCache

__all__ = ["ResultCache", "page_key"]

_ENTRY_BYTES = 256  # the key's other parts and the entry's own bookkeeping


class _Page(NamedTuple):
    hits: bytes  # the page's hits as JSON (floats round-trip exactly)
    total: int
    nbytes: int  # what the entry holds: the key's vector bytes + the JSON + _ENTRY_BYTES


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
        hits: list[dict[str, Any]] = json.loads(page.hits)
        return hits, page.total

    def put(self, key: tuple[Hashable, ...], hits: list[dict[str, Any]], total: int) -> None:
        vector = key[-1]
        blob = json.dumps(hits, separators=(",", ":")).encode()
        nbytes = (len(vector) if isinstance(vector, bytes) else 0) + len(blob) + _ENTRY_BYTES
        if nbytes <= self.max_bytes:  # a page bigger than the whole cache is not kept
            self._pages[key] = _Page(blob, total, nbytes)

    def __len__(self) -> int:
        return len(self._pages)

    @property
    def nbytes(self) -> int:
        return int(self._pages.currsize)
