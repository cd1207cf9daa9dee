"""The query path without HTTP: text -> (cache | micro-batched encode) -> (page cache | search lane -> one
`search_batch` for the batch: ANN over-fetch -> filters -> exact rerank -> ranking -> metadata).

Each stage is timed. The batch runs on the search lane's thread (FAISS releases the GIL) under each request's
lease on the artifact, so a reload in the middle of a request never changes the version that request reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from search.artifact.reload import ArtifactHolder
from search.artifact.takedown import TakedownList
from search.artifact.version import Artifact
from search.metrics import ServiceMetrics
from search.query.admission import Admission
from search.query.batch import Page, RankPolicy, search_batch
from search.query.lane import SearchLane
from search.query.result_cache import ResultCache, page_key
from search.query.shard import ShardFanout
from search.query.spec import SearchSpec
from search.query.text_cache import QueryEmbeddingCache, normalize_query
from search.query.timing import StageTimer
from search.runtime.threads import use_faiss_threads
from search.settings import RankSettings

__all__ = ["FanoutFor", "SearchSpec", "SearchOutcome", "QueryEmbedder", "Searcher", "TextBatcher"]

# The shards of one batch's version, searched elsewhere (a fleet's shard deployments): (the leased artifact,
# the takedowns to apply) -> the fan-out `search_batch` calls. None: the artifact's own shard, in this process.
FanoutFor = Callable[[Artifact, frozenset[int]], ShardFanout]


class TextBatcher(Protocol):
    """What the query embedder needs of its encoder: the micro-batcher here, or a remote query encoder."""

    @property
    def ready(self) -> bool: ...

    async def encode(self, text: str, language: str | None = None) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass
class SearchOutcome:
    hits: list[dict[str, Any]]
    total: int
    version: str
    timer: StageTimer = field(default_factory=StageTimer)
    cache_hit: bool | None = None


class QueryEmbedder:
    """Normalised text -> vector, through the cache (single-flight) and the micro-batcher."""

    def __init__(self, encoder_key: str, cache: QueryEmbeddingCache, batcher: TextBatcher,
                 metrics: ServiceMetrics, normalize: Callable[[str], str] = normalize_query):
        self.encoder_key = encoder_key
        self.normalize = normalize  # the key text, which is also what the encoder reads: it must encode alike
        self.cache = cache
        self.batcher = batcher
        self.metrics = metrics
        self.admission: Admission | None = None  # load shedding on misses only (set by the app)

    def key(self, text: str, language: str | None = None) -> tuple[str, str]:
        """The cache key: the encoder, the source language when the query names one other than the model's
        default (the same words in two languages are two vectors), and the normalised text."""
        owner = self.encoder_key if language is None else f"{self.encoder_key}|lang={language}"
        return (owner, self.normalize(text))

    def cached(self, text: str, language: str | None = None) -> bool:
        """The query's vector is in the cache (a lookup only: no stats, no compute)."""
        return self.cache.get(self.key(text, language)) is not None

    async def embed(self, text: str, timer: StageTimer, language: str | None = None) -> tuple[np.ndarray, bool]:
        with timer.stage("normalize"):
            key = self.key(text, language)
        encode_seconds = 0.0

        async def compute() -> np.ndarray:
            nonlocal encode_seconds
            ticket = self.admission.admit() if self.admission is not None else None  # Overloaded: 503
            start = asyncio.get_running_loop().time()
            try:
                return await self.batcher.encode(key[1], language)
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
        fresh = [t for t in dict.fromkeys(self.normalize(t) for t in texts if t.strip())
                 if self.cache.get((self.encoder_key, t)) is None]
        vectors = await asyncio.gather(*(self.batcher.encode(t) for t in fresh))
        for text, vector in zip(fresh, vectors, strict=True):
            self.cache.put((self.encoder_key, text), vector)
        return len(fresh)


@dataclass
class _Search:
    """One search waiting for the lane: everything its batch needs, read on the event loop."""

    artifact: Artifact
    hidden: frozenset[int]
    vector: np.ndarray
    spec: SearchSpec
    timer: StageTimer
    queued: float


