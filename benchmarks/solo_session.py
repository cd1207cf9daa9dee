"""A lone query with and without the solo session (`threads.solo_intra_op`): the service state in-process on the
serving store, distinct 3-20-token queries one at a time, rounds alternating solo on / off so machine drift
cancels. Prints the p50 of the encode and ANN stages per round as JSON.

    .venv/bin/python benchmarks/solo_session.py [--vectors clustered] [--queries 40] [--rounds 2]
        [--text-precision int8|fp32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine  # noqa: E402
from serving_core import queries  # noqa: E402
from serving_store import build  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--factory", default="OPQ64_256,IVF4096,PQ64")
    parser.add_argument("--vectors", choices=("clustered", "isotropic"), default="clustered")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--text-precision", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--work", type=Path, default=OUT / "serving")
    args = parser.parse_args()
    from search.query.pipeline import SearchSpec
    from search.query.timing import StageTimer
    from search.settings import Settings
    from search.state import build_state

    store = str(build(args.n, args.factory, "ViT-B-32", args.work, args.vectors)["store"])
    result: dict[str, object] = {"benchmark": "solo_session", "machine": machine(), "store": store,
                                 "text_precision": args.text_precision}
    for rnd in range(args.rounds):
        for solo in (0, 1):  # 0: every core for a lone query; 1: no solo session
            settings = Settings.model_validate({
                "store": store, "reload": {"watch": False, "verify_checksums": False},
                "runtime": {"text_precision": args.text_precision}, "threads": {"solo_intra_op": solo}})
            state = build_state(settings)

            async def run(seed: int, state: object = state) -> dict[str, float]:
                stages: dict[str, list[float]] = {"encode": [], "ann": []}
                for q in queries(args.queries, seed):
                    timer = StageTimer()
                    vector, _ = await state.embedder.embed(q, timer)  # type: ignore[attr-defined]
                    await state.searcher.search(vector, SearchSpec(k=10), timer)  # type: ignore[attr-defined]
                    for name in stages:
                        stages[name].append(timer.seconds[name] * 1000)
                return {f"{name}_p50_ms": round(statistics.median(v), 3) for name, v in stages.items()}

            try:
                result[f"round{rnd}_solo_{'on' if solo == 0 else 'off'}"] = asyncio.run(run(50 + 10 * rnd + solo))
            finally:
                state.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
