"""What the fleet's deployments run, without Ray: a shard's search over its part of a version and the query
encoder (session pool, micro-batcher and cache). search/fleet/app.py wraps these in Serve deployments.

The one place that knows how a version splits into parts is `part_count` / `open_part`: the manifest's shard
count and `open_shard` (one part's index, vectors and ids plus the shared metadata; an unsharded version is one
part, the whole version).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.artifact.bundle import verify_encoder_files
from search.artifact.checksums import CheckLevel
from search.artifact.manifest import ArtifactError, read_manifest
from search.artifact.version import ShardPart, current_path, open_shard
from search.fleet.switch import PartReady
from search.metrics import ServiceMetrics
from search.query.batch import RankPolicy
from search.query.pipeline import QueryEmbedder
from search.query.shard import ShardHits, ShardQuery, shard_search
from search.query.text_cache import QueryEmbeddingCache
from search.query.timing import StageTimer
from search.runtime.pool import SessionPool
from search.runtime.threads import use_faiss_threads
from search.runtime.towers import RuntimeEncoder
from search.serving import build_fast_embedder, build_image_pool, build_text_batcher, configure_threads
from search.settings import Settings
from search.state import ServiceEncoder, pin_mismatch, query_normalizer, runtime_options

__all__ = ["QueryEncoderParts", "ShardServer", "build_query_encoder", "open_part", "part_count"]

KEEP_VERSIONS = 2  # parts kept open per shard: the version serving and the one coming


def part_count(version_dir: Path) -> int:
    """How many parts (shards) the version has; a version that does not read is refused here, at deploy."""
    return read_manifest(version_dir).shard_count


def open_part(version_dir: Path, index: int, checks: CheckLevel = "size") -> ShardPart:
    """Part `index` of the version (the shard deployment's only way to open its data)."""
    return open_shard(version_dir, index, checks=checks)


class ShardServer:
    """One shard replica: its part of each version it is asked about (opened once, the newest KEEP_VERSIONS
    kept), searched by `shard_search`. The ingress names the version of each call, so every shard of one batch
    searches the version the ingress leased."""

    def __init__(self, settings: Settings, index: int):
        if settings.store is None:
            raise ValueError("settings.store is required")
        configure_threads(settings)  # FAISS's threads as the service YAML sets them, per replica
        self.index = index
        self.params = RankPolicy.from_settings(settings.rank).ann_params
        self._parts: OrderedDict[str, ShardPart] = OrderedDict()
        self._lock = threading.Lock()
        self.part(str(current_path(settings.store)))  # a part that does not open fails the replica's start

    def part(self, version_dir: str, checks: CheckLevel = "size") -> ShardPart:
        """The part of `version_dir`, opened on first use beside the ones open (outside the lock: the searches
        of the version serving go on while the next one opens)."""
        with self._lock:
            part = self._parts.get(version_dir)
            if part is not None:
                self._parts.move_to_end(version_dir)
                return part
        opened = open_part(Path(version_dir), self.index, checks)
        with self._lock:
            part = self._parts.get(version_dir)
            if part is None:
                part = self._parts[version_dir] = opened
                while len(self._parts) > KEEP_VERSIONS:
                    _, old = self._parts.popitem(last=False)
                    old.close()
            else:
                opened.close()  # another call opened it meanwhile
            self._parts.move_to_end(version_dir)
            return part

    def prepare(self, version_dir: str) -> PartReady:
        """Load this shard's part of the next version beside the one serving, checked in full (sha256: the
        vectors this shard serves, read off the query path) before it reports ready; the reason if not."""
        try:
            with self._lock:
                known = version_dir in self._parts
            part = self.part(version_dir) if known else self.part(version_dir, "full")
        except (ArtifactError, OSError) as exc:
            return PartReady(Path(version_dir).name, f"part {self.index}: {exc}")
        return PartReady(part.version, None)

    def search(self, version_dir: str, vectors: np.ndarray, asks: Sequence[ShardQuery],
               hidden: frozenset[int]) -> list[ShardHits]:
        use_faiss_threads()  # the replica's executor threads vary; OpenMP keeps FAISS's team per thread (~1 µs)
        return shard_search(self.part(version_dir), vectors, asks, hidden=hidden, params=self.params)

    def close(self) -> None:
        with self._lock:
            for part in self._parts.values():
                part.close()
            self._parts.clear()


@dataclass
class QueryEncoderParts:
    """The query encoder of one replica: the service's own embedders (cache, micro-batcher, session pool)."""

    full: QueryEmbedder
    fast: QueryEmbedder
    image_pool: SessionPool

    async def text(self, text: str, phase: str, language: str | None = None) -> np.ndarray:
        embedder = self.fast if phase == "fast" else self.full
        vector, _ = await embedder.embed(text, StageTimer(), language)
        return vector

    async def pixels(self, pixels: np.ndarray) -> np.ndarray:
        return await self.image_pool.submit(pixels, 1)

    def close(self) -> None:
        self.image_pool.close()
        self.full.batcher.close()
        if self.fast.batcher is not self.full.batcher:
            self.fast.batcher.close()


def build_query_encoder(settings: Settings) -> QueryEncoderParts:
    """The encoder of the store's current version, as the single-process service builds it (same pins,
    runtime options, pool members, caches); call from the replica's event loop."""
    if settings.store is None:
        raise ValueError("settings.store is required")
    configure_threads(settings)
    options = runtime_options(settings)
    version_dir = current_path(settings.store)
    manifest = read_manifest(version_dir)
    bundle = verify_encoder_files(version_dir, manifest, "size")
    if bundle is None:
        raise ArtifactError(f"version {manifest.version} carries no encoder files")
    reason = pin_mismatch(settings.encoder, bundle.identity, f"version {manifest.version}")
    if reason is not None:
        raise ArtifactError(reason)
    metrics = ServiceMetrics()
    encoder = ServiceEncoder(settings.encoder, options, RuntimeEncoder.load(bundle, options))
    cache = QueryEmbeddingCache(settings.cache.maxsize, settings.cache.ttl_s)
    full = QueryEmbedder(bundle.identity.key, cache, build_text_batcher(encoder, settings, metrics), metrics,
                         query_normalizer(encoder.loaded))  # the ingress's rule: a cased tokenizer reads the text
    return QueryEncoderParts(full, build_fast_embedder(encoder, settings, metrics, full),
                             build_image_pool(encoder, settings, metrics))
