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

    The cost is learnt from completions alone, so it composes with any batcher behind it: while requests
    queue, the mean interval between completions is one request's share of encoder time. Batches end in
    clusters (a batch of 16 ends with 16 releases microseconds apart, then a gap), so one interval alone says
    little and an average over single intervals spends most of the time far below the truth; the sample fed to
    the cost model is the mean interval over the last `window` releases of the current busy period (more than
    one batch of the largest size; nothing until the window is full). A busy period starts when a request
    finds the queue empty; its first completion's cost is its own duration (an over-estimate under batching,
    so the admission errs on the side of refusing until the window has filled).
    """

    def __init__(self, deadline_s: float, max_queue: int, cost: CostModel, window: int = 64,
                 clock: Callable[[], float] = time.perf_counter):
        self.deadline_s = deadline_s
        self._clock = clock
        self.max_queue = max_queue
        self.cost = cost
        self._depth = 0
        self._releases: deque[float] = deque(maxlen=max(2, window))  # release times of this busy period
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
            if self._depth == 0:  # the encoder was idle: a new busy period
                self._releases.clear()
            self._depth += 1
            self.admitted += 1
        return Ticket(self, cost, self._clock())

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
            releases = self._releases
            if not releases:  # the first completion of a busy period: its own duration
                sample = now - ticket.started
            elif len(releases) == releases.maxlen:
                sample = (now - releases[0]) / len(releases)
            releases.append(now)
            self._depth -= 1
        if sample is not None:
            self.cost.observe(sample)