class Searcher:
    """Vector -> ranked, filtered, paginated hits from the current artifact. Page-cache misses go through one
    search lane (search/query/lane.py): concurrent searches run as one `search_batch`."""

    def __init__(self, holder: ArtifactHolder, rank: RankSettings, takedowns: TakedownList | None = None,
                 pages: ResultCache | None = None, on_page_lookup: Callable[[bool], None] | None = None,
                 max_batch: int = 64, on_batch: Callable[[int], None] | None = None,
                 fanout_for: FanoutFor | None = None):
        self.holder = holder
        self.fanout_for = fanout_for  # None: search the artifact in this process
        self.rank = rank
        self.policy = RankPolicy.from_settings(rank)
        self.takedowns = takedowns
        self.pages = pages  # exact result-page cache (None: every search runs ANN + rerank)
        self.on_page_lookup = on_page_lookup or (lambda hit: None)
        self.lane: SearchLane[_Search, Page] = SearchLane(self._run, max_batch=max_batch, on_batch=on_batch,
                                                          initializer=use_faiss_threads)

    async def search(self, vector: np.ndarray, spec: SearchSpec, timer: StageTimer) -> SearchOutcome:
        with self.holder.lease() as artifact:
            key = None
            hidden = self.hidden(artifact)
            if self.pages is not None:
                with timer.stage("page_cache"):
                    key = page_key(artifact.version, hidden, spec, vector)
                    cached = self.pages.get(key)
                self.on_page_lookup(cached is not None)
                if cached is not None:
                    return SearchOutcome(hits=cached[0], total=cached[1], version=artifact.version, timer=timer)
            page = await self.lane.submit(_Search(artifact, hidden, vector, spec, timer, time.perf_counter()))
            if key is not None and self.pages is not None:
                self.pages.put(key, page.hits, page.total)
            return SearchOutcome(hits=page.hits, total=page.total, version=artifact.version, timer=timer)

    def search_now(self, artifact: Artifact, vectors: np.ndarray, specs: list[SearchSpec],
                   timer: StageTimer | None = None) -> list[Page]:
        """The batch on the calling thread (no lane, no page cache): what the lane runs for each artifact."""
        hidden = self.hidden(artifact)
        return search_batch(artifact, vectors, specs, self.policy, hidden=hidden, timer=timer,
                            fanout=self._fanout(artifact, hidden))

    def _fanout(self, artifact: Artifact, hidden: frozenset[int]) -> ShardFanout | None:
        return self.fanout_for(artifact, hidden) if self.fanout_for is not None else None

    def _run(self, batch: list[_Search]) -> list[Page | BaseException]:
        """On the lane's thread: one `search_batch` per (artifact, takedown set) in the batch (one, except
        across a reload or a takedown), each request's timer given its batch's stage times."""
        start = time.perf_counter()
        groups: dict[tuple[int, int], list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault((id(item.artifact), id(item.hidden)), []).append(i)
        out: list[Page | BaseException] = [RuntimeError("not searched")] * len(batch)
        for members in groups.values():
            first = batch[members[0]]
            timer = StageTimer()
            try:
                pages = search_batch(first.artifact, np.stack([batch[i].vector for i in members]),
                                     [batch[i].spec for i in members], self.policy, hidden=first.hidden,
                                     timer=timer, fanout=self._fanout(first.artifact, first.hidden))
            except Exception as exc:  # noqa: BLE001 - answered to this group's requests, the lane goes on
                pages = [exc] * len(members)  # type: ignore[list-item]
            for i, page in zip(members, pages, strict=True):
                out[i] = page
                batch[i].timer.add("search_wait", start - batch[i].queued)
                for stage, seconds in timer.seconds.items():
                    if stage != "rerank" or batch[i].spec.phase != "fast":  # the fast phase reranks nothing
                        batch[i].timer.add(stage, seconds)
        return out

    def hidden(self, artifact: Artifact) -> frozenset[int]:
        """Taken-down ids (search/artifact/takedown.py): never returned, whatever the index holds."""
        return self.takedowns.hidden(artifact.path) if self.takedowns is not None else frozenset()

    def close(self) -> None:
        self.lane.close()
