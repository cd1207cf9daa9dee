"""Service area: the admission rules on their own, on an injected clock (no service, no sleeps): what fits the
deadline, what is refused and why, and how busy time becomes the learnt cost per request."""

from __future__ import annotations

import math

import pytest

from search.query.admission import Admission, MeasuredCost, Overloaded


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_measured_cost_is_an_exponentially_weighted_mean_of_sane_samples():
    cost = MeasuredCost(1.0)
    assert cost.predicted_cost() == 1.0
    cost.observe(2.0)
    assert cost.predicted_cost() == pytest.approx(1.2)
    for bad in (-0.5, math.inf, math.nan):
        cost.observe(bad)
    assert cost.predicted_cost() == pytest.approx(1.2)
    cost.observe(0.0)
    assert cost.predicted_cost() == pytest.approx(0.96)
    heavy = MeasuredCost(1.0, weight=0.5)
    heavy.observe(3.0)
    assert heavy.predicted_cost() == 2.0


@pytest.mark.parametrize(("queued", "extra", "expected"), [
    (0, 0.0, True),     # nothing queued always fits, whatever the cost
    (1, 0.0, True),     # (1 + 1) x 0.25 = 0.5 <= 0.5: exactly at the deadline fits
    (1, 0.01, False),   # time spent before the queue counts
    (2, 0.0, False),
    (3, 0.0, False),    # the queue bound
])
def test_fits_the_deadline_and_the_queue_bound(queued, extra, expected):
    admission = Admission(deadline_s=0.5, max_queue=3, cost=MeasuredCost(0.25))
    assert admission.fits(queued, extra_wait_s=extra) is expected


def test_fits_with_a_given_cost_and_the_queue_bound_even_when_idle():
    admission = Admission(deadline_s=1.0, max_queue=0, cost=MeasuredCost(0.1))
    assert not admission.fits(0)
    roomy = Admission(deadline_s=1.0, max_queue=10, cost=MeasuredCost(5.0))
    assert roomy.fits(0) and not roomy.fits(1) and roomy.fits(1, predicted_cost=0.5)


def test_admit_until_the_predicted_wait_passes_the_deadline_then_refuse_with_retry_after():
    clock = Clock()
    admission = Admission(deadline_s=0.35, max_queue=100, cost=MeasuredCost(0.1), clock=clock)
    clock.now = 5.0
    tickets = [admission.admit() for _ in range(3)]
    assert admission.depth == 3 and admission.admitted == 3 and admission.rejected == 0
    assert [t.started for t in tickets] == [5.0, 5.0, 5.0] and tickets[0].cost == 0.1
    assert admission.predicted_wait() == pytest.approx(0.4)
    assert admission.predicted_wait(predicted_cost=1.0, queued=1) == 2.0
    assert admission.try_admit() is None and admission.rejected == 1
    with pytest.raises(Overloaded, match=r"predicted wait 400 ms > deadline 350 ms") as refused:
        admission.admit()
    assert refused.value.retry_after_s == pytest.approx(0.4) and admission.rejected == 2
    ticket = admission.try_admit(predicted_cost=0.0)  # a free request still fits
    assert ticket is not None and ticket.cost == 0.0 and admission.depth == 4


def test_retry_after_is_never_zero():
    admission = Admission(deadline_s=-1.0, max_queue=100, cost=MeasuredCost(0.0))
    admission.admit()
    with pytest.raises(Overloaded) as refused:
        admission.admit()
    assert refused.value.retry_after_s == 0.001


def test_a_ticket_releases_once():
    admission = Admission(deadline_s=1.0, max_queue=10, cost=MeasuredCost(0.1), clock=Clock())
    with admission.admit() as ticket:
        assert admission.depth == 1 and not ticket.released
    assert admission.depth == 0 and ticket.released
    ticket.release()
    assert admission.depth == 0


