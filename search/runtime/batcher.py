"""Micro-batching of query encodes: concurrent misses within a short window are encoded together.

A request that arrives alone waits at most `window_s` before its batch is flushed; a full batch (`max_batch`)
flushes at once. Each flushed batch is split into groups of equal trimmed token length, so trimming stays as
effective as for single queries and every result equals what an unbatched encode gives. Encodes run on one
worker thread, keeping the event loop free and the CPU-bound model calls serialised.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from search.runtime.towers import TextEncoder

__all__ = ["MicroBatcher"]


class MicroBatcher:
    """`await encode(text)` -> vector; batches concurrent calls (window 0 = no batching)."""

    def __init__(self, encoder: TextEncoder, window_s: float = 0.003, max_batch: int = 32,
                 on_batch: Callable[[int], None] | None = None):
        self.encoder = encoder
        self.window_s = window_s
        self.max_batch = max(1, max_batch)
        self.on_batch = on_batch or (lambda size: None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="text-encode")
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones

    async def encode(self, text: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self.window_s <= 0:
            self.on_batch(1)
            vectors: np.ndarray = await loop.run_in_executor(self._executor, self._encode_group, [text])
            return np.asarray(vectors[0])
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((text, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self.on_batch(len(batch))
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[str, asyncio.Future[np.ndarray]]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            vectors = await loop.run_in_executor(self._executor, self._encode_grouped, [t for t, _ in batch])
        except Exception as exc:  # every waiter gets the error; nothing is swallowed
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), vec in zip(batch, vectors, strict=True):
            if not fut.done():
                fut.set_result(vec)

    def _encode_group(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts)

    def _encode_grouped(self, texts: list[str]) -> np.ndarray:
        """Encode in groups of equal trimmed length; rows come back in input order."""
        tokens = self.encoder.tokenize(texts)
        lengths = self.encoder.lengths(tokens)
        groups: dict[int, list[int]] = defaultdict(list)
        for row, length in enumerate(lengths.tolist()):
            groups[int(length)].append(row)
        out = np.zeros((len(texts), self.encoder.dim), np.float32)
        for rows in groups.values():
            out[rows] = self.encoder.encode_token_ids(tokens[rows])
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
