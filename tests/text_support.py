"""Shared by the text-family tests: an encoder exported to a store and loaded by the runtime at both text
precisions, cosine rows, and a corpus sent through the service's micro-batcher all at once with the batch shapes
the pool's members were called with (to show that mixed lengths really shared a batch)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.artifact.bundle import SPEC_FILE, EncoderBundle
from search.runtime.batcher import MicroBatcher
from search.runtime.towers import RuntimeEncoder, RuntimeOptions


def exported_bundle(encoder: Any, store: Path) -> EncoderBundle:
    """`encoder` exported into `store` by the indexer's own export, read back as the service reads it."""
    from indexer.models.export import export_bundle

    files = export_bundle(encoder, store, cache_dir=store / "cache")
    directory = store / files.dir
    return EncoderBundle.from_spec(directory, json.loads((directory / SPEC_FILE).read_text()), dict(files.files))


def runtime_encoders(bundle: EncoderBundle) -> dict[str, RuntimeEncoder]:
    """The runtime encoder of `bundle` at each text precision the service runs."""
    return {p: RuntimeEncoder.load(bundle, RuntimeOptions(text_precision=p)) for p in ("fp32", "int8")}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, D) arrays."""
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


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
