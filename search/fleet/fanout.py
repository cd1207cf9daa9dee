"""The ingress's fan-out over remote shards (no Ray here: a shard is a function that starts a call and
returns something with `.result(timeout_s=...)` and `.cancel()`, as a Serve DeploymentResponse does).

Every shard is called at once. Per shard and batch, at most three calls:
- the first call, with the shard's deadline;
- a hedge: when the first has not answered by the shard's measured p95 (search/fleet/hedge.py), a second call;
  the first answer wins, the other call is cancelled;
- one retry, when every call made so far failed or passed its deadline.
Each call carries a `CallTag` (one id per shard and batch, and the call's kind): the Shard deployments' router
sends a hedge or retry to another replica than the id's earlier calls went to (search/fleet/pinning.py).
A shard whose calls all fail stops the search with ShardUnavailable (503 naming the shard), never a page
missing that shard's hits. Waiting on the calls happens in a small thread pool (each waiter blocks on one
call's `.result`), so one fan-out thread follows every shard's calls and hedge times at once.

A shard deployment that may scale to zero (autoscaling min_replicas 0) has no replica after it idles: its next
call waits for one to start. `Warmth` tells such a call apart (no answer for half the deployment's delay to
zero) and gives it the cold-start budget instead of the per-call deadline, so the first query after idle is
answered, not retried into a 503; the budget stays bounded. A cold call is not hedged (a second call would
wait for the same starting replica). A query the encoder must embed wakes its cold shards as the encode starts
(`encode_waking`), so Serve starts the encoder's and the shards' replicas together, not one after the other.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from search.fleet.hedge import HedgeRule, LatencyWindow
from search.fleet.pinning import CallKind, CallTag
from search.query.shard import ShardFanout, ShardHits, ShardQuery, ShardUnavailable

log = logging.getLogger(__name__)

__all__ = ["CallCounter", "Pending", "RemoteShard", "ShardTiming", "Warmth", "encode_waking", "fan_out", "wake_cold"]

T = TypeVar("T")


class Pending(Protocol):
    def result(self, *, timeout_s: float | None = None) -> Any: ...

    def cancel(self) -> None: ...


@dataclass(frozen=True)
class ShardTiming:
    """How long the ingress waits for a remote part: `timeout_s` per call (then one retry, then 503), or
    `cold_start_timeout_s` for a call that may wait for a replica to start (`idle_s`: the part's delay to zero
    replicas; None: it never scales to zero). `hedge`: when a shard call gets a second one (None: never)."""

    timeout_s: float
    cold_start_timeout_s: float
    idle_s: float | None = None
    hedge: HedgeRule | None = None


class Warmth:
    """When a deployment that may scale to zero last answered: a call after half its delay to zero (or before
    any answer) may find no replica, so it gets the cold-start budget."""

    def __init__(self, idle_s: float | None, clock: Callable[[], float] = time.monotonic):
        self.idle_s = idle_s
        self.clock = clock
        self._last: float | None = None
        self._waking = False
        self._lock = threading.Lock()

    def _cold(self) -> bool:  # under the lock
        return self.idle_s is not None and (self._last is None or self.clock() - self._last >= self.idle_s / 2)

    def budget(self, timing: ShardTiming) -> float:
        """The deadline of the next first call."""
        with self._lock:
            cold = self._cold()
        return max(timing.timeout_s, timing.cold_start_timeout_s) if cold else timing.timeout_s

    def wake_due(self) -> bool:
        """True when the deployment may be at zero replicas and no wake-up call is out for it (then one is: the
        caller makes it), so the queries of one cold spell wake it once."""
        with self._lock:
            if self._waking or not self._cold():
                return False
            self._waking = True
            return True

    def woken(self, answered: bool) -> None:
        """The wake-up call ended: answered (a replica is up), or failed (the next cold query wakes it again)."""
        with self._lock:
            self._waking = False
            if answered:
                self._last = self.clock()

    def answered(self) -> None:
        with self._lock:
            self._last = self.clock()


@dataclass(frozen=True)
class RemoteShard:
    name: str  # the deployment's name, as a 503 reports it
    call: Callable[[str, np.ndarray, Sequence[ShardQuery], frozenset[int], CallTag], Pending]  # (version dir, ...)
    warmth: Warmth = field(default_factory=lambda: Warmth(None))  # idle_s None: it keeps a replica, always warm
    latency: LatencyWindow = field(default_factory=LatencyWindow)  # its answered calls' times (the hedge's p95)
    wake: Callable[[], Pending] | None = None  # a call that does nothing but needs a replica (None: never woken)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _waiters() -> ThreadPoolExecutor:
    """The threads that wait on shard calls (started on the first fan-out, not at import)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=128, thread_name_prefix="shard-call")
        return _pool


