"""A cost model with a fixed prediction, for deterministic admission and shedding tests."""

from __future__ import annotations


class FixedCost:
    """Predicts `seconds` for every encode and records what it was told (the admission's cost protocol)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.seen: list[float] = []

    def predicted_cost(self) -> float:
        return self.seconds

    def observe(self, seconds: float) -> None:
        self.seen.append(seconds)
