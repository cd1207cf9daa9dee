"""One batch of query vectors through ANN, exact rerank, ranking and the metadata read: `search_batch`.

The batch stays together: one `shard_search` per round (one FAISS call per fetch size, one gather of the
candidates' rows, one metadata read), the merge per query, and one SQLite read for the hits of every page.
A query whose filters, cutoff or dedup leave fewer than offset + k results is searched again with 4x the
fetch (only those queries, together), until it has them or the shard is exhausted: the same sequence of
fetches a lone query makes, so a batch answers exactly what its queries answer one by one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.artifact.version import Artifact
from search.query.merge import merge_ranked, satisfied, trim_to_fetch
from search.query.rerank import Ranked, RerankWeights
from search.query.shard import ShardFanout, ShardHits, ShardQuery, shard_search
from search.query.spec import SearchSpec
from search.query.timing import StageTimer
from search.settings import RankSettings

__all__ = ["Page", "RankPolicy", "first_fetch", "search_batch", "shard_query"]

FILE_FIELDS = ("taken_at", "creator", "camera_make", "camera_model")  # from EXIF/IPTC/XMP or the sidecar


@dataclass
class Page:
    """One query's answer: the hits of the page asked for and how many ranked results were found."""

    hits: list[dict[str, Any]]
    total: int


@dataclass(frozen=True)
class RankPolicy:
    """The service's ranking settings as the batch uses them (fixed for the life of a service)."""

    weights: RerankWeights
    overfetch: int
    dedup_threshold: float
    ann_params: dict[str, Any] | None  # None: the manifest's tuned parameters

    @classmethod
    def from_settings(cls, rank: RankSettings) -> RankPolicy:
        return cls(RerankWeights(rank.popularity_weight, rank.freshness_weight, rank.freshness_half_life_days),
                   rank.overfetch, rank.dedup_threshold, dict(rank.ann_params) or None)

    @property
    def reads_metadata(self) -> bool:
        return self.weights.popularity != 0.0 or self.weights.freshness != 0.0


def first_fetch(spec: SearchSpec, policy: RankPolicy, rerank_candidates: int, n: int) -> int:
    """The first ANN fetch for a query: the rerank depth or overfetch x the page (fast: the page + 1, the +1 for
    a left-out query image; overfetch x that under filters)."""
    if spec.phase == "fast":
        return min(n, (spec.need + 1) * (policy.overfetch if spec.filters.active else 1))
    return min(n, max(rerank_candidates, spec.need * policy.overfetch))


def shard_query(spec: SearchSpec, fetch: int, policy: RankPolicy) -> ShardQuery:
    """What one query asks of a shard at this fetch size: the candidates' rows only when dedup or MMR will
    compare them (a fleet shard then sends ids and scores, not 100 x D floats)."""
    fast = spec.phase == "fast"
    return ShardQuery(fetch=fetch, filters=spec.filters, exclude_id=spec.exclude_id, exact=not fast,
                      min_ann_score=spec.min_score if fast else None,
                      metadata=policy.reads_metadata and not fast,
                      rows=not fast and (spec.dedup or spec.diversity > 0))


def search_batch(artifact: Artifact, vectors: np.ndarray, specs: Sequence[SearchSpec], policy: RankPolicy, *,
                 hidden: frozenset[int] = frozenset(), timer: StageTimer | None = None,
                 fanout: ShardFanout | None = None) -> list[Page]:
    """`vectors` (nq, D) float32, one spec each -> one page each, equal to searching each query alone.

    `fanout` searches the shards (default: every part of this artifact, in this process, one after another);
    the cut to the global fetch, the merge, the refetch rounds and the page's metadata read stay here, so a
    fleet's ingress runs this same function over remote shards.
    """
    timer = timer if timer is not None else StageTimer()
    q = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(specs), -1)
    n = len(artifact.ids)
    if fanout is None:
        def fanout(qv: np.ndarray, asks: Sequence[ShardQuery]) -> Sequence[Sequence[ShardHits]]:
            return [shard_search(part, qv, asks, hidden=hidden, params=policy.ann_params, timer=timer)
                    for part in artifact.parts]
    fetch = [first_fetch(s, policy, artifact.rerank_candidates, n) for s in specs]
    ranked: list[list[Ranked]] = [[] for _ in specs]
    active = list(range(len(specs)))
    while active:
        asks = [shard_query(specs[i], fetch[i], policy) for i in active]
        per_shard = fanout(q[active], asks)
        again = []
        for j, i in enumerate(active):
            parts = trim_to_fetch([hits[j] for hits in per_shard], fetch[i])
            with timer.stage("rerank") if specs[i].phase != "fast" else nullcontext():  # fast: ANN order as is
                ranked[i] = merge_ranked(parts, specs[i], policy.weights, policy.dedup_threshold)
            if not satisfied(ranked[i], parts, specs[i]):
                fetch[i] = min(n, fetch[i] * 4)
                again.append(i)
        active = again
    pages = [r[s.offset: s.need] for r, s in zip(ranked, specs, strict=True)]
    with timer.stage("metadata"):
        wanted = sorted({r.id for page in pages for r in page})
        by_id = dict(zip(wanted, artifact.metadata(wanted), strict=True))
        return [Page([hit_dict(r, by_id[r.id]) for r in page], len(all_ranked))
                for page, all_ranked in zip(pages, ranked, strict=True)]


def hit_dict(ranked: Ranked, meta: dict[str, Any]) -> dict[str, Any]:
    """A hit as the API returns it: the ranked scores and the photo's snapshot row."""
    tags = meta.get("tags")
    try:
        tags = json.loads(tags) if isinstance(tags, str) else (tags or [])
    except json.JSONDecodeError:
        tags = []
    return {
        "id": ranked.id, "score": ranked.score, "similarity": ranked.similarity,
        "path": meta.get("path"), "url": f"/images/{ranked.id}", "thumbnail_url": f"/images/{ranked.id}?thumb=1",
        "width": meta.get("width"), "height": meta.get("height"), "caption": meta.get("caption"),
        "tags": tags if isinstance(tags, list) else [], "licence": meta.get("licence"),
        "created_at": meta.get("created_at"), "popularity": meta.get("popularity"),
        **{name: meta.get(name) for name in FILE_FIELDS},
    }
