"""A pool of encode sessions on one or more devices, fed by one dispatch rule that also forms the micro-batches.

Why one component: a batch should form as late as possible (everything that arrived while the devices were
busy rides along), and where it goes depends on the same clock. Whenever a request arrives or a member frees
up, the dispatch asks every healthy member "when would you finish this batch?" (time left on its running
batch + measured cost of this one, `CostModel`). It sends the batch at once when the member that finishes first
is idle. When that member is busy, the batch waits for it, unless the oldest request would then exceed the
pool's latency budget while another member is idle: then it overflows there (the CPU helping the GPU).

No timer: a lone request on an idle device is dispatched immediately; under load the batching window is the
time the current batch takes (it adapts to load by itself). Dispatch runs on the thread that changed the state
(the event loop's `submit`, or a member that just finished), so a request reaches its member in one hand-off
and a member that frees up takes the next batch without waking anyone; a watchdog thread only wakes for
timeouts. Each member runs one batch at a time on its own thread; results go back to the event loop in one call
per batch, before the member's bookkeeping. A member that raises, or runs longer than `timeout_s`, is taken out
(metric + log line) and its batch is retried once elsewhere; with no member left the pool is not ready and
waiting requests fail with `PoolUnavailable`. An input that `collate` cannot prepare (a caller's bad argument,
such as a source language the tower does not take) is not the member's fault and would fail on every member:
that request alone fails with a `ValueError` (`InputError` when collate raised another type), its batch-mates
go back to the head of the queue, and the member stays in the pool.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from search.runtime.costs import CostModel

log = logging.getLogger(__name__)

__all__ = ["Collate", "EncodeFn", "InputError", "Member", "PoolMetrics", "PoolUnavailable", "SessionPool",
           "stack_rows"]

EncodeFn = Callable[[np.ndarray], np.ndarray]
Collate = Callable[[list[Any], int], np.ndarray]  # (inputs, batch's longest real length) -> the stacked batch
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class PoolUnavailable(RuntimeError):
    """No healthy encode session is left (or the pool is closed)."""


class InputError(ValueError):
    """A request's input could not be prepared for encoding (`collate` raised): the caller's error, not a fault
    of the session that was to run it."""


@dataclass(eq=False)
class _Request:
    row: Any  # one input: a token-id row, pixels, or (with a collate function) raw text
    length: int  # real length (tokens up to EOT; 1 for fixed-size inputs)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[np.ndarray]
    enqueued: float
    attempts: int = 0


@dataclass
class _Batch:
    requests: list[_Request]
    length: int
    reason: str
    solo: bool = False  # one request and nothing else running or waiting: the member's solo session may run it


@dataclass(eq=False)
class Member:
    """One session on one device. `run` takes a stacked batch and returns one vector per row."""

    name: str
    device: str
    run: EncodeFn
    cost: CostModel = field(default_factory=CostModel)
    max_batch: int = 32
    healthy: bool = True
    running: _Batch | None = None
    started: float = 0.0
    predicted: float = 0.0
    inbox: queue.SimpleQueue[_Batch | None] = field(default_factory=queue.SimpleQueue)
    solo: EncodeFn | None = None  # a session with more threads, for a lone request when the pool is idle

    def remaining(self, now: float) -> float:
        return max(0.0, self.started + self.predicted - now) if self.running is not None else 0.0


class PoolMetrics:
    """Per-device queue, batch size and latency series (registered in the service's registry)."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "photostock_pool"):
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.pending = Gauge(f"{prefix}_pending", "Requests waiting for a batch", registry=r)
        self.in_flight = Gauge(f"{prefix}_in_flight_rows", "Rows being encoded per member", ["member"], registry=r)
        self.batch_size = Histogram(f"{prefix}_batch_size", "Rows per dispatched batch", ["member"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.encode_seconds = Histogram(f"{prefix}_encode_seconds", "Batch encode time per member", ["member"],
                                        buckets=_BUCKETS, registry=r)
        self.queue_wait = Histogram(f"{prefix}_queue_wait_seconds", "Request wait before its batch started",
                                    ["member"], buckets=_BUCKETS, registry=r)
        self.dispatches = Counter(f"{prefix}_dispatch_total", "Batches sent, by member and reason",
                                  ["member", "reason"], registry=r)
        self.up = Gauge(f"{prefix}_member_up", "1 while the member is in the pool", ["member"], registry=r)
        self.failures = Counter(f"{prefix}_member_failures_total", "Members taken out, by kind",
                                ["member", "kind"], registry=r)


class SessionPool:
    """`await submit(row, length)` -> vector. Members: first = primary (the one expected to be fastest)."""

    def __init__(self, members: list[Member], latency_budget_s: float = 0.05, timeout_s: float = 5.0,
                 metrics: PoolMetrics | None = None, on_batch: Callable[[int], None] | None = None,
                 batch_budget_s: float | None = None, collate: Collate | None = None):
        if not members:
            raise ValueError("a session pool needs at least one member")
        self.members = members
        self.latency_budget_s = latency_budget_s  # overflow: the oldest request's expected wait above this
        self.batch_budget_s = batch_budget_s or latency_budget_s  # batch-size cap: measured cost within this
        self.timeout_s = timeout_s
        self.metrics = metrics or PoolMetrics()
        self.on_batch = on_batch or (lambda size: None)
        self.collate = collate or stack_rows  # runs on the member's thread, never on the event loop
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads: list[threading.Thread] = []
        for m in members:
            self.metrics.up.labels(member=m.name).set(1)
            self._threads.append(threading.Thread(target=self._work, args=(m,), name=f"encode-{m.name}",
                                                  daemon=True))
            self._threads[-1].start()
        self._watchdog = threading.Thread(target=self._watch, name="encode-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def ready(self) -> bool:
        return not self._closed and any(m.healthy for m in self.members)

    async def submit(self, row: Any, length: int) -> np.ndarray:
        """`row`: one input for `collate`; `length`: its real length (or an estimate: it only prices the batch)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        with self._cond:
            if not self.ready:
                raise PoolUnavailable("no encode session is left in the pool")
            now = time.perf_counter()
            self._pending.append(_Request(row, length, loop, future, now))
            self._dispatch_ready(now)
            self.metrics.pending.set(len(self._pending))
        return await future

    def close(self) -> None:
        """Fail what waits, stop the threads and wait (at most `timeout_s` in all) for a batch still running:
        an interpreter that exits while a daemon thread is inside a native encoder can abort. A member taken out
        may be stuck in its encoder for good and is not waited for."""
        with self._cond:
            self._closed = True
            self._fail_pending(PoolUnavailable("the encode pool is closed"))
            self._cond.notify_all()
        for m in self.members:
            m.inbox.put(None)
        deadline = time.perf_counter() + self.timeout_s
        for m, thread in zip(self.members, self._threads, strict=True):
            if m.healthy and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.perf_counter()))
        self._watchdog.join(max(0.0, deadline - time.perf_counter()))

    # -- dispatch (under the lock, on whichever thread changed the state) ---------------------------------
    def _dispatch_ready(self, now: float) -> None:
        """Send every batch that can go now to its member's inbox; wake the watchdog to time the new batches."""
        if not any(m.healthy for m in self.members):
            self._fail_pending(PoolUnavailable("no encode session is left in the pool"))
            return
        sent = False
        while self._pending:
            member, reason = self._place(now)
            if member is None:
                break
            batch = self._take(member, reason)
            batch.solo = (member.solo is not None and len(batch.requests) == 1 and not self._pending
                          and all(m.running is None for m in self.members))
            member.running, member.started = batch, now
            member.predicted = member.cost.predict(len(batch.requests), batch.length)
            self._account(member, batch, now)
            member.inbox.put(batch)
            sent = True
        if sent:
            self._cond.notify_all()

    def _watch(self) -> None:
        """The watchdog: sleeps until the earliest running batch would time out, takes hung members out and
        re-dispatches their batches."""
        with self._cond:
            while not self._closed:
                now = time.perf_counter()
                self._take_out_hung(now)
                self._dispatch_ready(now)
                self._cond.wait(self._next_deadline(now))

    def _place(self, now: float) -> tuple[Member | None, str]:
        """Where the head of the queue goes now (None: wait for a member to free up).

        The member that finishes it first, if idle. Else, when draining the queue on that member (queue depth x
        measured cost) would keep the oldest request past the latency budget, the head overflows to an idle
        member if that drains the queue sooner (the idle member's batch and the rest on the best member run
        side by side); a slow member is never handed the last batches the fast one would finish first.
        """
        healthy = [m for m in self.members if m.healthy]
        length = max(r.length for r in list(self._pending)[:64])
        rows = len(self._pending)

        def finish(m: Member) -> float:
            return m.remaining(now) + m.cost.predict(min(rows, self._cap(m, length)), length)

        best = min(healthy, key=finish)
        if best.running is None:
            return best, "retry" if self._pending[0].attempts else "best"
        idle = [m for m in healthy if m.running is None]
        drain = self._drain(best, rows, length, now)
        if not idle or now - self._pending[0].enqueued + drain <= self.latency_budget_s:
            return None, ""
        for m in sorted(idle, key=finish):
            taken = min(rows, self._cap(m, length))
            if max(m.cost.predict(taken, length), self._drain(best, rows - taken, length, now)) < drain:
                return m, "overflow"
        return None, ""

    def _cap(self, member: Member, length: int) -> int:
        return member.cost.cap(self.batch_budget_s, length, member.max_batch)

    def _drain(self, member: Member, rows: int, length: int, now: float) -> float:
        """Predicted time until `member` has encoded `rows` queued rows after its running batch."""
        cap = self._cap(member, length)
        full, rest = divmod(rows, cap)
        tail = member.cost.predict(rest, length) if rest else 0.0
        return member.remaining(now) + full * member.cost.predict(cap, length) + tail

    def _take(self, member: Member, reason: str) -> _Batch:
        length = max(r.length for r in list(self._pending)[:64])
        cap = self._cap(member, length)
        requests = [self._pending.popleft() for _ in range(min(cap, len(self._pending)))]
        self.metrics.pending.set(len(self._pending))
        return _Batch(requests, max(r.length for r in requests), reason)

    def _account(self, member: Member, batch: _Batch, now: float) -> None:
        size = len(batch.requests)
        self.metrics.dispatches.labels(member=member.name, reason=batch.reason).inc()
        self.metrics.batch_size.labels(member=member.name).observe(size)
        self.metrics.in_flight.labels(member=member.name).set(size)
        for r in batch.requests:
            self.metrics.queue_wait.labels(member=member.name).observe(now - r.enqueued)
        self.on_batch(size)

    def _next_deadline(self, now: float) -> float | None:
        """How long the dispatcher may sleep: until a running batch would time out (None: until notified)."""
        ends = [m.started + self.timeout_s - now for m in self.members if m.running is not None and m.healthy]
        return max(min(ends), 0.001) if ends else None

    def _take_out_hung(self, now: float) -> None:
        for m in self.members:
            if m.healthy and m.running is not None and now - m.started > self.timeout_s:
                batch = m.running
                m.running = None
                self._take_out(m, "timeout", f"batch of {len(batch.requests)} ran over {self.timeout_s:.3g} s")
                self._retry_or_fail(batch, PoolUnavailable(f"encode on {m.name} timed out"))

    def _take_out(self, member: Member, kind: str, why: str) -> None:
        member.healthy = False
        self.metrics.up.labels(member=member.name).set(0)
        self.metrics.failures.labels(member=member.name, kind=kind).inc()
        self.metrics.in_flight.labels(member=member.name).set(0)
        left = [m.name for m in self.members if m.healthy]
        log.error("encode session %s (%s) taken out of the pool (%s): %s; left: %s", member.name, member.device,
                  kind, why, left or "none")

    def _retry_or_fail(self, batch: _Batch, error: BaseException) -> None:
        retry = [r for r in batch.requests if r.attempts == 0 and not r.future.done()]
        for r in reversed(retry):
            r.attempts += 1
            self._pending.appendleft(r)
        for r in batch.requests:
            if r not in retry:
                _call(r.loop, _fail, r.future, error)
        self.metrics.pending.set(len(self._pending))

    def _fail_pending(self, error: BaseException) -> None:
        while self._pending:
            r = self._pending.popleft()
            _call(r.loop, _fail, r.future, error)
        self.metrics.pending.set(0)

    # -- member threads ----------------------------------------------------------------------------------
    def _work(self, member: Member) -> None:
        while True:
            batch = member.inbox.get()
            if batch is None:
                return
            start = time.perf_counter()
            try:
                inputs = self.collate([r.row for r in batch.requests], batch.length)
            except Exception as exc:  # the inputs, not the session: the member stays in the pool
                self._refuse_inputs(member, batch, exc)
                continue
            try:
                run = member.solo if batch.solo and member.solo is not None else member.run
                out = run(inputs)
                if len(out) != len(batch.requests):
                    raise RuntimeError(f"{member.name} returned {len(out)} rows for {len(batch.requests)}")
            except Exception as exc:  # the member is out; its batch is retried once elsewhere
                with self._cond:
                    if member.running is batch:
                        member.running = None
                        self._take_out(member, "error", repr(exc))
                        self._retry_or_fail(batch, exc)
                        self._dispatch_ready(time.perf_counter())
                    else:  # it had already timed out: the batch was retried elsewhere
                        log.warning("encode session %s failed after its timeout: %r", member.name, exc)
                continue
            end = time.perf_counter()
            with self._cond:
                if member.running is not batch:  # timed out meanwhile: already retried elsewhere
                    continue
                _deliver(batch, np.asarray(out, dtype=np.float32))  # results first, bookkeeping after
                member.running = None
                if not batch.solo:  # the cost model prices the load-time session
                    member.cost.observe(len(batch.requests), batch.length, end - start)
                self._dispatch_ready(end)  # the next batch, possibly to this thread's own inbox
                self.metrics.pending.set(len(self._pending))
            if member.running is None:
                self.metrics.in_flight.labels(member=member.name).set(0)
            self.metrics.encode_seconds.labels(member=member.name).observe(end - start)

    def _refuse_inputs(self, member: Member, batch: _Batch, error: Exception) -> None:
        """`collate` raised on `batch`: fail the requests whose own input it cannot prepare (each tried alone,
        off the lock), requeue the others at the head, keep the member. When every input is fine alone, the
        batch's error goes to all of them (never a loop)."""
        refused: list[tuple[_Request, BaseException]] = []
        for r in batch.requests:
            try:
                self.collate([r.row], r.length)
            except Exception as own:
                refused.append((r, _input_error(own)))
        if not refused:
            refused = [(r, _input_error(error)) for r in batch.requests]
        with self._cond:
            if member.running is not batch:  # timed out meanwhile: already retried elsewhere
                return
            member.running = None
            failed = {id(r) for r, _ in refused}
            for r in reversed(batch.requests):
                if id(r) not in failed and not r.future.done():
                    self._pending.appendleft(r)
            for r, reason in refused:
                _call(r.loop, _fail, r.future, reason)
            log.warning("encode request refused, %s stays in the pool: %s", member.name, refused[0][1])
            self._dispatch_ready(time.perf_counter())
            self.metrics.pending.set(len(self._pending))
        self.metrics.in_flight.labels(member=member.name).set(0)


def _input_error(exc: Exception) -> ValueError:
    """What the caller gets for an input collate cannot prepare: the tower's own ValueError, else InputError."""
    if isinstance(exc, ValueError):
        return exc
    error = InputError(f"the input cannot be prepared for encoding: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def stack_rows(inputs: list[Any], length: int) -> np.ndarray:
    """Rows stacked; token rows cut to the batch's longest real length (exact for causal, EOT-pooled towers)."""
    rows = np.stack(inputs)
    return np.ascontiguousarray(rows[:, :length]) if rows.ndim == 2 else rows


def _deliver(batch: _Batch, out: np.ndarray) -> None:
    """One hand-off per event loop per batch (not one per request)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[np.ndarray], np.ndarray]]] = {}
    for r, vec in zip(batch.requests, out, strict=True):
        by_loop.setdefault(r.loop, []).append((r.future, vec))
    for loop, pairs in by_loop.items():
        _call(loop, _resolve, pairs)


def _call(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting for this result any more
        log.debug("event loop closed before an encode result was delivered")


def _resolve(pairs: list[tuple[asyncio.Future[np.ndarray], np.ndarray]]) -> None:
    for future, vec in pairs:
        if not future.done():
            future.set_result(vec)


def _fail(future: asyncio.Future[np.ndarray], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
