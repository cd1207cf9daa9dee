"""What a shard answer weighs between replicas: the candidates' rows travel as float16, the precision they are
stored in (the rerank vectors are float16 on disk and `vectors_at` only widens them), so narrowing them for the
trip and widening them at the ingress gives back the same float32 values and halves the largest part of the
answer. At D = 512 a 100-candidate answer is 200 KiB in float32, over Ray's 100 KiB limit for answers passed
inline rather than through the object store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from search.query.shard import ShardHits

__all__ = ["from_wire", "to_wire"]


def to_wire(hits: Sequence[ShardHits]) -> list[ShardHits]:
    """A shard's answer as it leaves the replica: rows as float16 (exact: they were float16 before
    `vectors_at`)."""
    return [h if h.vectors is None else replace(h, vectors=h.vectors.astype(np.float16)) for h in hits]


def from_wire(hits: Sequence[ShardHits]) -> list[ShardHits]:
    """The answer as the merge takes it: rows as float32 again."""
    return [h if h.vectors is None else replace(h, vectors=h.vectors.astype(np.float32)) for h in hits]
