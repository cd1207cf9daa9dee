"""The per-shard part of a search batch: ANN (one FAISS call per fetch size), visibility (takedowns, the query
image), metadata filters and the exact float16 rescoring, for every query of the batch at once.

What a shard answers for each query is everything the cross-shard merge (search/query/merge.py) needs: candidate
ids, their exact cosine (or, in the fast phase, ANN) scores, their float32 rows when the query collapses
duplicates or diversifies (dedup and MMR compare hits with each other, possibly across shards; other queries
never read them, and at D = 512 they are most of what a fleet shard sends back) and, when ranking reads them,
their metadata rows. Today the service has
one shard (the artifact it serves); a sharded fleet calls this per shard and merges at the ingress.

Batched work, exactly equal to the same queries one by one: queries with the same fetch size share one FAISS
call (a larger k changes an HNSW search, so sizes are never over-fetched to the batch's maximum); the
candidates' rows of all queries are gathered in one fancy index and each query's scores are the same float32
product `exact_cosine` computes alone; the metadata of all candidates that need it is one SQLite read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from search.query.filters import Filters
from search.query.rerank import exact_cosine
from search.query.timing import StageTimer

__all__ = ["ShardFanout", "ShardQuery", "ShardHits", "ShardSource", "ShardUnavailable", "shard_search"]


class ShardSource(Protocol):
    """What `shard_search` reads of one shard: an opened artifact (one shard) or one part of a sharded version."""

    @property
    def ids(self) -> np.ndarray: ...  # int64, ascending: the shard's image ids by row

    def ann_rows(self, queries: np.ndarray, k: int,
                 params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def ids_at(self, rows: np.ndarray) -> np.ndarray: ...

    def vectors_at(self, rows: np.ndarray) -> np.ndarray: ...

    def metadata(self, ids: Sequence[int]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ShardQuery:
    """What one query asks of one shard."""

    fetch: int  # ANN candidates to fetch from this shard
    filters: Filters = Filters()
    exclude_id: int | None = None
    exact: bool = True  # False (fast phase): ANN scores, no rows read
    min_ann_score: float | None = None  # fast phase: the cutoff on the ANN score
    metadata: bool = False  # return the candidates' metadata rows (business signals read them)
    rows: bool = True  # return the candidates' float32 rows (dedup and MMR read them); False: vectors None


@dataclass
class ShardHits:
    """One query's visible, filtered candidates from one shard, in ANN order."""

    ids: np.ndarray  # int64 (m,)
    similarity: np.ndarray  # float32 (m,): exact cosine on the stored float16 rows, or the ANN score (fast)
    vectors: np.ndarray | None  # float32 (m, D) rows for dedup/MMR; None in the fast phase or not asked (`rows`)
    metas: list[dict[str, Any]] | None  # snapshot rows when filters or ranking needed them, else None
    exhausted: bool  # the fetch covered the whole shard: asking for more finds nothing new
    # For the exact cross-shard merge (search.query.merge.trim_to_fetch), None when not sent:
    ann: np.ndarray | None = None  # float32 (m,): each hit's ANN score
    fetched: np.ndarray | None = None  # float32: the ANN scores of every candidate fetched, hidden/filtered too


class ShardUnavailable(RuntimeError):
    """A shard that answered nothing usable (its call failed twice, or no replica of it is running): the whole
    search fails with this (503 naming the shard) rather than answering a page that silently misses its hits."""

    def __init__(self, shard: str, reason: str, retry_after_s: float = 1.0):
        super().__init__(f"shard {shard} is unavailable: {reason}")
        self.shard = shard
        self.retry_after_s = retry_after_s


# One round of a search batch over every shard: (query vectors (nq, D), one ShardQuery per query) -> for each
# shard, one ShardHits per query. In-process it calls `shard_search` per shard; a fleet's ingress calls the shard
# deployments. Every shard gets the same asks: the exact global top fetch is within the shards' top fetch.
ShardFanout = Callable[[np.ndarray, Sequence["ShardQuery"]], Sequence[Sequence["ShardHits"]]]


