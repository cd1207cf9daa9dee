"""Pure retrieval metrics over ranked result lists and sets of relevant ids (no model, no I/O).

Conventions: `ranked` is one list of result ids per query, best first; `relevant` is one set per query. A
query with no relevant ids is a caller error (it would make every metric meaningless), so it raises.
"""

from __future__ import annotations

from math import comb
from typing import Hashable, Sequence

Ranked = Sequence[Sequence[Hashable]]
Relevant = Sequence[set]


def _check(ranked: Ranked, relevant: Relevant) -> None:
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings but {len(relevant)} relevant sets")
    if not ranked:
        raise ValueError("no queries to evaluate")
    if any(not r for r in relevant):
        raise ValueError("every query needs at least one relevant id")


def hit_rate_at_k(ranked: Ranked, relevant: Relevant, k: int) -> float:
    """R@K as used for text->image retrieval: share of queries with at least one relevant id in the top k."""
    _check(ranked, relevant)
    return sum(bool(rel.intersection(list(r)[:k])) for r, rel in zip(ranked, relevant)) / len(ranked)


def recall_at_k(ranked: Ranked, relevant: Relevant, k: int) -> float:
    """Mean share of each query's relevant ids found in its top k (stricter when queries have many)."""
    _check(ranked, relevant)
    return sum(len(rel.intersection(list(r)[:k])) / len(rel) for r, rel in zip(ranked, relevant)) / len(ranked)


def mean_reciprocal_rank(ranked: Ranked, relevant: Relevant) -> float:
    """Mean of 1/rank of the first relevant id (0 when none is ranked)."""
    _check(ranked, relevant)
    total = 0.0
    for r, rel in zip(ranked, relevant):
        total += next((1.0 / (i + 1) for i, x in enumerate(r) if x in rel), 0.0)
    return total / len(ranked)


def chance_hit_rate_at_k(n_items: int, n_relevant: Sequence[int], k: int) -> float:
    """Expected hit_rate_at_k of a uniformly random ranking of `n_items` (the baseline a model must beat)."""
    if n_items < 1 or not n_relevant:
        raise ValueError("need at least one item and one query")
    k = min(k, n_items)
    return sum(1.0 - comb(n_items - r, k) / comb(n_items, k) for r in n_relevant) / len(n_relevant)


def recall_against_exact(approx: Ranked, exact: Ranked, k: int) -> float:
    """ANN quality: mean share of the exact top-k ids that the approximate search also returned in its top k."""
    if len(approx) != len(exact) or not exact:
        raise ValueError("need the same non-zero number of approximate and exact rankings")
    total = 0.0
    for a, e in zip(approx, exact):
        truth = set(list(e)[:k])
        total += len(truth.intersection(list(a)[:k])) / max(len(truth), 1)
    return total / len(exact)
