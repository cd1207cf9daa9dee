"""When the ingress hedges a shard call (no Ray here): a call that has not answered by the shard's measured p95
gets a second call, which the Shard deployments' router sends to another replica than the first
(search/fleet/pinning.py); the first answer wins and the other call is cancelled.

The p95 is the shard's own, over a rolling window of its last answered calls (their time from the call to
its answer). Until the window holds `min_samples` answers the hedge waits the configured default; it never
waits less than the floor, so a fast shard's jitter does not double its load. Calls that failed or timed out
are not in the window (they have no answer time); the deadline and the one retry cover them.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HedgeRule", "LatencyWindow", "hedge_after_s"]


@dataclass(frozen=True)
class HedgeRule:
    """The fleet's hedge settings (fleet.yaml `hedge`, search/fleet/config.py), in seconds."""

    quantile: float = 0.95  # hedge after this quantile of the shard's answer times
    window: int = 200  # answers kept per shard
    min_samples: int = 20  # fewer answers than this: wait `default_s`
    floor_s: float = 0.005  # never hedge sooner
    default_s: float = 0.05  # the wait before the window has `min_samples` answers


def hedge_after_s(samples: Sequence[float], rule: HedgeRule) -> float:
    """Seconds to wait for a shard's call before hedging it: the `rule.quantile` of `samples` (nearest rank, so
    it is a time some call really took), at least the floor; the default while there are too few samples."""
    if len(samples) < rule.min_samples:
        return max(rule.floor_s, rule.default_s)
    ordered = sorted(samples)
    rank = max(1, math.ceil(rule.quantile * len(ordered)))
    return max(rule.floor_s, ordered[rank - 1])


class LatencyWindow:
    """One shard's last answer times (thread-safe: every batch's fan-out adds to it)."""

    def __init__(self, size: int = HedgeRule.window):
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)

    def hedge_after_s(self, rule: HedgeRule) -> float:
        with self._lock:
            samples = list(self._samples)
        return hedge_after_s(samples, rule)
