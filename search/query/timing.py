"""Per-request stage timings: reported in the response body, a Server-Timing header and Prometheus."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["StageTimer"]


class StageTimer:
    """Accumulates wall time per named stage (a stage entered twice adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        """Seconds per stage, rounded for reports."""
        return {name: round(s, 4) for name, s in self.seconds.items()}

    def milliseconds(self) -> dict[str, float]:
        return {name: round(s * 1000.0, 3) for name, s in self.seconds.items()}

    def server_timing(self) -> str:
        return ", ".join(f"{name};dur={s * 1000.0:.3f}" for name, s in self.seconds.items())