def test_busy_time_per_release_becomes_the_cost_once_enough_samples_are_in():
    clock = Clock()
    cost = MeasuredCost(9.0, weight=1.0)  # weight 1: the cost is the last sample itself
    admission = Admission(deadline_s=100.0, max_queue=100, cost=cost, window=8, clock=clock)  # 2 samples
    clock.now = 10.0
    a, b, c = admission.admit(), admission.admit(), admission.admit()
    clock.now = 11.0
    a.release()  # busy 1 s; one sample, two queued: not yet
    assert cost.predicted_cost() == 9.0
    clock.now = 14.0
    b.release()  # busy 3 s since the last release: mean of (1, 3)
    assert cost.predicted_cost() == 2.0
    clock.now = 14.5
    c.release()
    assert cost.predicted_cost() == pytest.approx(4.5 / 3)
    clock.now = 100.0  # idle time is not busy time: the next busy period starts at its first admit
    d = admission.admit()
    clock.now = 101.5
    d.release()
    assert cost.predicted_cost() == pytest.approx(6.0 / 4)


def test_an_emptied_queue_samples_even_before_the_window_quarter():
    clock = Clock()
    cost = MeasuredCost(9.0, weight=1.0)
    admission = Admission(deadline_s=100.0, max_queue=100, cost=cost, window=64, clock=clock)
    ticket = admission.admit()
    clock.now = 2.0
    ticket.release()
    assert cost.predicted_cost() == 2.0


@pytest.mark.parametrize("window", [0, 1])
def test_a_tiny_window_keeps_the_last_release_only(window):
    clock = Clock()
    cost = MeasuredCost(9.0, weight=1.0)
    admission = Admission(deadline_s=100.0, max_queue=100, cost=cost, window=window, clock=clock)
    first, second = admission.admit(), admission.admit()
    clock.now = 1.0
    first.release()
    assert cost.predicted_cost() == 1.0
    clock.now = 4.0
    second.release()
    assert cost.predicted_cost() == 3.0


def test_a_clock_that_steps_back_counts_no_negative_busy_time():
    clock = Clock()
    cost = MeasuredCost(9.0, weight=1.0)
    admission = Admission(deadline_s=100.0, max_queue=100, cost=cost, window=1, clock=clock)
    clock.now = 5.0
    ticket = admission.admit()
    clock.now = 4.0
    ticket.release()
    assert cost.predicted_cost() == 0.0


def test_the_default_window_averages_the_last_64_releases():
    clock = Clock()
    cost = MeasuredCost(9.0, weight=1.0)
    admission = Admission(deadline_s=1000.0, max_queue=100, cost=cost, clock=clock)
    for busy in [100.0] + [1.0] * 64:
        ticket = admission.admit()
        clock.now += busy
        ticket.release()
    assert cost.predicted_cost() == 1.0  # the 100 s release has left the window


def test_a_window_of_six_samples_from_its_first_release():
    clock = Clock()
    cost = MeasuredCost(9.0, weight=1.0)
    admission = Admission(deadline_s=1000.0, max_queue=100, cost=cost, window=6, clock=clock)  # 6 // 4 = 1
    first, _ = admission.admit(), admission.admit()
    clock.now = 2.0
    first.release()
    assert cost.predicted_cost() == 2.0


def test_admit_uses_the_cost_it_is_given_for_the_decision_and_the_message():
    admission = Admission(deadline_s=1.5, max_queue=100, cost=MeasuredCost(1.0), clock=Clock())
    admission.admit()
    with pytest.raises(Overloaded, match=r"^encoder queue is full \(predicted wait 2000 ms > deadline 1500 ms\)$"):
        admission.admit()
    assert admission.admit(predicted_cost=0.0).cost == 0.0  # free: fits behind one
    with pytest.raises(Overloaded, match="predicted wait 15000 ms") as refused:
        admission.admit(predicted_cost=5.0)  # two queued: (2 + 1) x 5 s
    assert refused.value.retry_after_s == 15.0
