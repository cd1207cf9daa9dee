"""Load shedding in front of the encoders: admit a request only if the predicted wait fits its deadline.

The admission object knows nothing about how encodes are batched or pooled; it keeps the predicted cost of
every admitted, unfinished request and asks a `CostModel` what one more costs. When queued cost + this one
exceeds the deadline, the request is refused at once (the service answers 503 + Retry-After) instead of
queueing for seconds. Cache hits never come here. Thread-safe; no FastAPI.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

__all__ = ["CostModel", "MeasuredCost", "Admission", "Ticket", "Overloaded"]


class CostModel(Protocol):
    """Predicted seconds of encoder time one more request adds; `observe` feeds back what it really took."""

    def predicted_cost(self) -> float: ...

    def observe(self, seconds: float) -> None: ...


class MeasuredCost:
    """Exponentially weighted mean of measured per-request encoder seconds (starts at `initial_s`)."""

    def __init__(self, initial_s: float, weight: float = 0.2):
        self._cost = initial_s
        self._weight = weight
        self._lock = threading.Lock()

    def predicted_cost(self) -> float:
        return self._cost

    def observe(self, seconds: float) -> None:
        if seconds >= 0 and math.isfinite(seconds):
            with self._lock:
                self._cost += self._weight * (seconds - self._cost)


class Overloaded(RuntimeError):
    """Refused by admission; `retry_after_s` is when the queued work is predicted to have drained."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Ticket:
    """An admitted request; leaving the `with` block (or `release()`) frees its share of the queue."""

    admission: Admission
    cost: float
    started: float
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class Admission:
    """Bounded queue in front of one encoder (or pool): predicted wait = queue depth x measured cost per request.

    The cost is learnt from completions alone, so it composes with any batcher behind it: one request's share
    of encoder time is busy time / completions (busy: at least one admitted request unfinished). Each release
    records the busy time since the previous release (or since the busy period began); the sample fed to the
    cost model is the mean over the last `window` releases, taken once `window // 4` are in or when the queue
    empties. Why not the interval between two completions: batches end in clusters (a batch of 6 ends with 6
    releases microseconds apart, then a gap), so single intervals averaged sit far below the truth most of the
    time, and a busy period's first completion alone (its whole batch time) far above it: the admission then
    let the queue grow past the deadline, or kept it so short that the encoder idled under overload.
    """

    def __init__(self, deadline_s: float, max_queue: int, cost: CostModel, window: int = 64,
                 clock: Callable[[], float] = time.perf_counter):
        self.deadline_s = deadline_s
        self._clock = clock
        self.max_queue = max_queue
        self.cost = cost
        self._depth = 0
        self._busy: deque[float] = deque(maxlen=max(1, window))  # busy seconds before each recent release
        self._min_samples = max(1, window // 4)
        self._mark = 0.0  # the last release, or when the current busy period began
        self._lock = threading.Lock()
        self.admitted = 0
        self.rejected = 0

    @property
    def depth(self) -> int:
        return self._depth

    def predicted_wait(self, predicted_cost: float | None = None, queued: int | None = None) -> float:
        """Seconds until a request admitted now would be done (behind `queued` others; default: the depth)."""
        cost = self.cost.predicted_cost() if predicted_cost is None else predicted_cost
        return ((self._depth if queued is None else queued) + 1) * cost

    def fits(self, queued: int, extra_wait_s: float = 0.0, predicted_cost: float | None = None) -> bool:
        """Would one more request behind `queued` others (plus `extra_wait_s` spent before it reaches the
        queue) finish within the deadline? Nothing queued always fits. Takes no ticket (the service's entry
        check asks this before routing; search.http.shedding)."""
        cost = self.cost.predicted_cost() if predicted_cost is None else predicted_cost
        return queued < self.max_queue and (queued == 0 or extra_wait_s + (queued + 1) * cost <= self.deadline_s)

    def try_admit(self, predicted_cost: float | None = None) -> Ticket | None:
        """A ticket if the predicted wait fits the deadline (an idle encoder always admits), else None."""
        cost = self.cost.predicted_cost() if predicted_cost is None else predicted_cost
        with self._lock:
            if not self.fits(self._depth, predicted_cost=cost):
                self.rejected += 1
                return None
            now = self._clock()
            if self._depth == 0:  # the encoder was idle: a new busy period
                self._mark = now
            self._depth += 1
            self.admitted += 1
        return Ticket(self, cost, now)

    def admit(self, predicted_cost: float | None = None) -> Ticket:
        """`try_admit`, raising Overloaded (with a Retry-After estimate) when refused."""
        ticket = self.try_admit(predicted_cost)
        if ticket is None:
            wait = self.predicted_wait(predicted_cost)
            raise Overloaded(f"encoder queue is full (predicted wait {wait * 1000:.0f} ms > deadline "
                             f"{self.deadline_s * 1000:.0f} ms)", retry_after_s=max(wait, 0.001))
        return ticket

    def _release(self, ticket: Ticket) -> None:
        now = self._clock()
        sample: float | None = None
        with self._lock:
            self._busy.append(max(0.0, now - self._mark))
            self._mark = now
            self._depth -= 1
            if len(self._busy) >= self._min_samples or self._depth == 0:
                sample = sum(self._busy) / len(self._busy)
        if sample is not None:
            self.cost.observe(sample)
