"""Second stage of a search: exact cosine on stored vectors, business-signal blending, near-duplicate
collapse, MMR diversity and the score cutoff. Pure numpy, so it is testable without a server or an index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np

__all__ = ["RerankWeights", "Ranked", "exact_cosine", "business_boost", "collapse_duplicates", "mmr_order",
           "rank_candidates", "rerank"]


@dataclass(frozen=True)
class RerankWeights:
    """Blend weights from config; 0 disables a signal (the default: pure similarity)."""

    popularity: float = 0.0
    freshness: float = 0.0
    freshness_half_life_days: float = 365.0


class Ranked(NamedTuple):
    """One ranked hit (a named tuple: a rerank builds hundreds per query, and 200 of them cost 1.5-3.2x less
    than frozen dataclasses; benchmarks/rerank_path.py)."""

    id: int
    score: float       # final score (similarity + business boost)
    similarity: float  # exact cosine


def exact_cosine(query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Cosine of the query against stored rows (unit vectors by contract, float16 on disk).

    Rows are not renormalised, so scores equal the artifact's exact search bit for bit (same float32 product).
    """
    v = np.asarray(vectors, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32).ravel()
    return v @ (q / max(float(np.linalg.norm(q)), 1e-12))


def _freshness(created_at: Any, half_life_days: float, now: datetime) -> float:
    if not created_at:
        return 0.0
    try:
        when = datetime.fromisoformat(str(created_at).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    age_days = max(0.0, (now - when).total_seconds() / 86400.0)
    return float(0.5 ** (age_days / max(half_life_days, 1e-9)))


def business_boost(metas: Sequence[dict[str, Any]], weights: RerankWeights,
                   now: datetime | None = None) -> np.ndarray:
    """Per-candidate additive boost in [0, w_pop + w_fresh]: squashed log-popularity and exponential recency."""
    boost = np.zeros(len(metas), np.float32)
    if weights.popularity == 0.0 and weights.freshness == 0.0:
        return boost
    now = now or datetime.now(UTC)
    for i, meta in enumerate(metas):
        pop = math.log1p(max(0.0, float(meta.get("popularity") or 0.0)))
        fresh = _freshness(meta.get("taken_at") or meta.get("created_at"), weights.freshness_half_life_days, now)
        boost[i] = weights.popularity * pop / (1.0 + pop) + weights.freshness * fresh
    return boost


def collapse_duplicates(order: np.ndarray, vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Walk `order` best-first, dropping any item whose cosine to an already kept one exceeds `threshold`."""
    unit = _unit(vectors)
    kept: list[int] = []
    for idx in order.tolist():
        if kept and float(np.max(unit[kept] @ unit[idx])) > threshold:
            continue
        kept.append(idx)
    return np.asarray(kept, dtype=np.int64)


def mmr_order(order: np.ndarray, scores: np.ndarray, vectors: np.ndarray, diversity: float,
              limit: int) -> np.ndarray:
    """Maximal marginal relevance: pick argmax (1-d)*score - d*max_sim_to_picked, `limit` times."""
    unit = _unit(vectors)
    remaining = order.tolist()
    picked: list[int] = []
    max_sim = np.full(len(scores), -np.inf, np.float32)
    while remaining and len(picked) < limit:
        rem = np.asarray(remaining)
        penalty = np.where(np.isfinite(max_sim[rem]), max_sim[rem], 0.0) if picked else np.zeros(len(rem))
        value = (1.0 - diversity) * scores[rem] - diversity * penalty
        best = int(rem[int(np.argmax(value))])
        picked.append(best)
        remaining.remove(best)
        max_sim = np.maximum(max_sim, unit @ unit[best])
    return np.asarray(picked, dtype=np.int64)


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    return np.asarray(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))


def rerank(query: np.ndarray, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, metas: Sequence[dict[str, Any]],
           weights: RerankWeights, *, limit: int, dedup_threshold: float | None = None,
           diversity: float = 0.0, min_score: float | None = None) -> list[Ranked]:
    """Candidates (already filtered) -> at most `limit` ranked hits, best first."""
    if len(ids) == 0:
        return []
    return rank_candidates(ids, exact_cosine(query, vectors), vectors, metas, weights, limit=limit,
                           dedup_threshold=dedup_threshold, diversity=diversity, min_score=min_score)


def rank_candidates(ids: Sequence[int] | np.ndarray, sims: np.ndarray, vectors: np.ndarray,
                    metas: Sequence[dict[str, Any]], weights: RerankWeights, *, limit: int,
                    dedup_threshold: float | None = None, diversity: float = 0.0,
                    min_score: float | None = None) -> list[Ranked]:
    """`rerank` on similarities already computed (by a shard, search/query/shard.py): business boost, stable sort,
    score cutoff, near-duplicate collapse and MMR over `vectors` (the candidates' float32 rows)."""
    if len(ids) == 0:
        return []
    scores = sims + business_boost(metas, weights)
    # Equal scores (the same photo uploaded twice has the same vector) rank by ascending id, not by where the
    # candidates came from: so the page does not depend on the ANN order or on how a version is sharded.
    order = np.lexsort((np.asarray(ids, dtype=np.int64), -scores))
    if min_score is not None:
        order = order[scores[order] >= min_score]
    if dedup_threshold is not None and order.size:
        order = collapse_duplicates(order, vectors, dedup_threshold)
    if diversity > 0.0 and order.size:
        order = mmr_order(order, scores, vectors, diversity, limit)
    top = order[:limit]  # one conversion to Python numbers per array, not one numpy scalar per element
    return [Ranked(i, s, m) for i, s, m in zip(np.asarray(ids)[top].tolist(), scores[top].tolist(),
                                                sims[top].tolist(), strict=True)]
