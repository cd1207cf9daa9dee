"""A search lane: the event loop's searches go to one worker thread in batches, one hop there and one back per
batch (not per request).

A batch is what was submitted during one turn of the loop (the queries an encode batch hands back all resume in
the same turn) plus whatever arrived while the lane's thread was busy. No timer: an idle lane takes a lone
search on the next turn. One thread: FAISS spreads a multi-query call over its own OpenMP team, and a single
lane keeps the batch whole instead of splitting it over executor threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["SearchLane"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class SearchLane(Generic[T, R]):
    """`await submit(item)` -> its result; `run` takes a batch of items and returns one result or exception
    each (a failing item fails alone)."""

    def __init__(self, run: Callable[[list[T]], Sequence[R | BaseException]], max_batch: int = 64,
                 on_batch: Callable[[int], None] | None = None, name: str = "search-lane",
                 initializer: Callable[[], None] | None = None):
        """`initializer` runs once on the lane's thread before its first batch (per-thread settings such as
        FAISS's OpenMP team, which a setting made on another thread does not reach)."""
        self.run = run
        self.max_batch = max(1, max_batch)
        self.on_batch = on_batch or (lambda size: None)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=initializer)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._busy = False
        self._scheduled = False

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if not self._busy and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush, loop)  # after this turn: the rest of the turn's searches join
        return await future

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        if self._busy:
            return
        batch = [p for p in self._pending[: self.max_batch] if not p[1].done()]  # a cancelled request: dropped
        del self._pending[: self.max_batch]
        if not batch:
            if self._pending:
                self._flush(loop)
            return
        self._busy = True
        self.on_batch(len(batch))
        try:
            job = self._executor.submit(self.run, [item for item, _ in batch])
        except RuntimeError as exc:  # closed
            self._busy = False
            for _, future in batch:
                future.set_exception(exc)
            return
        job.add_done_callback(lambda done: _call(loop, self._done, loop, batch, done))

    def _done(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[T, asyncio.Future[R]]],
              job: Future[Sequence[R | BaseException]]) -> None:
        self._busy = False
        try:
            results: Sequence[R | BaseException] = job.result()
        except BaseException as exc:  # noqa: BLE001 - the batch's own failure goes to each of its requests
            results = [exc] * len(batch)
        if len(results) != len(batch):  # a broken `run`: every request hears of it, none waits forever
            results = [RuntimeError(f"the search batch answered {len(results)} results for {len(batch)} "
                                    "queries")] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._pending:
            self._flush(loop)


def _call(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody waits for these results any more
        log.debug("event loop closed before a search batch was delivered")
