"""The search lane on its own (a `run` that doubles numbers, no index): the searches of one loop turn go as one
batch, those that arrive while the lane's thread is busy as the next one, at most `max_batch` at a time, in
order; a failing item fails alone, a failing batch fails each of its requests, a cancelled request is dropped
before its batch runs, and a closed lane refuses new work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from search.query.lane import SearchLane

WAIT_S = 10.0  # the most a test waits for the lane's thread (it answers in milliseconds)


class Doubler:
    """A batch run that records each batch it was given; an item < 0 fails alone, an item 13 fails its batch."""

    def __init__(self, hold: threading.Event | None = None):
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.finished = threading.Event()
        self.threads: set[str] = set()
        self.hold = hold

    def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        self.started.set()
        if self.hold is not None:
            assert self.hold.wait(WAIT_S)
        self.finished.set()
        if 13 in items:
            raise RuntimeError("the batch failed")
        return [ValueError(f"bad {i}") if i < 0 else 2 * i for i in items]


def _lane(run: Doubler, max_batch: int = 64) -> tuple[SearchLane[int, int], list[int]]:
    sizes: list[int] = []
    return SearchLane(run, max_batch=max_batch, on_batch=sizes.append), sizes


def test_one_turns_searches_go_as_one_batch_in_order() -> None:
    run = Doubler()
    lane, sizes = _lane(run)

    async def go() -> list[int]:
        return await asyncio.gather(*(lane.submit(i) for i in range(5)))

    try:
        assert asyncio.run(go()) == [0, 2, 4, 6, 8]
    finally:
        lane.close()
    assert run.batches == [[0, 1, 2, 3, 4]] and sizes == [5]
    assert len(run.threads) == 1 and run.threads.pop().startswith("search-lane")  # named in thread dumps


def test_batches_hold_at_most_max_batch_and_the_rest_follow() -> None:
    run = Doubler()
    lane, sizes = _lane(run, max_batch=2)

    async def go() -> list[int]:
        return await asyncio.gather(*(lane.submit(i) for i in range(5)))

    try:
        assert asyncio.run(go()) == [0, 2, 4, 6, 8]
    finally:
        lane.close()
    assert run.batches == [[0, 1], [2, 3], [4]] and sizes == [2, 2, 1]
    assert SearchLane(run, max_batch=0).max_batch == 1
    counted = Doubler()
    default = SearchLane(counted)

    async def many() -> list[int]:
        return await asyncio.gather(*(default.submit(i) for i in range(100, 165)))

    try:
        assert asyncio.run(many()) == [2 * i for i in range(100, 165)]
    finally:
        default.close()
    assert [len(b) for b in counted.batches] == [64, 1]  # the default max_batch


def test_searches_that_arrive_while_the_lane_is_busy_go_as_the_next_batch() -> None:
    hold = threading.Event()
    run = Doubler(hold)
    lane, sizes = _lane(run)

    async def go() -> list[int]:
        first = asyncio.ensure_future(lane.submit(1))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, run.started.wait, WAIT_S)  # batch [1] is running
        later = [asyncio.ensure_future(lane.submit(2))]
        await loop.run_in_executor(None, int)  # later turns of the loop: the lane is still busy
        later += [asyncio.ensure_future(lane.submit(i)) for i in (3, 4)]
        loop.call_soon(hold.set)  # after the three have queued (callbacks run in the order they were scheduled)
        return await asyncio.gather(first, *later)

    try:
        assert asyncio.run(go()) == [2, 4, 6, 8]
    finally:
        lane.close()
    assert run.batches == [[1], [2, 3, 4]] and sizes == [1, 3]


def test_a_search_cancelled_while_its_batch_runs_does_not_hold_back_the_others() -> None:
    hold = threading.Event()
    run = Doubler(hold)
    lane, _ = _lane(run)

    async def go() -> list[int]:
        tasks = [asyncio.ensure_future(lane.submit(i)) for i in (1, 2, 3)]
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, run.started.wait, WAIT_S)
        tasks[0].cancel()
        loop.call_soon(hold.set)
        return list(await asyncio.wait_for(asyncio.gather(*tasks[1:]), WAIT_S))

    try:
        assert asyncio.run(go()) == [4, 6]
    finally:
        lane.close()
    assert run.batches == [[1, 2, 3]]


def test_close_waits_for_the_running_batch() -> None:
    """What the searcher closes after the lane (the artifact) is no longer read when close returns."""
    hold = threading.Event()
    run = Doubler(hold)
    lane, _ = _lane(run)

    async def go() -> None:
        task = asyncio.ensure_future(lane.submit(1))
        assert await asyncio.get_running_loop().run_in_executor(None, run.started.wait, WAIT_S)
        task.cancel()  # the loop ends with the batch still running

    asyncio.run(go())
    release = threading.Timer(0.05, hold.set)  # correct code passes whenever it fires; it only lets close wait
    release.start()
    lane.close()
    assert run.finished.is_set()
    release.join()


def test_a_batch_finishing_after_its_loop_closed_is_dropped_with_a_debug_line(
        caplog: pytest.LogCaptureFixture) -> None:
    hold = threading.Event()
    run = Doubler(hold)
    lane, _ = _lane(run)

    async def go() -> None:
        asyncio.ensure_future(lane.submit(1))
        assert await asyncio.get_running_loop().run_in_executor(None, run.started.wait, WAIT_S)

    asyncio.run(go())  # cancels the waiting search and closes the loop while the batch runs
    with caplog.at_level("DEBUG", logger="search.query.lane"):
        hold.set()
        lane.close()  # the batch's results arrive at a closed loop
    assert caplog.messages == ["event loop closed before a search batch was delivered"]


def test_a_run_that_answers_fewer_results_than_items_fails_every_request_and_the_lane_goes_on() -> None:
    answers = iter([[0], [7]])  # first batch (two items): one result; second batch (one item): one result
    lane: SearchLane[int, int] = SearchLane(lambda items: next(answers))

    async def go() -> tuple[list[int | BaseException], int]:
        broken = await asyncio.wait_for(asyncio.gather(*(lane.submit(i) for i in (1, 2)), return_exceptions=True),
                                        WAIT_S)
        return broken, await asyncio.wait_for(lane.submit(3), WAIT_S)

    try:
        broken, after = asyncio.run(go())
    finally:
        lane.close()
    assert all(isinstance(r, RuntimeError) and "answered 1 results for 2 queries" in str(r) for r in broken), broken
    assert after == 7  # the lane is not left busy


def test_a_failing_item_fails_alone_and_a_failing_batch_fails_each_request() -> None:
    run = Doubler()
    lane, _ = _lane(run)

    async def go() -> tuple[list[int | BaseException], list[int | BaseException]]:
        alone = await asyncio.gather(*(lane.submit(i) for i in (1, -2, 3)), return_exceptions=True)
        together = await asyncio.gather(*(lane.submit(i) for i in (4, 13)), return_exceptions=True)
        return alone, together

    try:
        alone, together = asyncio.run(go())
    finally:
        lane.close()
    assert alone[0] == 2 and alone[2] == 6
    assert isinstance(alone[1], ValueError) and str(alone[1]) == "bad -2"
    assert all(isinstance(r, RuntimeError) and str(r) == "the batch failed" for r in together)


@pytest.mark.parametrize("max_batch", [1, 64])
def test_a_cancelled_search_is_dropped_before_its_batch_runs(max_batch: int) -> None:
    run = Doubler()
    lane, sizes = _lane(run, max_batch)

    async def go() -> list[int]:
        tasks = [asyncio.ensure_future(lane.submit(i)) for i in (1, 2, 3)]
        asyncio.get_running_loop().call_soon(tasks[0].cancel)  # queued, not yet in a batch
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        return [r for r in done[1:] if isinstance(r, int)]

    try:
        assert asyncio.run(go()) == [4, 6]
    finally:
        lane.close()
    assert [i for batch in run.batches for i in batch] == [2, 3]  # 1 never ran, 2 and 3 still did
    assert sizes == ([1, 1] if max_batch == 1 else [2])


def test_a_closed_lane_refuses_new_searches() -> None:
    run = Doubler()
    lane, _ = _lane(run)
    lane.close()

    async def go() -> list[tuple[int | BaseException]]:  # one refusal does not leave the lane waiting on nothing
        return [await asyncio.wait_for(asyncio.gather(lane.submit(i), return_exceptions=True), WAIT_S)
                for i in (1, 2)]

    refused = asyncio.run(go())
    assert all(isinstance(r[0], RuntimeError) for r in refused), refused
    assert run.batches == []


def test_the_initializer_runs_on_the_lanes_thread_before_its_first_batch() -> None:
    """Per-thread settings (FAISS's OpenMP team) only reach the lane if set on its own thread, before it searches."""
    events: list[tuple[str, str]] = []
    run = Doubler()

    def first(items: list[int]) -> Sequence[int | BaseException]:
        events.append(("batch", threading.current_thread().name))
        return run(items)

    lane: SearchLane[int, int] = SearchLane(
        first, initializer=lambda: events.append(("init", threading.current_thread().name)))

    async def go() -> list[int]:
        return [await lane.submit(1), await lane.submit(2)]

    try:
        assert asyncio.run(go()) == [2, 4]
    finally:
        lane.close()
    assert [kind for kind, _ in events] == ["init", "batch", "batch"]  # once, first
    assert len({thread for _, thread in events}) == 1 and events[0][1].startswith("search-lane")
