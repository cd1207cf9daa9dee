"""Shared by the text-family tests: a corpus sent through the service's micro-batcher all at once, with the
batch shapes the pool's members were called with (to show that mixed lengths really shared a batch)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from search.runtime.batcher import MicroBatcher


def micro_batched(text: Any, corpus: Sequence[str]) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Every text of `corpus` submitted concurrently to a calibrated MicroBatcher over `text` (a runtime text
    tower): (vectors in corpus order, the token-array shape of each call the members ran)."""
    batcher = MicroBatcher(text, window_s=0.003, max_batch=8, calibrate=True)
    calls: list[tuple[int, ...]] = []
    inner = text.encode_token_ids

    def recording(tokens: np.ndarray) -> np.ndarray:
        calls.append(tuple(tokens.shape))
        return np.asarray(inner(tokens))

    for member in batcher.pool.members:
        member.run = recording

    async def all_at_once() -> list[np.ndarray]:
        return list(await asyncio.gather(*(batcher.encode(t) for t in corpus)))

    try:
        return np.stack(asyncio.run(all_at_once())), calls
    finally:
        batcher.close()
