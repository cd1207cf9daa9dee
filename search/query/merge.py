"""The cross-shard part of a search: one query's candidates from every shard -> its ranked list (business
signals, the score cutoff, near-duplicate collapse, MMR), and the page of it that was asked for.

Pure numpy over what the shards returned (search/query/shard.py), so the same code ranks one shard's answer in
this process and many shards' answers at a fleet's ingress.

Exactness across shards: one shard answering a fetch of F holds the version's top F by ANN score (then hides,
filters, reranks them). S shards each asked for F hold a superset; `trim_to_fetch` keeps only the candidates
among the global top F by ANN score, so the ranked list, its total and the refetch rounds are those of one
shard over the whole version (with an exact index: the same ids, order and scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from search.query.rerank import Ranked, RerankWeights, rank_candidates
from search.query.shard import ShardHits
from search.query.spec import SearchSpec

__all__ = ["merge_ranked", "satisfied", "trim_to_fetch"]


def merge_ranked(parts: Sequence[ShardHits], spec: SearchSpec, weights: RerankWeights,
                 dedup_threshold: float) -> list[Ranked]:
    """Every ranked result found among the shards' candidates, best first (MMR stops at offset + k)."""
    if spec.phase == "fast":
        return _merge_fast(parts)
    ids = np.concatenate([p.ids for p in parts]) if parts else np.empty(0, np.int64)
    if len(ids) == 0:
        return []
    sims = np.concatenate([p.similarity for p in parts])
    rows = [p.vectors for p in parts if p.vectors is not None]  # none unless dedup or MMR asked for them
    vectors = np.concatenate(rows) if rows else np.empty((0, 0), np.float32)
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


def trim_to_fetch(parts: Sequence[ShardHits], fetch: int) -> list[ShardHits]:
    """The shards' hits cut to the candidates among the global top `fetch` by ANN score (what one shard
    holding every vector fetches); a cut marks every part not exhausted, since a larger fetch finds more.
    One part, or parts without ANN scores, come back as they are. Candidates tied with the cut all stay."""
    scored = [(p, p.ann, p.fetched) for p in parts]
    if len(parts) < 2 or any(ann is None or fetched is None for _, ann, fetched in scored):
        return list(parts)
    scores = np.concatenate([fetched for _, _, fetched in scored if fetched is not None])
    if len(scores) <= fetch:
        return list(parts)
    cut = np.partition(scores, len(scores) - fetch)[len(scores) - fetch]  # the fetch-th largest
    trimmed = []
    for p, ann, fetched in scored:
        keep = np.asarray(ann) >= cut
        metas = [m for m, k in zip(p.metas, keep.tolist(), strict=True) if k] if p.metas is not None else None
        trimmed.append(ShardHits(p.ids[keep], p.similarity[keep], p.vectors[keep] if p.vectors is not None else None,
                                 metas, False, np.asarray(ann)[keep], np.asarray(fetched)[np.asarray(fetched) >= cut]))
    return trimmed


def satisfied(ranked: Sequence[Ranked], parts: Sequence[ShardHits], spec: SearchSpec) -> bool:
    """The page is final: it has offset + k results, or every shard was searched to the end."""
    return len(ranked) >= spec.need or all(p.exhausted for p in parts)
