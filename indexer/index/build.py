"""Build the FAISS index for a version: choose, train (GPU when present), add, tune and measure recall.

Labels in the index are row positions into the version's float16 vector file. Tuning walks the chosen index's
search-parameter grid (nprobe / efSearch) and the rerank depth, measuring on a query sample:
recall@10 of the ANN stage alone ("raw") and after exact float16 rerank of the over-fetched candidates, both
against exact search on the same float16 vectors, and single-thread p50/p99 latency of ANN + rerank. It keeps
the cheapest setting that meets the target recall within the latency budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.index.index_select import IndexChoice, IndexConfig, choose_index
from search.artifact import ann

__all__ = ["BuiltIndex", "build_index", "forced_choice", "index_bytes", "make_queries", "measure_latency",
           "measure_recall", "train_and_add", "tune_index"]

_ADD_BATCH = 65536
RECALL_K = 10


@dataclass
class BuiltIndex:
    index: Any
    choice: IndexChoice
    params: dict[str, int]
    rerank_candidates: int
    recall_at_10: float
    recall_at_10_raw: float
    recall_queries: int
    latency_ms: dict[str, float]
    bytes_per_vector: float
    tuning: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    target_met: bool = True


def _f32_batches(vectors: np.ndarray, rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
    if rows is not None:
        for start in range(0, len(rows), _ADD_BATCH):
            yield np.ascontiguousarray(vectors[np.sort(rows[start:start + _ADD_BATCH])], dtype=np.float32)
        return
    for start in range(0, vectors.shape[0], _ADD_BATCH):
        yield np.ascontiguousarray(vectors[start:start + _ADD_BATCH], dtype=np.float32)


def index_bytes(index: Any) -> int:
    """Serialized size, a close proxy for the index's RAM (codes, ids, centroids, transforms)."""
    import faiss

    return int(faiss.serialize_index(index).size)


def _gpu_clustering_index(index: Any, config: IndexConfig) -> Any | None:
    """GPU k-means for the IVF coarse quantizer when faiss-gpu and a device exist (checked before any GPU
    call). Returns the GPU index, which the caller must keep referenced until training ends (FAISS holds only
    a raw pointer to it)."""
    import faiss

    if not config.use_gpu or not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() < 1:
        return None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    gpu_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
    ivf.clustering_index = gpu_index
    return gpu_index


