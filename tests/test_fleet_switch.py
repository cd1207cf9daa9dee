"""The fleet's Ray-free rules for switching versions together and for waiting on a shard that may be scaled to
zero (search/fleet/switch.py, search/fleet/fanout.py): every shard must report the next version ready, and a
call after idle gets the cold-start budget."""

from __future__ import annotations

import pytest

from search.artifact.manifest import ArtifactError
from search.fleet.fanout import ShardTiming, Warmth
from search.fleet.switch import PartReady, RemotePrepare, prepare_all, refusals, version_gate
from tests.fleet_support import Done


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