CallCounter = Callable[[str, str], None]  # (shard name, "first" | "hedge" | "retry" | "wake"): one call made


def wake_cold(shards: Sequence[RemoteShard], timing: ShardTiming, count: CallCounter | None = None) -> None:
    """Start a wake-up call to each shard that may be at zero replicas, without waiting for it: Serve starts a
    replica for it now. A query vector comes first from the encoder, which may be at zero too; woken only by
    the search call after the encode, the shards' replicas would start after the encoder's, the two cold
    starts adding up."""
    for shard in shards:
        if shard.wake is None or not shard.warmth.wake_due():
            continue
        if count is not None:
            count(shard.name, "wake")
        try:
            pending = shard.wake()
        except Exception as exc:  # noqa: BLE001 - not woken: its search call waits for the replica instead
            log.debug("waking shard %s failed: %s", shard.name, _one_line(exc))
            shard.warmth.woken(answered=False)
            continue
        _waiters().submit(_woken, shard, pending, max(timing.timeout_s, timing.cold_start_timeout_s))


async def encode_waking(encode: Callable[[], Awaitable[T]], shards: Sequence[RemoteShard], timing: ShardTiming,
                        count: CallCounter | None = None) -> T:
    """`encode()`'s answer (the ingress's call to the encoder), its cold shards woken as it starts."""
    wake_cold(shards, timing, count)
    return await encode()


def _woken(shard: RemoteShard, pending: Pending, timeout_s: float) -> None:
    try:
        pending.result(timeout_s=timeout_s)
    except Exception as exc:  # noqa: BLE001 - a wake-up that fails costs only its overlap: the search call waits
        log.debug("waking shard %s failed: %s", shard.name, _one_line(exc))
        shard.warmth.woken(answered=False)
        _cancel(pending)  # one past its deadline would otherwise stay queued
        return
    shard.warmth.woken(answered=True)


def fan_out(shards: Sequence[RemoteShard], version_dir: str, hidden: frozenset[int],
            timing: ShardTiming, count: CallCounter | None = None) -> ShardFanout:
    """The fan-out `search_batch` calls for one batch over `version_dir`'s parts (`count`: told of every call
    made, for the ingress's metrics)."""

    def fanout(qv: np.ndarray, asks: Sequence[ShardQuery]) -> Sequence[Sequence[ShardHits]]:
        args = (version_dir, qv, list(asks), hidden)
        budgets = [shard.warmth.budget(timing) for shard in shards]  # before the calls: a cold shard's wait
        calls = [_ShardCalls(shard, args, len(asks), budget, timing, count)
                 for shard, budget in zip(shards, budgets, strict=True)]
        try:
            while True:
                now = time.monotonic()
                open_ = [c for c in calls if not c.step(now)]
                if not open_:
                    return [c.hits for c in calls]
                hedges = [c.hedge_at for c in open_ if c.hedge_at is not None]
                wait([f for c in open_ for f in c.unseen()], return_when=FIRST_COMPLETED,
                     timeout=max(0.0, min(hedges) - now) if hedges else None)
        except BaseException:
            for c in calls:
                c.cancel_outstanding()
            raise
    return fanout


