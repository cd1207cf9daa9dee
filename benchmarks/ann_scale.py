"""ANN at scale on clustered synthetic unit vectors: every index family the selector can choose, against exact.

Prints one JSON document: for each factory, build time, index bytes per vector (serialized size, a proxy for
RAM; float16 rerank vectors are memory-mapped and not counted), single-thread query latency p50/p99 of the ANN
stage and of ANN + exact float16 rerank of the top-R candidates, raw recall@10 and recall@10 after rerank,
both against exact search. Exact flat search is the same-run baseline.

    python benchmarks/ann_scale.py              # 1M x 512 (many minutes on 2 cores)
    python benchmarks/ann_scale.py --n 100000   # quick check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from indexer.index.build import forced_choice, index_bytes, make_queries, measure_latency, measure_recall, train_and_add
from indexer.index.index_select import IndexConfig, choose_index, ivf_nlist
from search.artifact import ann


def clustered_unit_vectors(n: int, d: int, clusters: int, seed: int, anisotropy: float = 0.0) -> np.ndarray:
    """float16 N x D: Gaussian blobs around random centres with per-cluster spread, L2-normalised.

    `anisotropy` > 0 gives centres and spreads a power-law spectrum (variance of the i-th principal direction
    proportional to i**-anisotropy, total variance unchanged) in a random basis: CLIP embeddings concentrate
    their variance in few directions, which is what PQ exploits; 0 is isotropic, PQ's worst case.
    """
    rng = np.random.default_rng(seed)
    scale, basis = np.ones(d, np.float32), None
    if anisotropy > 0:
        scale = np.arange(1, d + 1, dtype=np.float64) ** (-anisotropy / 2)
        scale = (scale * np.sqrt(d / np.sum(scale ** 2))).astype(np.float32)
        basis = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)

    def shaped(x: np.ndarray) -> np.ndarray:
        return x if basis is None else (x * scale) @ basis

    centres = shaped(rng.standard_normal((clusters, d)).astype(np.float32))
    spread = rng.uniform(0.5, 1.5, clusters).astype(np.float32)
    out = np.empty((n, d), dtype=np.float16)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        c = rng.integers(0, clusters, m)
        x = centres[c] + spread[c, None] * shaped(rng.standard_normal((m, d)).astype(np.float32))
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def candidate_factories(n: int, d: int, config: IndexConfig) -> list[str]:
    """The selector's own choice plus the other families it can land on at this size."""
    nlist = ivf_nlist(n)
    chosen = choose_index(n, d, config).factory
    m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if m <= max(1, d // 4) and d % m == 0)
    dd = min(d, 4 * m)
    opq = f"OPQ{m}_{dd}" if dd != d else f"OPQ{m}"
    families = [f"HNSW{config.hnsw_m}", f"IVF{nlist},PQ{m}", f"{opq},IVF{nlist},PQ{m}"]
    return [chosen] + [f for f in families if f != chosen and f != "Flat"]


def bench_one(factory: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, config: IndexConfig,
              param: dict[str, int], rerank: int, latency_queries: int) -> dict[str, Any]:
    n, d = vectors.shape
    choice = forced_choice(factory, choose_index(n, d, config))
    start = time.perf_counter()
    index, timings = train_and_add(vectors, choice, config, np.random.default_rng(config.seed))
    build_s = time.perf_counter() - start
    if choice.search_param == "nprobe":
        params = {"nprobe": param["nprobe"]}
    elif choice.search_param == "efSearch":
        params = {"efSearch": param["efSearch"]}
    else:
        params = {}
    recall = measure_recall(index, vectors, queries, truth, params, rerank)
    latency = measure_latency(index, vectors, queries[:latency_queries], params, rerank)
    return {"factory": factory, "params": params, "rerank_candidates": rerank, "build_s": round(build_s, 2),
            "train_s": round(timings.get("train_s", 0.0), 2), "add_s": round(timings["add_s"], 2),
            "bytes_per_vector": round(index_bytes(index) / n, 2), **{k: round(v, 4) for k, v in recall.items()},
            "latency_ms": {k: round(v, 4) for k, v in latency.items()}}


def exact_baseline(vectors: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """Single-thread exact search with a flat float32 index (the issue's 191 ms/query at 1M x 512)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    for start in range(0, len(vectors), 65536):
        index.add(np.asarray(vectors[start:start + 65536], dtype=np.float32))
    latency = measure_latency(index, vectors, queries, {}, 10)
    return {"factory": "Flat", "bytes_per_vector": 4 * vectors.shape[1],
            "recall_at_10_raw": 1.0, "recall_at_10": 1.0, "latency_ms": {k: round(v, 4) for k, v in latency.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--anisotropy", type=float, default=0.0,
                   help="power-law exponent of the data's variance spectrum (0: isotropic, PQ's worst case)")
    p.add_argument("--queries", type=int, default=500, help="recall queries")
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--baseline-queries", type=int, default=20, help="exact search is slow: fewer queries")
    p.add_argument("--rerank", type=int, default=100, help="candidates over-fetched for exact rerank")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--factory", action="append", help="benchmark only these factories (repeatable)")
    p.add_argument("--config", default=None, help="configs/index.yaml (default: built-in defaults)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    config = IndexConfig.load(args.config) if args.config else IndexConfig()
    t0 = time.perf_counter()
    vectors = clustered_unit_vectors(args.n, args.d, args.clusters, args.seed, args.anisotropy)
    rng = np.random.default_rng(args.seed + 1)
    queries = make_queries(vectors, args.queries, config.query_noise, rng)
    _, truth = ann.exact_search(vectors, queries, 10)
    setup_s = time.perf_counter() - t0
    factories = args.factory or candidate_factories(args.n, args.d, config)
    results = []
    for factory in factories:
        print(f"building {factory} ...", file=sys.stderr, flush=True)
        results.append(bench_one(factory, vectors, queries, truth, config, {"nprobe": args.nprobe,
                                                                            "efSearch": args.ef},
                                 args.rerank, args.latency_queries))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # partial results survive a timeout
    report = {
        "n": args.n, "d": args.d, "clusters": args.clusters, "anisotropy": args.anisotropy, "queries": len(queries),
        "setup_s": round(setup_s, 2),
        "selector": choose_index(args.n, args.d, config).to_dict() | {"inputs": None, "rejected": None},
        "baseline": exact_baseline(vectors, queries[:args.baseline_queries]),
        "indexes": results,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