def shard_search(artifact: ShardSource, vectors: np.ndarray, queries: Sequence[ShardQuery], *,
                 hidden: frozenset[int] = frozenset(), params: Mapping[str, Any] | None = None,
                 timer: StageTimer | None = None) -> list[ShardHits]:
    """`vectors` (nq, D) float32 query vectors, one `ShardQuery` each -> one `ShardHits` each."""
    timer = timer if timer is not None else StageTimer()
    q = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(queries), -1)
    n = len(artifact.ids)
    rows: list[np.ndarray] = [np.empty(0, np.int64)] * len(queries)
    ann: list[np.ndarray] = [np.empty(0, np.float32)] * len(queries)
    with timer.stage("ann"):
        by_fetch: dict[int, list[int]] = {}
        for i, ask in enumerate(queries):
            by_fetch.setdefault(max(1, min(n, ask.fetch)), []).append(i)
        for fetch, members in by_fetch.items():
            scores, found = artifact.ann_rows(q[members], fetch, params)
            for j, i in enumerate(members):
                keep = found[j] >= 0
                rows[i], ann[i] = found[j][keep], scores[j][keep]
        ids = _split(artifact.ids_at(np.concatenate(rows)), rows)
    fetched = list(ann)
    masks = [_visible(ids[i], ask, ann[i], hidden) for i, ask in enumerate(queries)]
    rows, ann, ids = ([a[m] for a, m in zip(arrays, masks, strict=True)] for arrays in (rows, ann, ids))
    metas: list[list[dict[str, Any]] | None] = [None] * len(queries)
    reads = [i for i, ask in enumerate(queries) if ask.filters.active or (ask.metadata and ask.exact)]
    if reads:
        with timer.stage("filter"):
            wanted = np.unique(np.concatenate([ids[i] for i in reads]))
            by_id = dict(zip(wanted.tolist(), artifact.metadata(wanted.tolist()), strict=True))
            for i in reads:
                rows_meta = [by_id[x] for x in ids[i].tolist()]
                if queries[i].filters.active:
                    keep = np.fromiter((queries[i].filters.matches(m) for m in rows_meta), bool, len(rows_meta))
                    rows_meta = [m for m, k in zip(rows_meta, keep.tolist(), strict=True) if k]
                    rows[i], ann[i], ids[i] = rows[i][keep], ann[i][keep], ids[i][keep]
                metas[i] = rows_meta if queries[i].metadata else None
    exact = [i for i, ask in enumerate(queries) if ask.exact]
    block: dict[int, np.ndarray] = {}
    out: list[ShardHits] = []
    with timer.stage("rerank") if exact else nullcontext():  # the fast phase reranks nothing
        if exact:  # one gather of every exact query's candidate rows
            gathered = artifact.vectors_at(np.concatenate([rows[i] for i in exact]))
            block = dict(zip(exact, _split(gathered, [rows[i] for i in exact]), strict=True))
        for i, ask in enumerate(queries):
            rows_i = block.get(i)
            sims = exact_cosine(q[i], rows_i) if rows_i is not None else ann[i]
            out.append(ShardHits(ids[i], np.asarray(sims, np.float32), rows_i if ask.rows else None, metas[i],
                                 ask.fetch >= n,
                                 np.asarray(ann[i], np.float32), np.asarray(fetched[i], np.float32)))
    return out


def _visible(ids: np.ndarray, ask: ShardQuery, ann: np.ndarray, hidden: frozenset[int]) -> np.ndarray:
    """Candidates that may be shown: not taken down, not the query image, above the fast phase's ANN cutoff."""
    keep = np.ones(len(ids), dtype=bool)
    if ask.exclude_id is not None:
        keep &= ids != ask.exclude_id
    if hidden:
        keep &= ~np.isin(ids, np.fromiter(hidden, np.int64, len(hidden)))
    if not ask.exact and ask.min_ann_score is not None:
        keep &= ann >= ask.min_ann_score
    return keep


def _split(values: np.ndarray, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`values` cut into consecutive pieces as long as the arrays of `like`."""
    bounds = np.cumsum([len(a) for a in like])[:-1]
    return list(np.split(values, bounds)) if len(like) else []