@dataclass
class _Call:
    pending: Pending
    answer: Future[tuple[list[ShardHits], float]]  # the hits and the seconds from call to answer
    failed: bool = False  # seen failed by `step` (a call that finished after `step` looked is waited on)


_Args = tuple[str, np.ndarray, list[ShardQuery], frozenset[int]]  # a shard search's arguments, less its tag


class _ShardCalls:
    """One shard's calls for one batch: the first, at most one hedge, at most one retry."""

    def __init__(self, shard: RemoteShard, args: _Args, asked: int, first_s: float, timing: ShardTiming,
                 count: CallCounter | None):
        self.shard, self.args, self.asked, self.timing, self.count = shard, args, asked, timing, count
        self.calls: list[_Call] = []
        self.hits: list[ShardHits] = []
        self.retried = False
        self.id = uuid.uuid4().hex  # the tag of this shard's calls for this batch
        warm = first_s <= timing.timeout_s
        self.hedge_at = (time.monotonic() + shard.latency.hedge_after_s(timing.hedge)
                         if timing.hedge is not None and warm else None)
        self._start(first_s, "first")

    def _start(self, timeout_s: float, kind: CallKind) -> None:
        if self.count is not None:
            self.count(self.shard.name, kind)
        started = time.monotonic()
        pending = self.shard.call(*self.args, CallTag(self.id, kind))
        self.calls.append(_Call(pending, _waiters().submit(_settle, pending, timeout_s, self.asked, started)))

    def unseen(self) -> list[Future[tuple[list[ShardHits], float]]]:
        """The calls whose end `step` has not handled yet: the fan-out waits for the first of them."""
        return [c.answer for c in self.calls if not c.failed]

    def step(self, now: float) -> bool:
        """True once the shard has answered; starts the hedge or the retry when due; ShardUnavailable when
        its calls (retry included) all failed."""
        for call in self.calls:
            done = call.answer.done()  # read once: a call may end while this runs
            if done and call.answer.exception() is None:
                self.hits, seconds = call.answer.result()
                self.shard.latency.add(seconds)
                self.shard.warmth.answered()
                self.cancel_outstanding()
                return True
            call.failed = done
        if all(call.failed for call in self.calls):  # every call so far failed or passed its deadline
            last = self.calls[-1].answer.exception()
            assert last is not None
            if self.retried:
                raise ShardUnavailable(self.shard.name, _one_line(last)) from last
            log.warning("shard %s failed (%s); retrying once", self.shard.name, _one_line(last))
            self.retried, self.hedge_at = True, None
            self._start(self.timing.timeout_s, "retry")
        elif self.hedge_at is not None and now >= self.hedge_at:
            log.debug("shard %s has not answered by its p95; hedging", self.shard.name)
            self.hedge_at = None
            self._start(self.timing.timeout_s, "hedge")
        return False

    def cancel_outstanding(self) -> None:
        """Cancel the calls still running (the hedge's loser, or the rest after a 503), off this thread: a
        Serve cancel may wait for the call's replica assignment."""
        for call in self.calls:
            if not call.answer.done():
                _waiters().submit(_cancel, call.pending)


def _settle(pending: Pending, timeout_s: float, asked: int, started: float) -> tuple[list[ShardHits], float]:
    hits = _checked(pending.result(timeout_s=timeout_s), asked)
    return hits, time.monotonic() - started


def _cancel(pending: Pending) -> None:
    try:
        pending.cancel()
    except Exception as exc:  # noqa: BLE001 - a call that cannot be cancelled ends at its deadline anyway
        log.debug("cancelling a shard call failed: %s", _one_line(exc))


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _checked(hits: Any, asked: int) -> list[ShardHits]:
    out = list(hits)
    if len(out) != asked or not all(isinstance(h, ShardHits) for h in out):
        raise TypeError(f"expected {asked} ShardHits, got {len(out)} answers")
    return out
