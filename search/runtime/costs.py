"""Measured cost of one encode backend: seconds per batch as a function of rows x real length.

Why: the dispatcher and the batch-size cap need "how long will this batch take on that device" in the units the
device actually shows. A start-up calibration fixes the shape (fixed overhead + per-token cost); every real
batch then rescales it (EWMA), so load from neighbours and device speed changes show up within a few batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

__all__ = ["CostModel"]


class CostModel:
    """`predict(rows, length)` seconds = scale x (fixed_s + per_token_s x rows x length)."""

    def __init__(self, fixed_s: float = 0.002, per_token_s: float = 0.0001, alpha: float = 0.2):
        self.fixed_s = fixed_s
        self.per_token_s = per_token_s
        self.alpha = alpha
        self.scale = 1.0

    def predict(self, rows: int, length: int) -> float:
        return self.scale * (self.fixed_s + self.per_token_s * max(rows, 1) * max(length, 1))

    def observe(self, rows: int, length: int, seconds: float) -> None:
        """Fold one measured batch in: the scale follows observed/predicted, clipped against outliers."""
        base = self.fixed_s + self.per_token_s * max(rows, 1) * max(length, 1)
        ratio = min(max(seconds / max(base, 1e-9), self.scale / 4), self.scale * 4)
        self.scale = (1 - self.alpha) * self.scale + self.alpha * ratio

    def cap(self, budget_s: float, length: int, max_batch: int, floor_share: float = 0.05) -> int:
        """Batch-size cap: the largest batch whose predicted cost fits the budget, but never below the knee,
        the batch at which the fixed overhead is within `floor_share` of the per-row cost (batching has paid
        off by then). The knee keeps batching alive when a loaded machine makes even one row miss the budget.
        """
        per_row = self.per_token_s * max(length, 1)
        fits = int((budget_s / self.scale - self.fixed_s) // per_row) if per_row > 0 else max_batch
        knee = math.ceil(self.fixed_s / (floor_share * per_row)) if per_row > 0 else max_batch
        return int(min(max_batch, max(1, fits, knee)))

    def calibrate(self, run: Callable[[np.ndarray], object], sample: np.ndarray, rows: tuple[int, int] = (1, 8),
                  repeats: int = 3) -> None:
        """Time `run` on `sample` (one row) repeated to two batch sizes; solve fixed and per-token cost."""
        length = sample.shape[1] if sample.ndim > 1 else 1
        medians = []
        for n in rows:
            batch = np.repeat(sample[:1], n, axis=0)
            run(batch)  # warm (allocations, kernel choice)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run(batch)
                times.append(time.perf_counter() - start)
            medians.append(float(np.median(times)))
        per_row = max((medians[1] - medians[0]) / (rows[1] - rows[0]), 1e-7)
        self.per_token_s = per_row / max(length, 1)
        self.fixed_s = max(medians[0] - per_row, 1e-5)
        self.scale = 1.0
