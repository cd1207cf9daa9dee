"""The rerank stage's own costs at production scale (stop 10): gathering 200 candidate rows from a memory-mapped
float16 store in ANN order vs in file order (file order lost: the service gathers in ANN order), the id -> row
binary search the service no longer does (it reads the ANN's rows), and building the ranked list from frozen
dataclasses indexed as numpy scalars (before) vs named tuples from `.tolist()` (now).

    .venv/bin/python benchmarks/rerank_path.py [--n 1000000] [--dim 512] [--repeats 300]
Prints one JSON object. The vector file is written once to benchmarks/out/rerank_path/ (n x dim float16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine  # noqa: E402

from search.query.rerank import Ranked  # noqa: E402


@dataclass(frozen=True)
class FrozenRanked:  # what Ranked was before stop 10
    id: int
    score: float
    similarity: float


def vectors_file(n: int, dim: int) -> np.ndarray:
    path = OUT / "rerank_path" / f"vectors-{n}x{dim}.npy"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
        rng = np.random.default_rng(0)
        for start in range(0, n, 100_000):
            block = rng.standard_normal((min(100_000, n - start), dim)).astype(np.float32)
            out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        out.flush()
        del out
    return np.load(path, mmap_mode="r")


def p50_us(run: Callable[[np.ndarray], object], draws: list[np.ndarray]) -> float:
    times = []
    for rows in draws:
        start = time.perf_counter()
        run(rows)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e6, 1)


def gather_sorted(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), vectors.shape[1]), dtype=np.float32)
    out[order] = vectors[rows[order]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    vectors = vectors_file(args.n, args.dim)
    ids = np.arange(args.n, dtype=np.int64) * 3 + 7  # sorted, as a version stores them
    rng = np.random.default_rng(1)
    draws = [rng.choice(args.n, size=args.candidates, replace=False) for _ in range(args.repeats)]
    scores = rng.standard_normal(args.candidates).astype(np.float32)
    result: dict[str, Any] = {"benchmark": "rerank_path", "machine": machine(), "n": args.n, "dim": args.dim,
                              "candidates": args.candidates}
    # alternating, each on its own fresh draw (a row already read is cheaper the second time)
    plain, ordered = [], []
    for a, b in zip(draws[0::2], draws[1::2], strict=False):
        plain.append(p50_us(lambda r: np.asarray(vectors[r], dtype=np.float32), [a]))
        ordered.append(p50_us(lambda r: gather_sorted(vectors, r), [b]))
    result["gather_ann_order_us"] = round(statistics.median(plain), 1)
    result["gather_file_order_us"] = round(statistics.median(ordered), 1)
    result["ids_to_rows_searchsorted_us"] = p50_us(lambda r: np.searchsorted(ids, ids[r]), draws)
    order = np.argsort(-scores)
    cand = ids[draws[0]]
    result["ranked_frozen_dataclass_us"] = p50_us(
        lambda _: [FrozenRanked(int(cand[i]), float(scores[i]), float(scores[i])) for i in order.tolist()], draws)
    result["ranked_named_tuple_us"] = p50_us(
        lambda _: [Ranked(i, s, m) for i, s, m in zip(cand[order].tolist(), scores[order].tolist(),
                                                        scores[order].tolist(), strict=True)], draws)
    result["ratios"] = {
        "gather": round(result["gather_ann_order_us"] / result["gather_file_order_us"], 2),
        "ranked_list": round(result["ranked_frozen_dataclass_us"] / result["ranked_named_tuple_us"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