def _configure_training(index: Any, config: IndexConfig) -> None:
    """Training knobs the factory string cannot carry.

    Polysemous training (on by default for IVF-PQ from index_factory) is a long simulated annealing that only
    helps Hamming-filtered search, which is not used here; OPQ iterations and sample are capped to keep the
    build inside its budget.
    """
    import faiss

    ivf: Any = faiss.try_extract_index_ivf(index)  # faiss objects are SWIG proxies: typed as Any here
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False
    pre: Any = faiss.downcast_index(index)
    if isinstance(pre, faiss.IndexPreTransform):
        chain: Any = pre.chain
        for i in range(chain.size()):
            vt = faiss.downcast_VectorTransform(chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter = config.opq_iters
                vt.max_train_points = config.opq_train_points


def train_and_add(vectors: np.ndarray, choice: IndexChoice, config: IndexConfig,
                  rng: np.random.Generator) -> tuple[Any, dict[str, float]]:
    """Create the index from its factory string, train it on a sample (if it needs training), add all rows."""
    import faiss

    d = vectors.shape[1]
    index = faiss.index_factory(d, choice.factory, faiss.METRIC_INNER_PRODUCT)
    timings: dict[str, float] = {}
    if not index.is_trained:
        _configure_training(index, config)
        ivf: Any = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.niter = config.kmeans_iters
            ivf.cp.max_points_per_centroid = max(config.ivf_train_points_per_list, 39)
            ivf.cp.seed = config.seed
        gpu = _gpu_clustering_index(index, config)
        n_train = min(vectors.shape[0], choice.train_size or vectors.shape[0])
        sample = rng.choice(vectors.shape[0], size=n_train, replace=False)
        train = np.concatenate(list(_f32_batches(vectors, sample)))
        start = time.perf_counter()
        index.train(train)
        timings["train_s"] = time.perf_counter() - start
        timings["train_points"] = float(n_train)
        timings["train_on_gpu"] = float(gpu is not None)
        if gpu is not None:
            ivf.clustering_index = None  # the trained centroids are on the CPU index; drop the GPU helper
            del gpu
    start = time.perf_counter()
    for batch in _f32_batches(vectors):
        index.add(batch)
    timings["add_s"] = time.perf_counter() - start
    return index, timings


def make_queries(vectors: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Query sample: stored vectors plus Gaussian noise, renormalised, so a query is near but not equal to
    its source row (an exact copy would make recall trivially easier)."""
    count = min(count, vectors.shape[0])
    rows = np.sort(rng.choice(vectors.shape[0], size=count, replace=False))
    q = np.asarray(vectors[rows], dtype=np.float32)
    q = q + rng.standard_normal(q.shape).astype(np.float32) * (noise / np.sqrt(q.shape[1]))
    return np.asarray(q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12))


def measure_latency(index: Any, vectors: np.ndarray, queries: np.ndarray, params: dict[str, int],
             fetch: int) -> dict[str, float]:
    """Single-thread per-query latency of ANN alone and ANN + exact rerank, in ms (p50/p99)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        raw, full = [], []
        for q in queries:
            q = q[None, :]
            t0 = time.perf_counter()
            _, rows = ann.ann_search(index, q, fetch, params)
            t1 = time.perf_counter()
            ann.rerank(vectors, q, rows, RECALL_K)
            t2 = time.perf_counter()
            raw.append((t1 - t0) * 1e3)
            full.append((t2 - t0) * 1e3)
    finally:
        faiss.omp_set_num_threads(before)
    return {"ann_p50": float(np.percentile(raw, 50)), "ann_p99": float(np.percentile(raw, 99)),
            "p50": float(np.percentile(full, 50)), "p99": float(np.percentile(full, 99))}


def measure_recall(index: Any, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray,
             params: dict[str, int], fetch: int) -> dict[str, float]:
    _, rows = ann.ann_search(index, queries, fetch, params)
    _, reranked = ann.rerank(vectors, queries, rows, RECALL_K)
    return {"recall_at_10_raw": ann.recall_at_k(rows[:, :RECALL_K], truth, RECALL_K),
            "recall_at_10": ann.recall_at_k(reranked, truth, RECALL_K)}


def tune_index(index: Any, vectors: np.ndarray, choice: IndexChoice, config: IndexConfig,
               queries: np.ndarray, truth: np.ndarray) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Cheapest (params, rerank depth) meeting target recall within the latency budget; else best in budget.

    Returns the chosen trial and every trial measured (written to the manifest as `tuning`).
    """
    budget = config.budget
    lat_queries = queries[:config.latency_queries]
    values: tuple[int | None, ...] = choice.search_values or (None,)
    depths = sorted(set(config.rerank_candidates)) if choice.kind != "flat" else [RECALL_K]
    trials: list[dict[str, Any]] = []
    for depth in depths:
        grid = values
        if choice.search_param == "efSearch":  # HNSW raises efSearch to k itself; record what really runs
            grid = tuple(sorted({max(int(v), depth) for v in values if v is not None}))
        for value in grid:
            params: dict[str, int] = {}
            if value is not None and choice.search_param is not None:
                params = {choice.search_param: value}
            trial: dict[str, Any] = {"params": params, "rerank_candidates": depth,
                     **measure_recall(index, vectors, queries, truth, params, depth)}
            trial["latency_ms"] = measure_latency(index, vectors, lat_queries, params, depth)
            trials.append(trial)
            if trial["latency_ms"]["p50"] > budget.latency_ms or trial["recall_at_10"] >= budget.target_recall:
                break  # larger values only cost more time
    meets = [t for t in trials if t["recall_at_10"] >= budget.target_recall
             and t["latency_ms"]["p50"] <= budget.latency_ms]
    if meets:
        best = min(meets, key=lambda t: t["latency_ms"]["p50"])
    else:
        within = [t for t in trials if t["latency_ms"]["p50"] <= budget.latency_ms] or trials
        best = max(within, key=lambda t: (t["recall_at_10"], -t["latency_ms"]["p50"]))
    best = dict(best, target_met=bool(meets))
    return best, trials


def build_index(vectors: np.ndarray, config: IndexConfig) -> BuiltIndex:
    """Choose (or take config.factory), train, add, tune, and measure the index over float16 `vectors`."""
    n, d = vectors.shape
    rng = np.random.default_rng(config.seed)
    choice = choose_index(n, d, config)
    if config.factory:
        choice = forced_choice(config.factory, choice)
    start = time.perf_counter()
    index, timings = train_and_add(vectors, choice, config, rng)
    timings["build_s"] = time.perf_counter() - start

    start = time.perf_counter()
    queries = make_queries(vectors, config.recall_queries, config.query_noise, rng)
    _, truth = ann.exact_search(vectors, queries, RECALL_K)
    best, trials = tune_index(index, vectors, choice, config, queries, truth)
    timings["tune_s"] = time.perf_counter() - start
    return BuiltIndex(
        index=index, choice=choice, params=best["params"], rerank_candidates=best["rerank_candidates"],
        recall_at_10=best["recall_at_10"], recall_at_10_raw=best["recall_at_10_raw"],
        recall_queries=len(queries), latency_ms=best["latency_ms"], bytes_per_vector=index_bytes(index) / n,
        tuning=trials, timings=timings, target_met=best["target_met"],
    )


def forced_choice(factory: str, chosen: IndexChoice) -> IndexChoice:
    """A config-forced factory keeps the selector's figures for reference but says it was forced."""
    upper = factory.upper()
    values: tuple[int, ...]
    if "IVF" in upper:
        kind, param, values = "ivfpq", "nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256)
    elif "HNSW" in upper:
        kind, param, values = "hnsw", "efSearch", (16, 32, 64, 128, 256, 512)
    else:
        kind, param, values = "flat", None, ()
    return IndexChoice(factory, kind, f"forced by config (selector chose {chosen.factory}: {chosen.reason})",
                       param, values, chosen.train_size or 0, {}, chosen.inputs, chosen.rejected)
