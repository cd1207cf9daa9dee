"""Does overflow hold p99 under the latency budget where one member does not? Steady open-loop arrivals (a new
query every 1/rate s, whatever the pool is doing) at a rate above the primary's capacity and below the pool's,
on a CPU-only machine: the primary is the real tiny CLIP text session slowed to a known cost per batch (the
"GPU"), the overflow member the same session slowed 3x (the "CPU"). Each run: p50/p99 from submit to vector,
and where the batches went. Same arrivals for both configurations. Each configuration's capacity is measured
too, not derived from the arguments: a closed burst of --capacity-queries queries submitted at once, answered
queries per second of wall time (the real session's encode cost and the pool's dispatch included).

    .venv/bin/python benchmarks/pool_overflow.py [--seconds 6] [--rate 230] [--budget-ms 50]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from search.runtime.costs import CostModel  # noqa: E402
from search.runtime.pool import Member, PoolMetrics, SessionPool  # noqa: E402

WORDS = "a small large red green blue star circle square on sand grass water background next to the".split()


def slowed(run: Callable[[np.ndarray], np.ndarray], delay_s: float) -> Callable[[np.ndarray], np.ndarray]:
    def slow(tokens: np.ndarray) -> np.ndarray:
        time.sleep(delay_s)  # the device's known cost per batch (the real encode adds ~1 ms)
        return run(tokens)
    return slow


async def drive(pool: SessionPool, text: Any, rate: float, seconds: float) -> list[float]:
    """Open loop: submit on schedule, never waiting for earlier answers; latency per query."""
    rng = np.random.default_rng(3)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []

    async def one(tokens: np.ndarray, length: int) -> None:
        start = time.perf_counter()
        await pool.submit(tokens, length)
        latencies.append(time.perf_counter() - start)

    tasks = []
    begin = loop.time()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, begin + i / rate - loop.time()))
        query = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))
        tokens = text.tokenize([query])
        tasks.append(asyncio.create_task(one(tokens[0], int(text.lengths(tokens)[0]))))
    await asyncio.gather(*tasks)
    return latencies


def measure_capacity(text: Any, members: list[Member], queries: int) -> float:
    """Queries per second a configuration answers when it never idles: `queries` submitted at once."""
    rng = np.random.default_rng(11)
    pool = SessionPool(members, latency_budget_s=0.0, timeout_s=30, metrics=PoolMetrics(), batch_budget_s=10.0)

    async def burst() -> float:
        batch = [text.tokenize([" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))]) for _ in range(queries)]
        start = time.perf_counter()
        await asyncio.gather(*(pool.submit(t[0], int(text.lengths(t)[0])) for t in batch))
        return time.perf_counter() - start

    try:
        return round(queries / asyncio.run(burst()), 1)
    finally:
        pool.close()


def _calibrated(members: list[Member], text: Any) -> list[Member]:
    tokens = text.tokenize(["a large orange square on sand"])
    for m in members:
        m.cost.calibrate(m.run, tokens[:, : int(text.lengths(tokens)[0])])
    return members


def run_config(text: Any, members: list[Member], args: argparse.Namespace) -> dict[str, Any]:
    _calibrated(members, text)
    metrics = PoolMetrics()
    overflow_after = (args.overflow_after_ms if args.overflow_after_ms is not None else args.budget_ms) / 1000
    pool = SessionPool(members, latency_budget_s=overflow_after, timeout_s=30, metrics=metrics,
                       batch_budget_s=10.0)
    try:
        latencies = asyncio.run(drive(pool, text, args.rate, args.seconds))
    finally:
        pool.close()
    ms = np.array(latencies) * 1000
    batches = {m.name: sum(metrics.registry.get_sample_value("photostock_pool_dispatch_total",
                                                             {"member": m.name, "reason": r}) or 0.0
                           for r in ("best", "overflow", "retry")) for m in members}
    def per_batch_ms(series: str, name: str) -> float | None:
        total = metrics.registry.get_sample_value(f"photostock_pool_{series}_sum", {"member": name}) or 0.0
        count = metrics.registry.get_sample_value(f"photostock_pool_{series}_count", {"member": name}) or 0.0
        return round(total / count * 1000, 1) if count else None

    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "mean_ms": round(statistics.mean(ms.tolist()), 1), "queries": len(latencies),
            "share_over_budget": round(float((ms > args.budget_ms).mean()), 4),
            "batches": batches, "holds_budget_at_p99": bool(np.percentile(ms, 99) <= args.budget_ms),
            "mean_queue_wait_ms": {m.name: per_batch_ms("queue_wait_seconds", m.name) for m in members},
            "mean_encode_ms": {m.name: per_batch_ms("encode_seconds", m.name) for m in members}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=230.0, help="queries per second, open loop")
    parser.add_argument("--budget-ms", type=float, default=50.0, help="the latency SLO the p99 is held against")
    parser.add_argument("--overflow-after-ms", type=float, default=None,
                        help="the pool's latency_budget (when the head's predicted finish passes it, overflow); "
                             "default: the SLO")
    parser.add_argument("--primary-ms", type=float, default=10.0, help="primary's added cost per batch")
    parser.add_argument("--slowdown", type=float, default=3.0, help="overflow member's cost / primary's")
    parser.add_argument("--max-batch", type=int, default=2)
    parser.add_argument("--capacity-queries", type=int, default=400, help="burst size for the capacity measurement")
    args = parser.parse_args()

    import torch

    from indexer.models.clip import load_encoder
    from indexer.models.towers import TorchTextEncoder

    torch.manual_seed(5)
    torch.set_num_threads(1)
    text = TorchTextEncoder(load_encoder("tiny", pretrained="random", device="cpu"))
    primary_s = args.primary_ms / 1000

    def member(name: str, delay_s: float) -> Member:
        return Member(name, "cpu", slowed(text.encode_token_ids, delay_s), CostModel(), max_batch=args.max_batch)

    result: dict[str, Any] = {
        "benchmark": "pool_overflow", "machine": machine(), "rate_qps": args.rate, "budget_ms": args.budget_ms,
        "overflow_after_ms": args.overflow_after_ms if args.overflow_after_ms is not None else args.budget_ms,
        "single": run_config(text, [member("primary", primary_s)], args),
        "pool": run_config(text, [member("primary", primary_s), member("overflow", primary_s * args.slowdown)],
                           args),
    }
    # measured (closed burst, after the open-loop runs so the calibration above is the one they used)
    result["primary_capacity_qps"] = measure_capacity(text, _calibrated([member("primary", primary_s)], text),
                                                      args.capacity_queries)
    result["pool_capacity_qps"] = measure_capacity(
        text, _calibrated([member("primary", primary_s), member("overflow", primary_s * args.slowdown)], text),
        args.capacity_queries)
    result["nominal_capacity_qps"] = {  # what the added delays alone would allow (the real encode not counted)
        "primary": round(args.max_batch / primary_s, 1),
        "pool": round(args.max_batch / primary_s + args.max_batch / (primary_s * args.slowdown), 1)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
