"""The query path without HTTP: text -> (cache | micro-batched encode) -> (page cache | ANN over-fetch -> filters
-> rerank).

Each stage is timed. ANN search and rerank run in a worker thread (FAISS releases the GIL) under a lease on
the artifact, so a reload in the middle of a request never changes the version that request reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search.artifact.reload import ArtifactHolder
from search.artifact.takedown import TakedownList
from search.artifact.version import Artifact
from search.metrics import ServiceMetrics
from search.query.admission import Admission
from search.query.filters import Filters
from search.query.rerank import Ranked, RerankWeights, rerank
from search.query.result_cache import ResultCache, page_key
from search.query.text_cache import QueryEmbeddingCache, normalize_query
from search.query.timing import StageTimer
from search.runtime.batcher import MicroBatcher
from search.settings import RankSettings

__all__ = ["SearchSpec", "SearchOutcome", "QueryEmbedder", "Searcher"]


@dataclass(frozen=True)
class SearchSpec:
    """What to return for one query vector."""

    k: int
    offset: int = 0
    filters: Filters = Filters()
    min_score: float | None = None
    dedup: bool = False
    diversity: float = 0.0
    exclude_id: int | None = None  # similar-image search leaves out the image itself
    phase: str = "full"  # "fast": ANN order and scores only (no exact rerank, signals, dedup or MMR)


@dataclass
class SearchOutcome:
    hits: list[dict[str, Any]]
    total: int
    version: str
    timer: StageTimer = field(default_factory=StageTimer)
    cache_hit: bool | None = None


class QueryEmbedder:
    """Normalised text -> vector, through the cache (single-flight) and the micro-batcher."""

    def __init__(self, encoder_key: str, cache: QueryEmbeddingCache, batcher: MicroBatcher,
                 metrics: ServiceMetrics):
        self.encoder_key = encoder_key
        self.cache = cache
        self.batcher = batcher
        self.metrics = metrics
        self.admission: Admission | None = None  # load shedding on misses only (set by the app)

    def key(self, text: str) -> tuple[str, str]:
        return (self.encoder_key, normalize_query(text))

    def cached(self, text: str) -> bool:
        """The query's vector is in the cache (a lookup only: no stats, no compute)."""
        return self.cache.get(self.key(text)) is not None

    async def embed(self, text: str, timer: StageTimer) -> tuple[np.ndarray, bool]:
        with timer.stage("normalize"):
            key = self.key(text)
        encode_seconds = 0.0

        async def compute() -> np.ndarray:
            nonlocal encode_seconds
            ticket = self.admission.admit() if self.admission is not None else None  # Overloaded: 503
            start = asyncio.get_running_loop().time()
            try:
                return await self.batcher.encode(key[1])
            finally:
                encode_seconds = asyncio.get_running_loop().time() - start
                if ticket is not None:
                    ticket.release()

        with timer.stage("embed"):
            vector, hit = await self.cache.get_or_compute(key, compute)
        self.metrics.cache.labels(result="hit" if hit else "miss").inc()
        if encode_seconds:
            timer.add("encode", encode_seconds)
        return vector, hit

    async def warm(self, texts: list[str]) -> int:
        """Encode frequent queries into the cache at start; returns how many were added."""
        fresh = [t for t in dict.fromkeys(normalize_query(t) for t in texts if t.strip())
                 if self.cache.get((self.encoder_key, t)) is None]
        vectors = await asyncio.gather(*(self.batcher.encode(t) for t in fresh))
        for text, vector in zip(fresh, vectors, strict=True):
            self.cache.put((self.encoder_key, text), vector)
        return len(fresh)


