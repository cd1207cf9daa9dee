"""Small synthetic inputs for the index/publish/artifact tests (area: index build and artifact reader)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from indexer.index.index_select import IndexConfig
from indexer.index.publish import PublishedVersion, publish_version
from indexer.models.clip import ClipEncoder
from search.artifact.encoder import EncoderIdentity
from search.artifact.reload import ArtifactHolder
from search.artifact.version import ArtifactError
from search.query.pipeline import Searcher, SearchSpec
from search.query.timing import StageTimer
from search.settings import RankSettings


def clustered(n: int, d: int, clusters: int = 20, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """L2-normalised float32 vectors around `clusters` random centres (like embeddings: clumpy, not uniform)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def identity(dim: int) -> EncoderIdentity:
    return EncoderIdentity(model="synthetic", weights="none", checksum="0" * 8, dim=dim, context_length=16)


def make_metadata(path: Path, ids: np.ndarray) -> Path:
    """A live-style metadata DB in WAL mode (as the indexer keeps it), one `images` row per id."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT UNIQUE, status TEXT, tags TEXT)")
    conn.executemany("INSERT INTO images VALUES (?, ?, 'indexed', '[]')",
                     [(int(i), f"img/{int(i):06d}.jpg") for i in ids])
    conn.commit()
    conn.close()
    return path


def small_config(**overrides) -> IndexConfig:
    base = {"recall_queries": 100, "latency_queries": 20, "rerank_candidates": [20, 50], "keep_versions": 3}
    base.update(overrides)
    return IndexConfig.from_dict(base)


def publish(store: Path, vectors: np.ndarray, ids: np.ndarray | None = None,
            config: IndexConfig | None = None) -> PublishedVersion:
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64) * 3 if ids is None else ids
    db = store.parent / "live.sqlite"
    if not db.exists():
        make_metadata(db, ids)
    return publish_version(store, ids, vectors, db, identity(vectors.shape[1]), store.parent,
                           config or small_config(), {"indexed": len(ids), "failed": 0}, {"encode_s": 0.1})


def search_store(store: Path, encoder: ClipEncoder, text: str, k: int = 10) -> list[dict[str, Any]]:
    """Top-k hits for `text` through the service's own query path without HTTP: the artifact holder (which
    refuses a version built by another encoder), the Searcher (ANN over-fetch, exact rerank, metadata)."""
    holder = ArtifactHolder(store, encoder.identity)
    try:
        outcome = holder.reload()
        if not outcome.loaded:
            raise ArtifactError(outcome.error or f"no version loaded from {store}")
        searcher = Searcher(holder, RankSettings())
        vector = encoder.encode_texts([text])[0]
        return asyncio.run(searcher.search(vector, SearchSpec(k=k), StageTimer())).hits
    finally:
        holder.close()
