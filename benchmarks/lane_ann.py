"""The search lane's `ann` stage against the bare FAISS call, in one process on the serving store: where the
in-service ANN time goes (issue 20).

Queries go through a real `SearchLane` running `search_batch` one at a time with an idle gap between them (as
requests leave one: an HTTP round trip, or a miss's encode on another thread), alternating with the bare
FAISS call (`index.search`, parameters built once) on the same lane thread and the same gap. Once with the
lane thread's FAISS OpenMP team at every core (what the lane ran with before: libgomp keeps the team size
per thread, and the budget was set on another thread) and once with the budget's team (one thread); plus the
bare call back to back on the main thread (what a loop of bare calls measures).

    .venv/bin/python benchmarks/lane_ann.py [--n 1000000] [--factory OPQ64_256,IVF4096,PQ64]
        [--vectors clustered] [--queries 60] [--gap-ms 20] [--nq 1]
Prints one JSON object (also written to benchmarks/out/lane_ann.json).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, report_json  # noqa: E402
from serving_store import add_store_arguments, build  # noqa: E402


def p50_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


def lane_run(artifact: Any, queries: Any, team: int, gap_s: float, nq: int) -> dict[str, Any]:
    """Batches of `nq` queries through a SearchLane whose thread runs FAISS with a `team`-thread OpenMP team,
    each after an idle `gap_s`; even batches: `search_batch` (its stage timer), odd: the bare FAISS call."""
    import faiss

    from search.artifact.ann import search_parameters
    from search.query.batch import RankPolicy, search_batch
    from search.query.lane import SearchLane
    from search.query.spec import SearchSpec
    from search.query.timing import StageTimer
    from search.settings import RankSettings

    part = artifact.parts[0]
    prepared = search_parameters(part.index, part.search_params)
    fetch = max(artifact.rerank_candidates, 40)
    policy, spec = RankPolicy.from_settings(RankSettings()), SearchSpec(k=10)
    stages: dict[str, list[float]] = {}
    bare: list[float] = []

    def run(batch: list[tuple[bool, Any]]) -> list[Any]:
        (in_service, q), = batch
        if in_service:
            timer = StageTimer()
            search_batch(artifact, q, [spec] * len(q), policy, timer=timer)
            for name, seconds in timer.seconds.items():
                stages.setdefault(name, []).append(seconds)
        else:
            start = time.perf_counter()
            part.index.search(q, fetch, params=prepared)
            bare.append(time.perf_counter() - start)
        return [None]

    lane: SearchLane[tuple[bool, Any], Any] = SearchLane(run, initializer=lambda: faiss.omp_set_num_threads(team))

    async def drive() -> None:
        for i in range(0, len(queries) - nq + 1, nq):
            await asyncio.sleep(gap_s)
            await lane.submit(((i // nq) % 2 == 0, queries[i:i + nq]))

    try:
        asyncio.run(drive())
    finally:
        lane.close()
    out = {f"in_service_{name}_p50_ms": p50_ms(xs[2:]) for name, xs in stages.items()}
    out["bare_faiss_call_p50_ms"] = p50_ms(bare[2:])
    out["bare_faiss_call_mean_ms"] = round(statistics.mean(bare[2:]) * 1000, 3)
    out["in_service_ann_over_bare"] = round(out["in_service_ann_p50_ms"] / out["bare_faiss_call_p50_ms"], 2)
    return out


def back_to_back(artifact: Any, queries: Any, nq: int) -> float:
    """The bare FAISS call in a loop on the calling thread (the budget's team), no gap: p50 ms."""
    from search.artifact.ann import search_parameters

    part = artifact.parts[0]
    prepared = search_parameters(part.index, part.search_params)
    fetch = max(artifact.rerank_candidates, 40)
    xs = []
    for i in range(0, len(queries) - nq + 1, nq):
        start = time.perf_counter()
        part.index.search(queries[i:i + nq], fetch, params=prepared)
        xs.append(time.perf_counter() - start)
    return p50_ms(xs[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_store_arguments(parser)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="idle time before each search")
    parser.add_argument("--nq", type=int, default=1, help="queries per search batch")
    parser.add_argument("--work", type=Path, default=OUT / "serving")
    args = parser.parse_args()

    import numpy as np

    from search.artifact.version import open_current
    from search.runtime.threads import configure_process, resolve_budget

    made = build(args.n, args.factory, args.model, args.work, args.vectors)
    budget = resolve_budget()  # the service's default budget (on this thread; the lane sets its own)
    configure_process(budget)
    cores = resolve_budget(faiss_omp=0).faiss_omp
    result: dict[str, Any] = {"benchmark": "lane_ann", "machine": machine(), "store": made, "nq": args.nq,
                              "gap_ms": args.gap_ms, "load_average_at_start": os.getloadavg()}
    with open_current(Path(str(made["store"]))) as artifact:
        rng = np.random.default_rng(0)  # queries near stored rows, as text queries land near their photos
        rows = rng.integers(0, len(artifact.ids), args.queries)
        queries = np.asarray(artifact.vectors[rows], np.float32)
        queries += 0.05 * rng.standard_normal(queries.shape).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        result["params"] = artifact.search_params
        back_to_back(artifact, queries, args.nq)  # page in what the mapped index touches
        result["bare_back_to_back_main_thread_p50_ms"] = back_to_back(artifact, queries, args.nq)
        runs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            (f"lane_team_{cores}_cores", lambda: lane_run(artifact, queries, cores, args.gap_ms / 1000, args.nq)),
            (f"lane_team_{budget.faiss_omp}_budget",
             lambda: lane_run(artifact, queries, budget.faiss_omp, args.gap_ms / 1000, args.nq))]
        for name, fn in runs:
            result[name] = fn()
    result["load_average_at_end"] = os.getloadavg()
    report_json("lane_ann", result)


if __name__ == "__main__":
    main()