class Searcher:
    """Vector -> ranked, filtered, paginated hits from the current artifact."""

    def __init__(self, holder: ArtifactHolder, rank: RankSettings, takedowns: TakedownList | None = None,
                 pages: ResultCache | None = None, on_page_lookup: Callable[[bool], None] | None = None):
        self.holder = holder
        self.rank = rank
        self.takedowns = takedowns
        self.weights = RerankWeights(rank.popularity_weight, rank.freshness_weight, rank.freshness_half_life_days)
        self.pages = pages  # exact result-page cache (None: every search runs ANN + rerank)
        self.on_page_lookup = on_page_lookup or (lambda hit: None)

    async def search(self, vector: np.ndarray, spec: SearchSpec, timer: StageTimer) -> SearchOutcome:
        with self.holder.lease() as artifact:
            key = None
            if self.pages is not None:
                with timer.stage("page_cache"):
                    key = page_key(artifact.version, self.hidden(artifact), spec, vector)
                    cached = self.pages.get(key)
                self.on_page_lookup(cached is not None)
                if cached is not None:
                    return SearchOutcome(hits=cached[0], total=cached[1], version=artifact.version, timer=timer)
            hits, total = await asyncio.to_thread(self._page, artifact, vector, spec, timer)  # one thread hop
            if key is not None and self.pages is not None:
                self.pages.put(key, hits, total)
            return SearchOutcome(hits=hits, total=total, version=artifact.version, timer=timer)

    def _page(self, artifact: Artifact, vector: np.ndarray, spec: SearchSpec,
              timer: StageTimer) -> tuple[list[dict[str, Any]], int]:
        ranked = self._rank(artifact, vector, spec, timer)
        with timer.stage("metadata"):
            hits = self._hits(artifact, ranked[spec.offset: spec.offset + spec.k])
        return hits, len(ranked)

    def _needs_metadata(self, spec: SearchSpec) -> bool:
        return spec.filters.active or self.weights.popularity != 0.0 or self.weights.freshness != 0.0

    def _rank(self, artifact: Artifact, vector: np.ndarray, spec: SearchSpec, timer: StageTimer) -> list[Ranked]:
        """Over-fetch ANN candidates, growing the fetch until filters/dedup leave offset+k hits (or all fetched)."""
        if spec.phase == "fast":
            return self._rank_fast(artifact, vector, spec, timer)
        need = spec.offset + spec.k
        n = len(artifact.ids)
        fetch = min(n, max(artifact.rerank_candidates, need * self.rank.overfetch))
        params = dict(self.rank.ann_params) or None
        while True:
            with timer.stage("ann"):
                _, rows = artifact.ann_rows(vector[None, :], max(fetch, 1), params)
            rows = rows[0][rows[0] >= 0]
            ids = artifact.ids_at(rows)
            keep = self._visible(artifact, ids, spec.exclude_id)
            if keep is not None:
                ids, rows = ids[keep], rows[keep]
            metas: list[dict[str, Any]] = [{}] * len(ids)
            if self._needs_metadata(spec):
                with timer.stage("filter"):
                    metas = artifact.metadata(ids.tolist())
                    matched = [i for i, m in enumerate(metas) if spec.filters.matches(m)]
                    ids, rows, metas = ids[matched], rows[matched], [metas[i] for i in matched]
            with timer.stage("rerank"):
                ranked = rerank(vector, ids, artifact.vectors_at(rows), metas, self.weights,
                                limit=need if spec.diversity > 0 else len(ids),
                                dedup_threshold=self.rank.dedup_threshold if spec.dedup else None,
                                diversity=spec.diversity, min_score=spec.min_score)
            if len(ranked) >= need or fetch >= n:
                return ranked
            fetch = min(n, fetch * 4)

    def _visible(self, artifact: Artifact, ids: np.ndarray, exclude_id: int | None) -> np.ndarray | None:
        """Mask of candidates that may be shown (not the query image, not taken down); None: all of them."""
        hidden = self.hidden(artifact)
        if exclude_id is None and not hidden:
            return None
        keep = ids != exclude_id if exclude_id is not None else np.ones(len(ids), dtype=bool)
        if hidden:
            keep &= ~np.isin(ids, np.fromiter(hidden, np.int64, len(hidden)))
        return keep

    def hidden(self, artifact: Artifact) -> frozenset[int]:
        """Taken-down ids (search/artifact/takedown.py): never returned, whatever the index holds."""
        return self.takedowns.hidden(artifact.path) if self.takedowns is not None else frozenset()

    def _rank_fast(self, artifact: Artifact, vector: np.ndarray, spec: SearchSpec,
                   timer: StageTimer) -> list[Ranked]:
        """The fast phase: ANN order and ANN scores alone (filters still apply: the full answer must not show
        fewer matches than the fast one promised)."""
        need = spec.offset + spec.k
        n = len(artifact.ids)
        fetch = min(n, (need + 1) * (self.rank.overfetch if spec.filters.active else 1))  # +1: exclude_id
        params = dict(self.rank.ann_params) or None
        while True:
            with timer.stage("ann"):
                scores, ids = artifact.ann_search(vector[None, :], max(fetch, 1), params)
            keep = (ids[0] >= 0) & (ids[0] != (spec.exclude_id if spec.exclude_id is not None else -1))
            if spec.min_score is not None:
                keep &= scores[0] >= spec.min_score
            ids, sims = ids[0][keep], scores[0][keep]
            if spec.filters.active:
                with timer.stage("filter"):
                    metas = artifact.metadata(ids.tolist())
                    mask = np.array([spec.filters.matches(m) for m in metas], dtype=bool)
                    ids, sims = (ids[mask], sims[mask]) if len(ids) else (ids, sims)
            if len(ids) >= need or fetch >= n:
                return [Ranked(i, s, s) for i, s in zip(ids.tolist(), sims.tolist(), strict=True)]
            fetch = min(n, fetch * 4)

    @staticmethod
    def _hits(artifact: Artifact, page: list[Ranked]) -> list[dict[str, Any]]:
        metas = artifact.metadata([r.id for r in page])
        return [_hit(r, m) for r, m in zip(page, metas, strict=True)]


def _hit(ranked: Ranked, meta: dict[str, Any]) -> dict[str, Any]:
    import json

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


FILE_FIELDS = ("taken_at", "creator", "camera_make", "camera_model")  # from EXIF/IPTC/XMP or the sidecar
