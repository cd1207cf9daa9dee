"""The ingress's fan-out over remote shards (no Ray here: a shard is a function that starts a call and
returns something with `.result(timeout_s=...)`, as a Serve DeploymentResponse does).

Every shard is called at once; a call that fails or passes its deadline is made once more (Serve routes it to
a replica that is up); a shard whose second call fails too stops the search with ShardUnavailable (503 naming
the shard), never a page missing that shard's hits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from search.query.shard import ShardFanout, ShardHits, ShardQuery, ShardUnavailable

log = logging.getLogger(__name__)

__all__ = ["Pending", "RemoteShard", "fan_out"]


class Pending(Protocol):
    def result(self, *, timeout_s: float | None = None) -> Any: ...


@dataclass(frozen=True)
class RemoteShard:
    name: str  # the deployment's name, as a 503 reports it
    call: Callable[[str, np.ndarray, Sequence[ShardQuery], frozenset[int]], Pending]  # (version dir, ...) -> call


def fan_out(shards: Sequence[RemoteShard], version_dir: str, hidden: frozenset[int],
            timeout_s: float) -> ShardFanout:
    """The fan-out `search_batch` calls for one batch over `version_dir`'s parts."""
    def fanout(qv: np.ndarray, asks: Sequence[ShardQuery]) -> Sequence[Sequence[ShardHits]]:
        args = (version_dir, qv, list(asks), hidden)
        pending = [shard.call(*args) for shard in shards]  # all shards at once
        return [_answer(shard, first, args, len(asks), timeout_s) for shard, first in zip(shards, pending,
                                                                                           strict=True)]
    return fanout


def _answer(shard: RemoteShard, first: Pending, args: tuple[Any, ...], asked: int,
            timeout_s: float) -> list[ShardHits]:
    """The shard's hits, from its first call or its one retry."""
    try:
        return _checked(first.result(timeout_s=timeout_s), asked)
    except Exception as exc:  # noqa: BLE001 - any failure of the first call earns the one retry
        log.warning("shard %s failed (%s); retrying once", shard.name, _one_line(exc))
    try:
        return _checked(shard.call(*args).result(timeout_s=timeout_s), asked)
    except Exception as exc:  # noqa: BLE001 - reported as the shard's unavailability
        raise ShardUnavailable(shard.name, _one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _checked(hits: Any, asked: int) -> list[ShardHits]:
    out = list(hits)
    if len(out) != asked or not all(isinstance(h, ShardHits) for h in out):
        raise TypeError(f"expected {asked} ShardHits, got {len(out)} answers")
    return out
