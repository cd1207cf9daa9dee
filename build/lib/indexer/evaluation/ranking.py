"""Run-and-qrels metrics: Recall@K, nDCG@K (graded), MRR and mAP over a whole run, in the TREC sense.

A *run* is one ranked id list per query (best first); *qrels* give each query's relevant ids, either as a set
(binary relevance) or as a mapping id -> grade (grade > 0 is relevant; nDCG uses the grades as gains). The
binary metrics are the ones in `metrics`; this module adds the graded and precision-based ones and one
`score_run` that reports everything the evaluation suite prints.
"""

from __future__ import annotations

from math import log2
from typing import Hashable, Mapping, Sequence

from indexer.evaluation import metrics

Qrel = Mapping[Hashable, float] | set
DEFAULT_KS = (1, 5, 10)


def as_grades(qrel: Qrel) -> dict[Hashable, float]:
    """A qrel as id -> grade; a set means grade 1 for each member. Non-positive grades are not relevant."""
    if isinstance(qrel, Mapping):
        grades = {k: float(v) for k, v in qrel.items()}
        if any(v < 0 for v in grades.values()):
            raise ValueError("relevance grades must be >= 0")
        return {k: v for k, v in grades.items() if v > 0}
    if isinstance(qrel, (set, frozenset)):
        return dict.fromkeys(qrel, 1.0)
    raise TypeError(f"a qrel is a set of relevant ids or a mapping id -> grade, got {type(qrel).__name__}")


def _prepare(run: Sequence[Sequence[Hashable]], qrels: Sequence[Qrel]) -> list[dict[Hashable, float]]:
    graded = [as_grades(q) for q in qrels]
    metrics._check(run, [set(g) for g in graded])
    return graded


def ndcg_at_k(run: Sequence[Sequence[Hashable]], qrels: Sequence[Qrel], k: int) -> float:
    """Mean nDCG@k with linear gains (gain = grade) and log2(rank + 1) discount; ideal = grades sorted."""
    if k < 1:
        raise ValueError("k must be >= 1")
    total = 0.0
    for ranked, grades in zip(run, _prepare(run, qrels)):
        dcg = sum(grades.get(x, 0.0) / log2(i + 2) for i, x in enumerate(_dedup(ranked)[:k]))
        ideal = sorted(grades.values(), reverse=True)[:k]
        total += dcg / sum(g / log2(i + 2) for i, g in enumerate(ideal))
    return total / len(run)


def average_precision(ranked: Sequence[Hashable], relevant: set, k: int | None = None) -> float:
    """AP of one ranking: mean of precision at each relevant hit, divided by all relevant ids (not only found)."""
    if not relevant:
        raise ValueError("a query needs at least one relevant id")
    hits, total = 0, 0.0
    for i, x in enumerate(_dedup(ranked)[:k]):
        if x in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / len(relevant)


def mean_average_precision(run: Sequence[Sequence[Hashable]], qrels: Sequence[Qrel], k: int | None = None) -> float:
    """mAP (optionally mAP@k, still normalised by every relevant id, as trec_eval does)."""
    graded = _prepare(run, qrels)
    return sum(average_precision(r, set(g), k) for r, g in zip(run, graded)) / len(run)


def _dedup(ranked: Sequence[Hashable]) -> list[Hashable]:
    """A result listed twice counts once (a broken run must not score above a correct one)."""
    return list(dict.fromkeys(x for x in ranked if x is not None))


def score_run(run: Sequence[Sequence[Hashable]], qrels: Sequence[Qrel], ks: Sequence[int] = DEFAULT_KS,
              n_items: int | None = None) -> dict[str, float]:
    """Every metric the suite reports for one run: R@K (hit rate, the CLIP-paper recall), recall@K (share of
    relevant found), nDCG@K, MRR, mAP; with `n_items`, the chance level of R@K as well."""
    relevant = [set(as_grades(q)) for q in qrels]
    deduped = [_dedup(r) for r in run]
    out: dict[str, float] = {"queries": len(run)}
    for k in ks:
        out[f"R@{k}"] = metrics.hit_rate_at_k(deduped, relevant, k)
        out[f"recall@{k}"] = metrics.recall_at_k(deduped, relevant, k)
        out[f"nDCG@{k}"] = ndcg_at_k(deduped, qrels, k)
        if n_items is not None:
            out[f"chance_R@{k}"] = metrics.chance_hit_rate_at_k(n_items, [len(r) for r in relevant], k)
    out["MRR"] = metrics.mean_reciprocal_rank(deduped, relevant)
    out["mAP"] = mean_average_precision(deduped, qrels)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def first_relevant_rank(ranked: Sequence[Hashable], relevant: Qrel) -> int | None:
    """1-based rank of the first relevant result, None when none was returned (used to find worst queries)."""
    grades = as_grades(relevant)
    return next((i + 1 for i, x in enumerate(_dedup(ranked)) if x in grades), None)
