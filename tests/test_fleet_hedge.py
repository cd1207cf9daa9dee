"""The fleet's hedge and deadlines without Ray (search/fleet/hedge.py, fanout.py, deadline.py): the p95 window
rule, a shard call hedged after it, the loser cancelled, the one retry kept, and the encoder call's deadline.
The calls are test doubles of a Serve DeploymentResponse (tests/fleet_support.py); the pages a slow replica or
a stuck encoder leave are tested against the real service in tests/test_fleet.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from search.fleet.deadline import call_with_deadline
from search.fleet.fanout import RemoteShard, ShardTiming, Warmth, fan_out
from search.fleet.hedge import HedgeRule, LatencyWindow, hedge_after_s
from search.fleet.pinning import CallTag
from search.query.shard import ShardHits, ShardQuery, ShardUnavailable
from search.state import EncoderUnavailable
from tests.fleet_support import Answered, Done, Stuck, StuckAwaitable

RULE = HedgeRule(quantile=0.95, window=100, min_samples=10, floor_s=0.005, default_s=0.05)
SOON = HedgeRule(min_samples=10**6, window=10**6, default_s=0.01)  # always the default: hedge after 10 ms


def test_the_hedge_waits_the_default_until_the_window_has_enough_answers() -> None:
    assert hedge_after_s([], RULE) == 0.05
    assert hedge_after_s([0.001] * 9, RULE) == 0.05
    assert hedge_after_s([0.001] * 10, RULE) == 0.005  # enough samples, but never under the floor


def test_the_hedge_waits_the_windows_nearest_rank_p95() -> None:
    ms = [i / 1000 for i in range(1, 101)]  # 1 .. 100 ms, shuffled order does not matter
    assert hedge_after_s(ms[::-1], RULE) == pytest.approx(0.095)
    assert hedge_after_s(ms[:20], RULE) == pytest.approx(0.019)  # ceil(0.95 * 20) = 19th
    assert hedge_after_s(ms, HedgeRule(quantile=1.0, min_samples=1)) == pytest.approx(0.1)


def test_the_latency_window_keeps_only_the_last_answers() -> None:
    window = LatencyWindow(20)
    for _ in range(20):
        window.add(1.0)
    assert window.hedge_after_s(RULE) == 1.0
    for _ in range(20):
        window.add(0.02)
    assert window.hedge_after_s(RULE) == 0.02  # the slow past has rolled out


def _hits(n: int) -> list[ShardHits]:
    return [ShardHits(np.array([i], np.int64), np.array([0.5], np.float32), None, None, True) for i in range(n)]


def _replicas(name: str, answers: list[Any], calls: list[Any], tags: list[CallTag] | None = None) -> RemoteShard:
    """A shard whose calls get `answers` in turn (the replicas Serve would route them to); `tags`: each call's."""
    def call(version_dir: str, qv: np.ndarray, asks: Sequence[ShardQuery], hidden: frozenset[int],
             tag: CallTag) -> Any:
        answer = answers.pop(0)
        calls.append(answer)
        if tags is not None:
            tags.append(tag)
        return answer
    return RemoteShard(name, call)


def _search(shard: RemoteShard | list[RemoteShard], timing: ShardTiming, n: int = 2,
            kinds: list[tuple[str, str]] | None = None) -> Sequence[Sequence[ShardHits]]:
    shards = shard if isinstance(shard, list) else [shard]
    count = (lambda name, kind: kinds.append((name, kind))) if kinds is not None else None
    return fan_out(shards, "v", frozenset(), timing, count)(np.zeros((n, 4), np.float32), [ShardQuery(fetch=1)] * n)


def test_a_call_past_the_p95_is_hedged_and_the_first_answer_wins() -> None:
    stuck, fast, calls = Stuck(), Done(_hits(2)), list[Any]()
    shard, kinds = _replicas("Shard0", [stuck, fast], calls), list[tuple[str, str]]()
    out = _search(shard, ShardTiming(60.0, 60.0, hedge=SOON), kinds=kinds)
    assert calls == [stuck, fast] and [len(per) for per in out] == [2]
    assert kinds == [("Shard0", "first"), ("Shard0", "hedge")]
    assert stuck.cancelled.wait(10)  # the loser is cancelled, not left to its 60 s deadline
    assert not fast.cancelled
    assert shard.latency.hedge_after_s(HedgeRule(min_samples=1)) < 60  # the winner's time is in the window


