"""The rule that keeps a shard's hedge or retry off the replicas its batch's earlier calls went to
(search/fleet/pinning.py), without Ray: the Shard deployments' router applies it to Serve's replica ids
(tests/test_fleet.py runs it in a real fleet)."""

from __future__ import annotations

import pytest

from search.fleet.pinning import CallTag, Pins, allowed_replicas

A, B, C = "replica-a", "replica-b", "replica-c"


def test_a_hedge_or_retry_avoids_the_replicas_its_batch_was_sent_to() -> None:
    for kind in ("hedge", "retry"):
        tag = CallTag("batch-1", kind)
        assert allowed_replicas([A, B], tag, frozenset({A})) == [B]
        assert allowed_replicas([A, B, C], tag, frozenset({A, B})) == [C]


def test_a_first_call_or_an_untagged_one_may_go_to_any_replica() -> None:
    assert allowed_replicas([A, B], CallTag("batch-1", "first"), frozenset({A})) == [A, B]
    assert allowed_replicas([A, B], None, frozenset({A})) == [A, B]


def test_with_no_other_replica_running_the_hedge_goes_to_any() -> None:
    """One replica left (scaled down, or the others gone): a second call there beats no second call."""
    assert allowed_replicas([A], CallTag("batch-1", "hedge"), frozenset({A})) == [A]
    assert allowed_replicas([A, B], CallTag("batch-1", "retry"), frozenset({A, B})) == [A, B]


def test_pins_remember_each_ids_replicas_apart() -> None:
    pins: Pins[str] = Pins()
    pins.sent(CallTag("batch-1", "first"), A)
    pins.sent(CallTag("batch-2", "first"), B)
    assert pins.allowed([A, B, C], CallTag("batch-1", "hedge")) == [B, C]
    assert pins.allowed([A, B, C], CallTag("batch-2", "hedge")) == [A, C]
    pins.sent(CallTag("batch-1", "hedge"), B)
    assert pins.allowed([A, B, C], CallTag("batch-1", "retry")) == [C]  # the first's and the hedge's replicas
    assert pins.allowed([A, B, C], CallTag("batch-3", "hedge")) == [A, B, C]  # an id never sent: any


def test_pins_forget_an_id_its_ttl_after_its_last_send_and_keep_at_most_capacity() -> None:
    now = [0.0]
    pins: Pins[str] = Pins(ttl_s=10.0, capacity=3, clock=lambda: now[0])
    pins.sent(CallTag("old", "first"), A)
    now[0] = 5.0
    pins.sent(CallTag("new", "first"), A)
    now[0] = 9.9
    pins.sent(CallTag("old", "hedge"), B)  # a send renews its id
    now[0] = 15.0
    assert pins.allowed([A, B], CallTag("new", "hedge")) == [A, B] and len(pins) == 1  # forgotten: any
    assert pins.allowed([A, B, C], CallTag("old", "retry")) == [C]
    for i in range(5):
        pins.sent(CallTag(f"burst-{i}", "first"), A)
    assert len(pins) == 3 and pins.allowed([A, B], CallTag("burst-4", "hedge")) == [B]  # the newest kept
    assert pins.allowed([A, B], CallTag("burst-0", "hedge")) == [A, B]


def test_pins_refuse_a_memory_that_keeps_nothing() -> None:
    with pytest.raises(ValueError, match="capacity at least 1"):
        Pins(capacity=0)
