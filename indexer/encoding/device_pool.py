"""The indexer's image encoders as a small device pool: a primary (the GPU when there is one) and CPU overflow.

Why: on a GPU machine the CPUs that are not decoding sit idle while the GPU encodes; a CPU ONNX session can take
a batch whenever the GPU already has enough queued. The policy is deliberately simple (the indexer has no
latency budget, only throughput): a batch goes to the primary while it holds fewer than `depth` batches
(running + waiting); when it is full, the batch goes to an idle overflow member; when none is idle, `submit`
waits until a member finishes. Each member runs one batch at a time on its own thread.

Faults: a member that raises, or whose running batch passes its timeout (`timeout_s`, or TIMEOUT_BATCHES times
its mean batch time when that is longer), is taken out (log line with the reason, counted in its stats) and its
batch is retried once on another member; batches already queued on it move too. A hung thread cannot be
interrupted: a member taken out for a timeout keeps its (daemon) thread blocked in the encoder and any result it
returns later is ignored. With no member left, `submit` and the batches still owed raise `PoolExhausted`. With no
overflow member the pool encodes inline in the caller's thread, exactly as the indexer did before the pool
existed (no timeout there: there is nowhere to retry).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search.runtime.towers import ImageEncoder

log = logging.getLogger(__name__)

__all__ = ["DevicePool", "DeviceStats", "EncodeTimeout", "PoolExhausted", "overflow_threads", "overflow_workers"]

TIMEOUT_BATCHES = 10  # a member's timeout is at least this many of its mean batch times (a slow device is not hung)


class PoolExhausted(RuntimeError):
    """Every member of the pool has been taken out."""


class EncodeTimeout(TimeoutError):
    """A member's batch ran past its timeout: the member is taken out and the batch retried elsewhere."""


@dataclass
class DeviceStats:
    """What one member did in a run (the run report's `encode_devices`)."""

    role: str  # "primary" | "overflow"
    batches: int = 0
    images: int = 0
    encode_s: float = 0.0
    failures: int = 0
    out: str | None = None  # why the member was taken out; None while it serves
    timeout_s: float | None = None  # a running batch's current limit; None when encoding inline (no timeout)

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "batches": self.batches, "images": self.images,
                "encode_s": round(self.encode_s, 4), "failures": self.failures, "out": self.out,
                "timeout_s": None if self.timeout_s is None else round(self.timeout_s, 3)}


@dataclass(eq=False)
class _Job:
    pixels: np.ndarray | None
    result: Future[np.ndarray] = field(default_factory=Future)
    retried: bool = False
    owner: _Member | None = None  # the member whose result counts; a late result from any other is ignored


@dataclass(eq=False)
class _Member:
    name: str
    encoder: ImageEncoder
    stats: DeviceStats
    inbox: queue.SimpleQueue[_Job | None] = field(default_factory=queue.SimpleQueue)
    thread: threading.Thread | None = None
    jobs: list[_Job] = field(default_factory=list)  # sent to it and not finished (the running one first)
    running: _Job | None = None
    started: float = 0.0  # time.monotonic() when `running` started
    healthy: bool = True


