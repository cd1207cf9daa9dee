"""The cross-shard part of a search: one query's candidates from every shard -> its ranked list (business
signals, the score cutoff, near-duplicate collapse, MMR), and the page of it that was asked for.

Pure numpy over what the shards returned (search/query/shard.py), so the same code ranks one shard's answer in
this process and many shards' answers at a fleet's ingress.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from search.query.rerank import Ranked, RerankWeights, rank_candidates
from search.query.shard import ShardHits
from search.query.spec import SearchSpec

__all__ = ["merge_ranked", "satisfied"]


def merge_ranked(parts: Sequence[ShardHits], spec: SearchSpec, weights: RerankWeights,
                 dedup_threshold: float) -> list[Ranked]:
    """Every ranked result found among the shards' candidates, best first (MMR stops at offset + k)."""
    if spec.phase == "fast":
        return _merge_fast(parts)
    ids = np.concatenate([p.ids for p in parts]) if parts else np.empty(0, np.int64)
    if len(ids) == 0:
        return []
    sims = np.concatenate([p.similarity for p in parts])
    vectors = np.concatenate([p.vectors for p in parts if p.vectors is not None])
    metas: list[dict[str, Any]] = []
    for p in parts:
        metas.extend(p.metas if p.metas is not None else [{}] * len(p.ids))
    return rank_candidates(ids, sims, vectors, metas, weights,
                           limit=spec.need if spec.diversity > 0 else len(ids),
                           dedup_threshold=dedup_threshold if spec.dedup else None,
                           diversity=spec.diversity, min_score=spec.min_score)


def _merge_fast(parts: Sequence[ShardHits]) -> list[Ranked]:
    """The fast phase: ANN scores as they are, in score order (one shard: its ANN order unchanged)."""
    ids = np.concatenate([p.ids for p in parts]) if parts else np.empty(0, np.int64)
    sims = np.concatenate([p.similarity for p in parts]) if parts else np.empty(0, np.float32)
    if len(parts) > 1:
        order = np.argsort(-sims, kind="stable")
        ids, sims = ids[order], sims[order]
    return [Ranked(i, s, s) for i, s in zip(ids.tolist(), sims.tolist(), strict=True)]


def satisfied(ranked: Sequence[Ranked], parts: Sequence[ShardHits], spec: SearchSpec) -> bool:
    """The page is final: it has offset + k results, or every shard was searched to the end."""
    return len(ranked) >= spec.need or all(p.exhausted for p in parts)
