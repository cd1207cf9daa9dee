"""ANN search with per-call FAISS parameters, exact search and exact rerank on float16 vectors.

FAISS labels in an artifact's index are row positions (0..N-1) into the float16 vector file; callers map them
to image ids with the id map. Search parameters (nprobe, efSearch) are built per call as
faiss.SearchParameters objects and passed to `index.search(params=...)`, so concurrent requests with different
settings never race on a shared, mutable index attribute.

`read_index(path)` is the one way a served index file is read: memory-mapped, so the processes of one node
share one page-cache copy of it (as they do of the memory-mapped vectors and ids).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "FAISS_MISSING",
    "FaissMissing",
    "require_faiss",
    "read_index",
    "mmap_flags",
    "search_parameters",
    "ann_search",
    "search_prepared",
    "exact_search",
    "rerank",
    "recall_at_k",
]

FAISS_MISSING = ("FAISS is not installed: install the service with one FAISS build, "
                 "pip install 'photostock-search[serve,cpu]' (faiss-cpu) or '[serve,gpu]' (faiss-gpu-cu12)")


class FaissMissing(RuntimeError):
    """The `faiss` module is absent: the `[cpu]` or `[gpu]` extra was left out of the install."""


def require_faiss() -> None:
    """Raise FaissMissing (one line naming the extras) when no FAISS build is installed; the CLIs call this
    before starting, so a serve-only install without `[cpu]`/`[gpu]` stops with that line, not a traceback."""
    try:
        import faiss  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "faiss":
            raise
        raise FaissMissing(FAISS_MISSING) from None


_EXACT_BLOCK_ROWS = 65536


def mmap_flags() -> int:
    """The FAISS read flags that map an index file instead of copying it into the heap.

    `IO_FLAG_MMAP_IFC` (in FAISS 1.15) maps every code array FAISS stores as a "maybe owned" vector: IVF
    inverted lists (codes and ids), IndexFlat codes (Flat, the IVF coarse quantizer, HNSW's storage) and the
    HNSW graph: for Flat, HNSW, IVF-Flat and (OPQ+)IVF-PQ only small parts (OPQ matrix, PQ codebooks) stay in
    each process's heap (benchmarks/replica_memory.py). `IO_FLAG_MMAP` maps the IVF lists only; builds
    without IO_FLAG_MMAP_IFC get that. `IO_FLAG_READ_ONLY`: a served index is never written (a published
    version is immutable).
    """
    import faiss

    return int(getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)) | int(faiss.IO_FLAG_READ_ONLY)


def read_index(path: str | os.PathLike[str]) -> Any:
    """The FAISS index at `path`, memory-mapped read-only (`mmap_flags`): same search results as a heap read,
    one page-cache copy per node however many processes open it. FAISS raises RuntimeError for a truncated or
    garbage file, as the heap read does. The file must stay in place while the index is used (a published
    version's files do; unlinking one keeps the mapped inode alive)."""
    import faiss

    return faiss.read_index(os.fspath(path), mmap_flags())


def search_parameters(index: Any, params: Mapping[str, Any] | None) -> Any:
    """A faiss.SearchParameters object for `index` from a plain dict, or None when there is nothing to set.

    Unknown keys raise ValueError: silently ignoring {"nprobe": 64} on an HNSW index would hide a bug.
    Keys that are not FAISS search parameters (e.g. "rerank_candidates") must be removed by the caller.
    """
    import faiss

    params = dict(params or {})
    if not params:
        return None
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        inner = search_parameters(index.index, params)
        if inner is None:
            return None
        wrapper = faiss.SearchParametersPreTransform()
        wrapper.index_params = inner
        wrapper.referenced_objects = [inner]  # type: ignore[attr-defined]  # keep the inner object alive as long as the wrapper
        return wrapper
    if isinstance(index, faiss.IndexIVF):
        return _build(faiss.SearchParametersIVF, params, {"nprobe", "max_codes"}, type(index).__name__)
    if isinstance(index, faiss.IndexHNSW):
        return _build(faiss.SearchParametersHNSW,  # type: ignore[attr-defined]
                       params, {"efSearch"}, type(index).__name__)
    raise ValueError(f"{type(index).__name__} takes no search parameters, got {sorted(params)}")


def _build(cls: Any, params: dict[str, Any], allowed: set[str], name: str) -> Any:
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"{name} does not understand search parameters {sorted(unknown)}")
    obj = cls()
    for key, value in params.items():
        setattr(obj, key, int(value))
    return obj


def _as_queries(queries: np.ndarray) -> np.ndarray:
    q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    if q.ndim != 2:
        raise ValueError(f"queries must be a 2-D array, got shape {np.shape(queries)}")
    return q


def ann_search(index: Any, queries: np.ndarray, k: int,
               params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) from the ANN index with per-call parameters; missing results are label -1."""
    return search_prepared(index, queries, k, search_parameters(index, params))


def search_prepared(index: Any, queries: np.ndarray, k: int, prepared: Any) -> tuple[np.ndarray, np.ndarray]:
    """`ann_search` with the faiss.SearchParameters object (or None) from `search_parameters` built once: a
    served part reuses it for every call (building one costs ~40 us, a sixth of a 200k-vector IVF search)."""
    q = _as_queries(queries)
    if q.shape[1] != index.d:
        raise ValueError(f"query dimension {q.shape[1]} != index dimension {index.d}")
    k = int(k)
    if k <= 0:
        raise ValueError("k must be positive")
    scores, labels = index.search(q, k, params=prepared)
    return np.asarray(scores), np.asarray(labels)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int,
                 block_rows: int = _EXACT_BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over (possibly memory-mapped float16) vectors, block by block.

    Works on the stored float16 rows directly so it is the ground truth the ANN stages are measured against.
    Returns (scores, rows) sorted by descending score, padded with (-inf, -1) when k > N.
    """
    q = _as_queries(queries)
    n = vectors.shape[0]
    k = int(k)
    best_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    best_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for start in range(0, n, block_rows):
        block = np.asarray(vectors[start:start + block_rows], dtype=np.float32)
        scores = q @ block.T
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        cand_s = np.take_along_axis(scores, part, axis=1)
        all_s = np.concatenate([best_s, cand_s], axis=1)
        all_i = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(all_s, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
    return best_s, best_i


def rerank(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact rescoring of candidate rows (label -1 = none) on the float16 vectors; best k per query.

    Candidate rows are gathered in sorted order so a memory-mapped file is read forwards.
    Returns (scores, rows) with (-inf, -1) padding where fewer than k candidates exist.
    """
    q = _as_queries(queries)
    candidates = np.asarray(candidates, dtype=np.int64)
    out_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    out_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for row, (query, cand) in enumerate(zip(q, candidates, strict=True)):
        cand = np.unique(cand[cand >= 0])  # sorted, de-duplicated
        if cand.size == 0:
            continue
        scores = np.asarray(vectors[cand], dtype=np.float32) @ query
        order = np.argsort(-scores, kind="stable")[:k]
        out_s[row, :order.size] = scores[order]
        out_i[row, :order.size] = cand[order]
    return out_s, out_i


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true top-k found in its returned top-k (labels; -1 never matches)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    if found.shape[0] != truth.shape[0]:
        raise ValueError("found and truth must have one row per query")
    if found.shape[0] == 0:
        return float("nan")
    hits = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))