class DevicePool:
    """Primary + overflow image encoders behind one `submit(pixels) -> Future[vectors]`."""

    def __init__(self, primary: tuple[str, ImageEncoder], overflow: Sequence[tuple[str, ImageEncoder]] = (),
                 depth: int = 2, timeout_s: float = 300.0):
        if depth < 1:
            raise ValueError("the primary's queue depth must be >= 1")
        if timeout_s <= 0:
            raise ValueError("the encode timeout must be > 0 s")
        names = [primary[0], *(name for name, _ in overflow)]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique: {names}")
        self.depth, self.timeout_s = depth, timeout_s
        self.pipelined = bool(overflow)  # no overflow: encode inline, as the indexer always did
        self._primary = _Member(primary[0], primary[1], DeviceStats("primary"))
        self._members = [self._primary] + [_Member(n, e, DeviceStats("overflow")) for n, e in overflow]
        self._cond = threading.Condition()  # guards members, jobs and stats; notified whenever either changes
        self._closed = False
        self._watchdog: threading.Thread | None = None
        if self.pipelined:  # daemon threads: one taken out for a timeout may stay blocked and must not hold exit
            for m in self._members:
                m.stats.timeout_s = timeout_s
                m.thread = threading.Thread(target=self._work, args=(m,), name=f"encode-{m.name}", daemon=True)
                m.thread.start()
            self._watchdog = threading.Thread(target=self._watch, name="encode-watchdog", daemon=True)
            self._watchdog.start()

    # -- dispatch --------------------------------------------------------------------------------------------
    def submit(self, pixels: np.ndarray) -> Future[np.ndarray]:
        """Send one batch (preprocessed pixels) to a member; blocks while the primary is full and no overflow
        member is idle. The future holds the batch's vectors in the order of `pixels`."""
        job = _Job(pixels)
        if not self.pipelined:
            self._run_inline(job)
            return job.result
        with self._cond:
            while (member := self._choose()) is None:
                self._cond.wait()  # woken when a batch finishes or a member is taken out
            self._start(member, job)
        return job.result

    def _choose(self) -> _Member | None:
        if self._closed:
            raise PoolExhausted("the pool is closed")
        if not any(m.healthy for m in self._members):
            raise PoolExhausted("every image encoder of the pool was taken out: "
                                + "; ".join(f"{m.name}: {m.stats.out}" for m in self._members))
        if self._primary.healthy and len(self._primary.jobs) < self.depth:
            return self._primary
        return next((m for m in self._members[1:] if m.healthy and not m.jobs), None)

    def _start(self, member: _Member, job: _Job) -> None:
        job.owner = member
        member.jobs.append(job)
        member.inbox.put(job)

    # -- a member's thread -----------------------------------------------------------------------------------
    def _work(self, member: _Member) -> None:
        while (job := member.inbox.get()) is not None:
            with self._cond:
                if job.owner is not member:  # moved elsewhere, or cancelled by close(), while it waited here
                    continue
                member.running, member.started, pixels = job, time.monotonic(), job.pixels
                self._cond.notify_all()  # the watchdog's next deadline
            assert pixels is not None
            start = time.perf_counter()
            try:
                vectors = member.encoder.encode_pixels(pixels)
                if len(vectors) != len(pixels):
                    raise RuntimeError(f"{member.name} returned {len(vectors)} vectors for {len(pixels)} images")
            except Exception as exc:  # not swallowed: the member is taken out and the batch retried or failed
                self._failed(member, job, exc)
            else:
                self._done(member, job, vectors, time.perf_counter() - start)

    def _done(self, member: _Member, job: _Job, vectors: np.ndarray, seconds: float) -> None:
        with self._cond:
            if self._owns(member, job):
                self._detach(member, job)
                self._record(member, job, seconds)
                job.pixels = None  # the batch's pixels are freed as soon as it is encoded
                job.result.set_result(vectors)

    def _failed(self, member: _Member, job: _Job, error: Exception) -> None:
        with self._cond:
            if self._owns(member, job):
                self._detach(member, job)
                self._take_out(member, job, error)

    def _owns(self, member: _Member, job: _Job) -> bool:
        if job.owner is member:
            return True
        log.warning("image encoder %s finished a batch after it was taken out (%s): its result is ignored",
                    member.name, member.stats.out)
        return False

    def _detach(self, member: _Member, job: _Job) -> None:
        member.jobs.remove(job)
        if member.running is job:
            member.running = None
        job.owner = None
        self._cond.notify_all()

    # -- faults ----------------------------------------------------------------------------------------------
    def _take_out(self, member: _Member, job: _Job, error: Exception) -> None:
        """Take `member` out for `error` (raised by, or timed out on, `job`); retry `job`, move its queue."""
        member.stats.failures += 1
        member.healthy = False
        member.stats.out = f"{type(error).__name__}: {error}"
        log.error("image encoder %s taken out of the pool: %s", member.name, member.stats.out)
        queued, member.jobs = member.jobs, []
        member.inbox.put(None)  # its thread ends once (if ever) its encoder returns
        self._place(job, member, error, retry=True)
        for other in queued:
            other.owner = None
            self._place(other, member, error, retry=False)

    def _place(self, job: _Job, failed: _Member, error: Exception, retry: bool) -> None:
        """Send a batch away from `failed`: once as a retry, any number of times as a move (it never ran there)."""
        healthy = [m for m in self._members if m.healthy]
        if self._closed or not healthy or (retry and job.retried):
            exhausted = not retry or (isinstance(error, EncodeTimeout) and not healthy)
            job.result.set_exception(PoolExhausted(f"no image encoder left for a batch ({error})") if exhausted
                                     else error)  # an encoder's own error reaches the run, as before the pool
            return
        target = min(healthy, key=lambda m: len(m.jobs))  # a retry never waits for room: it is already owed
        job.retried = job.retried or retry
        size = 0 if job.pixels is None else len(job.pixels)
        log.warning("image batch of %d moves from %s to %s", size, failed.name, target.name)
        self._start(target, job)

    def _limit(self, member: _Member) -> float:
        mean = member.stats.encode_s / member.stats.batches if member.stats.batches else 0.0
        return max(self.timeout_s, TIMEOUT_BATCHES * mean)

    def _watch(self) -> None:
        """Sleep until the earliest running batch's deadline (or a change); take out members past theirs."""
        with self._cond:
            while True:
                now, waits = time.monotonic(), []
                for m in self._members:
                    if not m.healthy or m.running is None:
                        continue
                    limit, ran = self._limit(m), now - m.started
                    if ran < limit:
                        waits.append(limit - ran)
                        continue
                    job = m.running
                    size = 0 if job.pixels is None else len(job.pixels)
                    self._detach(m, job)
                    self._take_out(m, job, EncodeTimeout(
                        f"a batch of {size} images still running after {ran:.3g} s (timeout {limit:.3g} s)"))
                if self._closed and not waits:
                    return
                self._cond.wait(min(waits) if waits else None)

    # -- accounting ------------------------------------------------------------------------------------------
    def _record(self, member: _Member, job: _Job, seconds: float) -> None:
        member.stats.batches += 1
        member.stats.images += len(job.pixels) if job.pixels is not None else 0
        member.stats.encode_s += seconds
        if self.pipelined:
            member.stats.timeout_s = self._limit(member)

    def _run_inline(self, job: _Job) -> None:
        assert job.pixels is not None
        start = time.perf_counter()
        try:
            vectors = self._primary.encoder.encode_pixels(job.pixels)
        except Exception as exc:  # the caller's commit re-raises it, as the synchronous indexer did
            self._primary.stats.failures += 1
            job.result.set_exception(exc)
            return
        self._record(self._primary, job, time.perf_counter() - start)
        job.result.set_result(vectors)

    # -- report / lifetime -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, DeviceStats]:
        with self._cond:
            return {m.name: DeviceStats(**vars(m.stats)) for m in self._members}

    def report(self) -> dict[str, dict[str, Any]]:
        return {name: s.to_dict() for name, s in self.stats().items()}

    @property
    def members(self) -> int:
        return len(self._members)

    def close(self) -> None:
        """Cancel batches not yet started and wait for the running ones (an error path; a finished run has none).
        Bounded: a running batch that passes its timeout meanwhile is taken out by the watchdog (its future gets
        the `EncodeTimeout`) and its blocked thread is left behind."""
        with self._cond:
            self._closed = True
            for m in self._members:
                for job in [j for j in m.jobs if j is not m.running]:
                    self._detach(m, job)
                    job.result.cancel()
                    job.result.set_running_or_notify_cancel()  # wakes concurrent.futures.wait() on it
                m.inbox.put(None)
            self._cond.notify_all()  # the watchdog ends once no batch runs
            while any(m.healthy and m.running is not None for m in self._members):
                self._cond.wait()
        for m in self._members:
            if m.healthy and m.thread is not None:
                m.thread.join()
        if self._watchdog is not None:
            self._watchdog.join()

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def overflow_workers(setting: int | None, primary_device: str) -> int:
    """The configured count, or (None) 1 when the primary runs on CUDA and 0 on a CPU-only machine."""
    if setting is not None:
        return setting
    return 1 if primary_device.startswith("cuda") else 0


def overflow_threads(setting: int, workers: int, decode_workers: int, cpus: int | None = None) -> int:
    """Intra-op threads per overflow session: the configured count, or (0) what the CPUs leave after the decode
    workers and the main process, shared among the overflow workers (at least 1)."""
    if setting > 0:
        return setting
    if workers == 0:
        return 0
    spare = (cpus if cpus is not None else (os.cpu_count() or 2)) - decode_workers - 1
    return max(1, spare // workers)
