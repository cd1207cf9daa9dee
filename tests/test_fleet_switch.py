"""The fleet's Ray-free rules for switching versions together and for waiting on a shard that may be scaled to
zero (search/fleet/switch.py, search/fleet/fanout.py): every shard must report the next version ready, a
call after idle gets the cold-start budget, and a query the encoder embeds wakes the cold shards as the encode
starts, not after it."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from search.artifact.manifest import ArtifactError
from search.fleet.fanout import RemoteShard, ShardTiming, Warmth, encode_waking
from search.fleet.switch import PartReady, RemotePrepare, prepare_all, refusals, version_gate
from tests.fleet_support import Done, Stuck


def _shard(name: str, answer: Done, asked: list[str]) -> RemotePrepare:
    def call(version_dir: str) -> Done:
        asked.append(f"{name}:{version_dir}")
        return answer
    return RemotePrepare(name, call)


def test_every_shard_ready_admits_the_version() -> None:
    asked: list[str] = []
    shards = [_shard(f"Shard{i}", Done(PartReady("v2")), asked) for i in range(3)]
    prepare_all(shards, "/store/versions/v2", "v2", 1.0)
    assert asked == [f"Shard{i}:/store/versions/v2" for i in range(3)]


def test_one_shard_refusing_keeps_the_fleet_on_its_version_naming_every_reason() -> None:
    shards = [_shard("Shard0", Done(PartReady("v2")), []),
              _shard("Shard1", Done(PartReady("v2", "part 1: checksum mismatch in vectors.f16.npy")), []),
              _shard("Shard2", Done(error=TimeoutError("no replica\nmore")), [])]
    with pytest.raises(ArtifactError) as info:
        prepare_all(shards, "/store/versions/v2", "v2", 1.0)
    assert str(info.value) == (
        "version v2 not switched to, the fleet stays on the version it serves: "
        "Shard1 refused it (part 1: checksum mismatch in vectors.f16.npy); "
        "Shard2 did not answer (TimeoutError: no replica)")


def test_a_shard_reporting_another_version_is_not_ready() -> None:
    assert refusals("v2", [("Shard0", PartReady("v1"))]) == ["Shard0 reported version v1"]
    assert refusals("v2", [("Shard0", PartReady("v2")), ("Shard1", PartReady("v2"))]) == []


def test_the_gate_asks_the_shards_only_when_a_version_already_serves() -> None:
    class Opened:
        path, version = "/store/versions/v2", "v2"

    asked: list[str] = []
    gate = version_gate([_shard("Shard0", Done(PartReady("v1", "broken")), asked)], 1.0)
    gate(Opened(), None)  # type: ignore[arg-type]  # the first version: each replica opened it at its start
    assert asked == []
    with pytest.raises(ArtifactError, match="Shard0 refused it"):
        gate(Opened(), "v1")  # type: ignore[arg-type]
    assert asked == ["Shard0:/store/versions/v2"]


def test_a_call_after_idle_gets_the_cold_start_budget() -> None:
    now = [100.0]
    timing = ShardTiming(timeout_s=2.0, cold_start_timeout_s=30.0, idle_s=10.0)
    warmth = Warmth(timing.idle_s, clock=lambda: now[0])
    assert warmth.budget(timing) == 30.0  # never answered: may be at zero replicas
    warmth.answered()
    now[0] += 4.9
    assert warmth.budget(timing) == 2.0
    now[0] += 0.1  # half the delay to zero: its replica may be going
    assert warmth.budget(timing) == 30.0
    assert Warmth(None).budget(timing) == 2.0  # a deployment that keeps a replica is always warm


def test_a_cold_shard_is_woken_once_per_cold_spell_and_warm_once_its_wake_answers() -> None:
    now = [100.0]
    timing = ShardTiming(timeout_s=2.0, cold_start_timeout_s=30.0, idle_s=10.0)
    warmth = Warmth(timing.idle_s, clock=lambda: now[0])
    assert warmth.wake_due() is True
    assert warmth.wake_due() is False  # its wake-up call is out: the next cold query does not make another
    warmth.woken(answered=False)
    assert warmth.wake_due() is True  # that one failed: the next cold query wakes it again
    warmth.woken(answered=True)
    assert warmth.wake_due() is False and warmth.budget(timing) == 2.0  # a replica is up: warm
    now[0] += 5.0
    assert warmth.wake_due() is True  # idle again for half its delay to zero
    assert Warmth(None).wake_due() is False  # a deployment that keeps a replica is never woken


def test_a_cold_query_wakes_its_cold_shards_before_the_encoder_answers() -> None:
    """The encoder here answers only once Shard0's wake-up call has been made: were the shards woken after the
    encode (as the search calls them), it would never answer. The warm shard and the one that never scales to
    zero get no call."""
    timing = ShardTiming(timeout_s=2.0, cold_start_timeout_s=30.0, idle_s=10.0)
    counted: list[tuple[str, str]] = []
    wakes: list[str] = []
    pending = Stuck()  # Shard0's replica is still starting: its wake-up has not answered

    async def run() -> Any:
        woken = asyncio.Event()

        def wake(name: str) -> Any:
            def call() -> Stuck:
                wakes.append(name)
                woken.set()
                return pending
            return call

        def never(*args: Any) -> Any:
            raise AssertionError("a search call while only encoding")

        warm = RemoteShard("Shard1", never, Warmth(timing.idle_s), wake=wake("Shard1"))
        warm.warmth.answered()
        shards = [RemoteShard("Shard0", never, Warmth(timing.idle_s), wake=wake("Shard0")), warm,
                  RemoteShard("Shard2", never, Warmth(None), wake=wake("Shard2"))]

        async def encode() -> np.ndarray:
            await woken.wait()
            return np.ones(4, np.float32)

        first = await asyncio.wait_for(encode_waking(encode, shards, timing, lambda *c: counted.append(c)), 10)
        again = await asyncio.wait_for(encode_waking(lambda: asyncio.sleep(0, np.zeros(4)), shards, timing), 10)
        return first, again

    try:
        first, again = asyncio.run(run())
    finally:
        pending.cancel()
    assert first.tolist() == [1.0] * 4 and again.tolist() == [0.0] * 4
    assert wakes == ["Shard0"] and counted == [("Shard0", "wake")]  # once: its wake-up is still out


def test_a_wake_up_that_cannot_be_made_is_made_again_by_the_next_cold_query() -> None:
    timing = ShardTiming(timeout_s=2.0, cold_start_timeout_s=30.0, idle_s=10.0)
    made: list[str] = []
    pending = Stuck()

    def wake() -> Stuck:
        made.append("wake")
        if len(made) == 1:
            raise RuntimeError("no route to the deployment yet")
        return pending

    shard = RemoteShard("Shard0", lambda *a: pending, Warmth(timing.idle_s), wake=wake)

    async def encode() -> int:
        return 1

    try:
        assert asyncio.run(encode_waking(encode, [shard], timing)) == 1  # the encode is answered all the same
        assert asyncio.run(encode_waking(encode, [shard], timing)) == 1
    finally:
        pending.cancel()
    assert made == ["wake", "wake"]


def test_a_wake_up_past_its_deadline_is_cancelled_and_made_again_by_the_next_cold_query() -> None:
    timing = ShardTiming(timeout_s=0.01, cold_start_timeout_s=0.01, idle_s=10.0)  # the wake-up waits 10 ms
    calls: list[Stuck] = []

    def wake() -> Stuck:
        calls.append(Stuck())
        return calls[-1]

    shard = RemoteShard("Shard0", lambda *a: Stuck(), Warmth(timing.idle_s), wake=wake)

    async def encode() -> int:
        return 1

    assert asyncio.run(encode_waking(encode, [shard], timing)) == 1
    assert calls[0].cancelled.wait(10)  # past its deadline: cancelled, not left queued at the deployment
    assert asyncio.run(encode_waking(encode, [shard], timing)) == 1
    calls[-1].cancel()
    assert len(calls) == 2  # the shard is still cold: the next query woke it again
