"""The indexer's image encoders as a small device pool: a primary (the GPU when there is one) and CPU overflow.

Why: on a GPU machine the CPUs that are not decoding sit idle while the GPU encodes; a CPU ONNX session can take
a batch whenever the GPU already has enough queued. The policy is deliberately simple (the indexer has no
latency budget, only throughput): a batch goes to the primary while it holds fewer than `depth` batches
(running + waiting); when it is full, the batch goes to an idle overflow member; when none is idle, `submit`
waits until a member finishes. Each member runs one batch at a time on its own single-thread executor.

Faults: a member that raises is taken out (log line with the reason, counted in its stats) and its batch is
retried once on another member; batches already queued on it move too. With no member left, `submit` raises
`PoolExhausted`. With no overflow member the pool encodes inline in the caller's thread, exactly as the
indexer did before the pool existed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search.runtime.towers import ImageEncoder

log = logging.getLogger(__name__)

__all__ = ["DevicePool", "DeviceStats", "PoolExhausted", "overflow_threads", "overflow_workers"]


class PoolExhausted(RuntimeError):
    """Every member of the pool has been taken out."""


class _MemberOut(RuntimeError):
    """A batch was queued on a member that has since been taken out: it moves without counting as a retry."""


@dataclass
class DeviceStats:
    """What one member did in a run (the run report's `encode_devices`)."""

    role: str  # "primary" | "overflow"
    batches: int = 0
    images: int = 0
    encode_s: float = 0.0
    failures: int = 0
    out: str | None = None  # why the member was taken out; None while it serves

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "batches": self.batches, "images": self.images,
                "encode_s": round(self.encode_s, 4), "failures": self.failures, "out": self.out}


@dataclass(eq=False)
class _Member:
    name: str
    encoder: ImageEncoder
    stats: DeviceStats
    executor: ThreadPoolExecutor | None = None
    queued: int = 0  # batches submitted to it and not finished
    healthy: bool = True


@dataclass(eq=False)
class _Job:
    pixels: np.ndarray | None
    result: Future[np.ndarray] = field(default_factory=Future)
    retried: bool = False


class DevicePool:
    """Primary + overflow image encoders behind one `submit(pixels) -> Future[vectors]`."""

    def __init__(self, primary: tuple[str, ImageEncoder], overflow: Sequence[tuple[str, ImageEncoder]] = (),
                 depth: int = 2):
        if depth < 1:
            raise ValueError("the primary's queue depth must be >= 1")
        names = [primary[0], *(name for name, _ in overflow)]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique: {names}")
        self.depth = depth
        self.pipelined = bool(overflow)  # no overflow: encode inline, as the indexer always did
        self._primary = _Member(primary[0], primary[1], DeviceStats("primary"))
        self._members = [self._primary] + [_Member(n, e, DeviceStats("overflow")) for n, e in overflow]
        if self.pipelined:
            for m in self._members:
                m.executor = ThreadPoolExecutor(1, thread_name_prefix=f"encode-{m.name}")
        self._cond = threading.Condition()  # guards members' queued/healthy/stats; notified when one finishes
        self._closed = False

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
                self._cond.wait()
            self._start(member, job)
        return job.result

    def _choose(self) -> _Member | None:
        if self._closed:
            raise PoolExhausted("the pool is closed")
        if not any(m.healthy for m in self._members):
            raise PoolExhausted("every image encoder of the pool was taken out: "
                                + "; ".join(f"{m.name}: {m.stats.out}" for m in self._members))
        if self._primary.healthy and self._primary.queued < self.depth:
            return self._primary
        return next((m for m in self._members[1:] if m.healthy and m.queued == 0), None)

    def _start(self, member: _Member, job: _Job) -> None:
        assert member.executor is not None
        member.queued += 1
        future = member.executor.submit(self._encode, member, job)
        future.add_done_callback(lambda f: self._finished(member, job, f))

    def _encode(self, member: _Member, job: _Job) -> tuple[np.ndarray, float]:
        if not member.healthy:
            raise _MemberOut(member.name)
        assert job.pixels is not None
        start = time.perf_counter()
        vectors = member.encoder.encode_pixels(job.pixels)
        if len(vectors) != len(job.pixels):
            raise RuntimeError(f"{member.name} returned {len(vectors)} vectors for {len(job.pixels)} images")
        return vectors, time.perf_counter() - start

    def _finished(self, member: _Member, job: _Job, future: Future[tuple[np.ndarray, float]]) -> None:
        if future.cancelled():  # close() while the run was failing: nobody waits for this batch any more
            job.result.cancel()
            return
        error = future.exception()
        with self._cond:
            member.queued -= 1
            self._cond.notify_all()
            if error is None:
                vectors, seconds = future.result()
                self._record(member, job, seconds)
                job.pixels = None  # the batch's pixels are freed as soon as it is encoded
                job.result.set_result(vectors)
                return
            if self._closed:  # no retry on a pool being shut down
                job.result.set_exception(error)
                return
            moved = isinstance(error, _MemberOut)
            if not moved:
                self._take_out(member, error)
            target = None if (job.retried and not moved) else self._retry_target(member)
            if target is None:
                job.result.set_exception(PoolExhausted(f"no image encoder left for a batch ({error})") if moved
                                         else error)
                return
            job.retried = job.retried or not moved
            size = 0 if job.pixels is None else len(job.pixels)
            log.warning("image batch of %d moves from %s to %s", size, member.name, target.name)
            self._start(target, job)

    def _retry_target(self, failed: _Member) -> _Member | None:
        """The healthy member with the shortest queue (a retry never waits for room: it is already owed)."""
        healthy = [m for m in self._members if m.healthy and m is not failed]
        return min(healthy, key=lambda m: m.queued) if healthy else None

    def _take_out(self, member: _Member, error: BaseException) -> None:
        member.stats.failures += 1
        if member.healthy:
            member.healthy = False
            member.stats.out = f"{type(error).__name__}: {error}"
            log.error("image encoder %s taken out of the pool: %s", member.name, member.stats.out)

    def _record(self, member: _Member, job: _Job, seconds: float) -> None:
        member.stats.batches += 1
        member.stats.images += len(job.pixels) if job.pixels is not None else 0
        member.stats.encode_s += seconds

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
        """Cancel batches not yet started and wait for the running ones (an error path; a finished run has none)."""
        with self._cond:
            self._closed = True
        for m in self._members:
            if m.executor is not None:
                m.executor.shutdown(wait=True, cancel_futures=True)

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
