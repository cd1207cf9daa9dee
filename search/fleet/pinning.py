"""Which replica a shard's hedge or retry may go to (no Ray here: the Shard deployments' request router in
search/fleet/app.py applies it inside Serve's routing).

A hedge is sent because the first call waits on a slow replica, a retry because a call failed or passed its
deadline on one: sent to that same replica, either shares the first call's fate. Serve's default router picks
by queue length, which with equal queues may be that replica. So every call of one shard's batch carries a
`CallTag` (the batch's id and the call's kind); the router remembers the replicas the id's calls were sent to
and gives a hedge or retry only the others, or every replica when no other runs (one replica, scaled down).

Memory stays bounded without hearing back from the fan-out: an id is forgotten `ttl_s` after its last call was
sent (by then the fan-out has its answer or has given the shard up: the fleet sets `ttl_s` past the first call's
budget plus the retry's), and the oldest ids go first past `capacity`. Serve's hook for a call's end does not say
whether it answered, and a failed call's retry still needs its id, so an end alone cannot forget it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

__all__ = ["CallKind", "CallTag", "Pins", "allowed_replicas"]

CallKind = Literal["first", "hedge", "retry"]
R = TypeVar("R", bound=Hashable)


@dataclass(frozen=True)
class CallTag:
    """One shard call's place in its batch: `id` is shared by the first call, its hedge and its retry."""

    id: str
    kind: CallKind


def allowed_replicas(candidates: Sequence[R], tag: CallTag | None, used: frozenset[R]) -> list[R]:
    """The replicas a call may be routed to: a hedge or retry avoids the replicas its batch's earlier calls were
    sent to (`used`) while another runs; a first call or an untagged one (not a shard search) may go to any."""
    if tag is None or tag.kind == "first":
        return list(candidates)
    others = [r for r in candidates if r not in used]
    return others or list(candidates)


class Pins(Generic[R]):
    """The replicas each recent batch id's calls were sent to (thread-safe)."""

    def __init__(self, ttl_s: float = 120.0, capacity: int = 16384, clock: Callable[[], float] = time.monotonic):
        if ttl_s <= 0 or capacity < 1:
            raise ValueError(f"ttl_s must be positive and capacity at least 1, got {ttl_s} and {capacity}")
        self.ttl_s, self.capacity, self.clock = ttl_s, capacity, clock
        self._sent: OrderedDict[str, tuple[float, frozenset[R]]] = OrderedDict()  # oldest last send first
        self._lock = threading.Lock()

    def allowed(self, candidates: Sequence[R], tag: CallTag | None) -> list[R]:
        """`allowed_replicas` with the replicas this tag's id was sent to so far."""
        used: frozenset[R] = frozenset()
        if tag is not None:
            with self._lock:
                self._expire(self.clock())
                used = self._sent.get(tag.id, (0.0, used))[1]
        return allowed_replicas(candidates, tag, used)

    def sent(self, tag: CallTag, replica: R) -> None:
        """A call of `tag.id` was sent to `replica` (remembered before it answers: a hedge may follow while it
        runs)."""
        now = self.clock()
        with self._lock:
            self._sent[tag.id] = (now, self._sent.get(tag.id, (now, frozenset()))[1] | {replica})
            self._sent.move_to_end(tag.id)
            self._expire(now)

    def _expire(self, now: float) -> None:
        while self._sent and (len(self._sent) > self.capacity or
                              now - next(iter(self._sent.values()))[0] >= self.ttl_s):
            self._sent.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sent)
