"""cProfile of the in-process query path (no HTTP): distinct mixed-length misses through the embedder (cache,
batcher, session pool) and the searcher, at concurrency 1 and 16, on the tiny synthetic-world store (or --store,
a published store carrying its encoder; or --model/--n/--factory for serving_store.py's production shape).
Prints the top functions by own time as JSON, so a change to the serving core can be checked for Python overhead
on the request path.

    .venv/bin/python benchmarks/query_path_profile.py [--queries 400] [--model ViT-B-32 --n 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine  # noqa: E402
from serving_core import queries  # noqa: E402
from serving_store import build  # noqa: E402


async def drive(state: object, texts: list[str], concurrency: int) -> float:
    from search.query.pipeline import SearchSpec
    from search.query.timing import StageTimer

    sem = asyncio.Semaphore(concurrency)

    async def one(q: str) -> None:
        async with sem:
            timer = StageTimer()
            vector, _ = await state.embedder.embed(q, timer)  # type: ignore[attr-defined]
            await state.searcher.search(vector, SearchSpec(k=10), timer)  # type: ignore[attr-defined]

    start = time.perf_counter()
    await asyncio.gather(*(one(q) for q in texts))
    return time.perf_counter() - start


def top(profile: cProfile.Profile, n: int = 15) -> list[list[object]]:
    stats = pstats.Stats(profile)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
    return [[f"{Path(f).name}:{line}:{name}", round(v[2] / total, 3), v[1]] for (f, line, name), v in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--store", type=Path, help="a published store with its encoder (default: the tiny world)")
    parser.add_argument("--model", help="build (or reuse) serving_store.py's store for this model instead, e.g. "
                                        "ViT-B-32 with --n 1000000")
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors of that store (with --model)")
    parser.add_argument("--factory", default="OPQ64_256,IVF4096,PQ64", help="index of that store (with --model)")
    parser.add_argument("--work", type=Path, default=OUT / "serving")
    parser.add_argument("--text-precision", choices=("int8", "fp32"), default="int8")
    args = parser.parse_args()
    from search.settings import ReloadSettings, RuntimeSettings, Settings
    from search.state import build_state

    store = args.store
    if store is None and args.model:
        store = Path(str(build(args.n, args.factory, args.model, args.work)["store"]))
    if store is None:
        from tests.service_support import world_store

        store = world_store(Path(tempfile.mkdtemp(prefix="profile-")) / "world").store
    # no model settings: the service state takes its encoder from the store
    state = build_state(Settings(store=store, reload=ReloadSettings(watch=False),
                                 runtime=RuntimeSettings(text_precision=args.text_precision)))
    result: dict[str, object] = {"benchmark": "query_path_profile", "machine": machine(), "queries": args.queries,
                                 "store": str(store), "text_precision": args.text_precision}
    try:
        for concurrency in (1, 16):
            texts = queries(args.queries, concurrency)
            profile = cProfile.Profile()
            profile.enable()
            seconds = asyncio.run(drive(state, texts, concurrency))
            profile.disable()
            result[f"concurrency_{concurrency}"] = {"qps": round(args.queries / seconds, 1),
                                                    "top_own_time": top(profile)}
    finally:
        state.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
