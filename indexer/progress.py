"""Per-stage timings for the run report, and tqdm progress bars that appear only on a terminal."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class StageTimer:
    """Accumulates wall seconds per stage; a stage may be entered many times (e.g. once per batch)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self._seconds[name] += seconds

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self._seconds.items()}


def progress_bar(total: int, desc: str, unit: str = "img"):
    """A tqdm bar with ETA on stderr, disabled when stderr is not a TTY (logs, CI, tests)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty(), dynamic_ncols=True)
