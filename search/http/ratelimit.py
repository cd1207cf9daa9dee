"""Per-client rate limits with the `limits` library (moving window, in-process memory storage).

A moving window of N hits per period behaves like a token bucket of N tokens refilled over the period, but
never lets a client burst 2N across a window edge. One process, one storage: behind several workers each
counts on its own (put a shared limiter in the proxy for a fleet).
"""

from __future__ import annotations

import time

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

__all__ = ["RateLimiter"]


class RateLimiter:
    """`hit(identity)` -> None when allowed, else seconds until the client may retry."""

    def __init__(self, rate: str):
        self.rate = rate
        self._item = parse(rate)  # ValueError for a malformed rate: caught at start-up
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, identity: str) -> float | None:
        if self._limiter.hit(self._item, identity):
            return None
        stats = self._limiter.get_window_stats(self._item, identity)
        return max(0.0, stats.reset_time - time.time())
