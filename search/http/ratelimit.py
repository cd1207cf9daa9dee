"""Per-client rate limits with the `limits` library (moving window).

A moving window of N hits per period behaves like a token bucket of N tokens refilled over the period, but
never lets a client burst 2N across a window edge. Storage: `traffic.rate_limit_storage`, a `limits` storage
URI. `memory://` (default) counts per process, so N replicas allow N times the rate; a shared one
(`redis://host:6379`, `memcached://host:11211`, with that client library installed) makes the limit
fleet-wide. When a shared storage fails, requests are let through (fail open: the limiter protects capacity,
it must not take the service down with it), counted in `photostock_errors_total{kind="rate_limit_storage"}` and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from limits import parse
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger(__name__)

__all__ = ["RateLimiter"]


class RateLimiter:
    """`hit(identity)` -> None when allowed, else seconds until the client may retry."""

    def __init__(self, rate: str, storage: str = "memory://", on_storage_error: Callable[[], None] | None = None):
        self.rate = rate
        self._item = parse(rate)  # ValueError for a malformed rate: caught at start-up
        try:
            backend = storage_from_string(storage)
        except ConfigurationError as exc:  # unknown scheme, or its client library is not installed
            raise ValueError(f"traffic.rate_limit_storage {storage!r}: {exc}") from exc
        self._limiter = MovingWindowRateLimiter(backend)
        self.on_storage_error = on_storage_error or (lambda: None)  # the service counts it in /metrics

    def hit(self, identity: str) -> float | None:
        try:
            if self._limiter.hit(self._item, identity):
                return None
            stats = self._limiter.get_window_stats(self._item, identity)
        except Exception as exc:  # a shared storage down or unreachable: fail open, counted and logged
            self.on_storage_error()
            log.warning("rate-limit storage failed (%s: %s): request let through", type(exc).__name__, exc)
            return None
        return max(0.0, stats.reset_time - time.time())