def test_a_hedged_shard_whose_two_calls_fail_is_still_retried_once() -> None:
    calls: list[Any] = []
    shard = _replicas("Shard0", [Stuck(), Done(error=RuntimeError("replica died")), Done(_hits(2))], calls)
    kinds = list[tuple[str, str]]()
    out = _search(shard, ShardTiming(1.0, 1.0, hedge=SOON), kinds=kinds)  # the stuck first passes its deadline
    assert len(calls) == 3 and [len(per) for per in out] == [2]
    assert [kind for _, kind in kinds] == ["first", "hedge", "retry"]


def test_a_hedge_and_a_retry_carry_their_first_calls_tag_id_and_each_batch_its_own() -> None:
    """The id the Shard deployments' router keeps a hedge or retry off the first call's replica by
    (search/fleet/pinning.py): one per shard and batch, shared by the batch's calls, with each call's kind."""
    calls: list[Any] = []
    tags: list[CallTag] = []
    shard = _replicas("Shard0", [Stuck(), Done(error=RuntimeError("replica died")), Done(_hits(2)), Done(_hits(2))],
                      calls, tags)
    _search(shard, ShardTiming(1.0, 1.0, hedge=SOON))
    _search(shard, ShardTiming(1.0, 1.0, hedge=SOON))
    assert [t.kind for t in tags] == ["first", "hedge", "retry", "first"]
    assert tags[0].id == tags[1].id == tags[2].id != tags[3].id


def test_a_hedged_shard_fails_with_503_only_when_its_retry_fails_too() -> None:
    calls: list[Any] = []
    shard = _replicas("Shard1", [Stuck(), Done(error=RuntimeError("replica died")),
                                 Done(error=ConnectionError("no replica"))], calls)
    with pytest.raises(ShardUnavailable, match="shard Shard1 is unavailable: ConnectionError: no replica$"):
        # Shard0 answers at once, but may be hedged too when this thread runs late: two answers ready for it
        _search([_replicas("Shard0", [Done(_hits(2)), Done(_hits(2))], []), shard], ShardTiming(1.0, 1.0, hedge=SOON))
    assert len(calls) == 3


def test_without_a_hedge_rule_a_slow_call_waits_its_deadline_then_the_retry() -> None:
    stuck, calls = Stuck(), list[Any]()
    shard = _replicas("Shard0", [stuck, Done(_hits(2))], calls)
    _search(shard, ShardTiming(0.1, 0.1))
    assert len(calls) == 2 and not stuck.cancelled.is_set()  # it timed out: no hedge cancelled it


def test_a_cold_call_is_not_hedged() -> None:
    """A shard that may be at zero replicas: the first call waits its cold-start budget, with no hedge (a
    second call would only queue for the same starting replica)."""
    stuck, calls = Stuck(), list[Any]()
    shard = _replicas("Shard0", [stuck, Done(_hits(2))], calls)
    shard = RemoteShard(shard.name, shard.call, Warmth(idle_s=10.0))  # never answered: cold
    _search(shard, ShardTiming(0.05, 0.3, idle_s=10.0, hedge=SOON))
    assert len(calls) == 2 and not stuck.cancelled.is_set()


def _encoder(answers: list[Any], calls: list[Any]) -> Callable[[], Any]:
    def start() -> Any:
        answer = answers.pop(0)
        answer = answer() if callable(answer) else answer
        calls.append(answer)
        return answer
    return start


def test_a_stuck_encoder_call_is_retried_once_then_answers_503_naming_it() -> None:
    calls: list[Any] = []

    async def run() -> None:
        start = _encoder([StuckAwaitable, StuckAwaitable], calls)
        await call_with_deadline("QueryEncoder", start, Warmth(None), ShardTiming(0.05, 0.05))

    with pytest.raises(EncoderUnavailable, match=r"^query encoder QueryEncoder is unavailable: TimeoutError: "
                                                 r"no answer within 0.05 s$") as info:
        asyncio.run(run())
    assert info.value.encoder == "QueryEncoder" and len(calls) == 2
    assert all(call.cancelled.wait(10) for call in calls)


def test_an_encoder_call_past_its_deadline_is_answered_by_the_retry() -> None:
    calls: list[Any] = []

    async def run() -> Any:
        start = _encoder([StuckAwaitable, Answered("vector")], calls)
        return await call_with_deadline("QueryEncoder", start, Warmth(None), ShardTiming(0.05, 0.05))

    assert asyncio.run(run()) == "vector" and len(calls) == 2 and calls[0].cancelled.wait(10)
