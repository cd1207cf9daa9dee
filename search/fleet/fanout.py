"""The ingress's fan-out over remote shards (no Ray here: a shard is a function that starts a call and
returns something with `.result(timeout_s=...)`, as a Serve DeploymentResponse does).

Every shard is called at once; a call that fails or passes its deadline is made once more (Serve routes it to
a replica that is up); a shard whose second call fails too stops the search with ShardUnavailable (503 naming
the shard), never a page missing that shard's hits.

A shard deployment that may scale to zero (autoscaling min_replicas 0) has no replica after it idles: its next
call waits for one to start. `Warmth` tells such a call apart (no answer for half the deployment's delay to
zero) and gives it the cold-start budget instead of the per-call deadline, so the first query after idle is
answered, not retried into a 503; the budget stays bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from search.query.shard import ShardFanout, ShardHits, ShardQuery, ShardUnavailable

log = logging.getLogger(__name__)

__all__ = ["Pending", "RemoteShard", "ShardTiming", "Warmth", "fan_out"]


class Pending(Protocol):
    def result(self, *, timeout_s: float | None = None) -> Any: ...


@dataclass(frozen=True)
class ShardTiming:
    """How long the ingress waits for a shard: `timeout_s` per call (then one retry, then 503), or
    `cold_start_timeout_s` for a call that may wait for a replica to start (`idle_s`: the shards' delay to zero
    replicas; None: they never scale to zero)."""

    timeout_s: float
    cold_start_timeout_s: float
    idle_s: float | None = None


class Warmth:
    """When a deployment that may scale to zero last answered: a call after half its delay to zero (or before
    any answer) may find no replica, so it gets the cold-start budget."""

    def __init__(self, idle_s: float | None, clock: Callable[[], float] = time.monotonic):
        self.idle_s = idle_s
        self.clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def budget(self, timing: ShardTiming) -> float:
        """The deadline of the next first call."""
        if self.idle_s is None:
            return timing.timeout_s
        with self._lock:
            last = self._last
        cold = last is None or self.clock() - last >= self.idle_s / 2
        return max(timing.timeout_s, timing.cold_start_timeout_s) if cold else timing.timeout_s

    def answered(self) -> None:
        with self._lock:
            self._last = self.clock()


@dataclass(frozen=True)
class RemoteShard:
    name: str  # the deployment's name, as a 503 reports it
    call: Callable[[str, np.ndarray, Sequence[ShardQuery], frozenset[int]], Pending]  # (version dir, ...) -> call
    warmth: Warmth = field(default_factory=lambda: Warmth(None))  # idle_s None: it keeps a replica, always warm


def fan_out(shards: Sequence[RemoteShard], version_dir: str, hidden: frozenset[int],
            timing: ShardTiming) -> ShardFanout:
    """The fan-out `search_batch` calls for one batch over `version_dir`'s parts."""

    def fanout(qv: np.ndarray, asks: Sequence[ShardQuery]) -> Sequence[Sequence[ShardHits]]:
        args = (version_dir, qv, list(asks), hidden)
        budgets = [shard.warmth.budget(timing) for shard in shards]  # before the calls: a cold shard's wait
        pending = [shard.call(*args) for shard in shards]  # all shards at once
        return [_answer(shard, first, args, len(asks), budget, timing.timeout_s)
                for shard, first, budget in zip(shards, pending, budgets, strict=True)]
    return fanout


def _answer(shard: RemoteShard, first: Pending, args: tuple[Any, ...], asked: int, first_s: float,
            timeout_s: float) -> list[ShardHits]:
    """The shard's hits, from its first call (`first_s`: its budget) or its one retry."""
    try:
        hits = _checked(first.result(timeout_s=first_s), asked)
        shard.warmth.answered()
        return hits
    except Exception as exc:  # noqa: BLE001 - any failure of the first call earns the one retry
        log.warning("shard %s failed (%s); retrying once", shard.name, _one_line(exc))
    try:
        hits = _checked(shard.call(*args).result(timeout_s=timeout_s), asked)
        shard.warmth.answered()
        return hits
    except Exception as exc:  # noqa: BLE001 - reported as the shard's unavailability
        raise ShardUnavailable(shard.name, _one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _checked(hits: Any, asked: int) -> list[ShardHits]:
    out = list(hits)
    if len(out) != asked or not all(isinstance(h, ShardHits) for h in out):
        raise TypeError(f"expected {asked} ShardHits, got {len(out)} answers")
    return out
