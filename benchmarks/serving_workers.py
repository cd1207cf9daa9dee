"""One service process against several worker processes on the same port (`server.workers`, each with its
share of the cores): answered (2xx) QPS, p50, p99 and errors of distinct-query misses (wrk, serving_core.py's
query mix) at 16 and 1 connections, the configurations alternated round by round in one run so machine drift
hits both; plus the proportional memory (PSS) of the serving processes, which shows the memory-mapped index and
rerank vectors counted once.

    .venv/bin/python benchmarks/serving_workers.py [--n 200000] [--factory OPQ64_256,IVF1024,PQ64]
        [--workers 1 2] [--duration 6] [--rounds 2] [--text-precision int8]

Prints one JSON object (also written to benchmarks/out/serving_workers.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, report_json  # noqa: E402
from serving_core import LUA, wrk  # noqa: E402
from serving_store import add_store_arguments, build  # noqa: E402

from tests.service_support import running_server  # noqa: E402


def serving_pids(pid: int) -> list[int]:
    """The process that answers (one process) or its worker processes (uvicorn's supervisor's children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()] or [pid]


def pss_mb(pids: list[int]) -> float:
    """Proportional set size of `pids` together: shared pages (mapped index, vectors, libraries) count once."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return round(total / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_store_arguments(parser, n=200_000, factory="OPQ64_256,IVF1024,PQ64")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--text-precision", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--work", type=Path, default=OUT / "serving")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    from search.settings import Settings

    made = build(args.n, args.factory, args.model, args.work, args.vectors)
    tmp = Path(tempfile.mkdtemp(prefix="serving-workers-"))
    script = tmp / "queries.lua"
    script.write_text(LUA)
    runs: dict[str, list[dict[str, Any]]] = {}
    memory: dict[str, float] = {}
    load = [round(os.getloadavg()[0], 2)]
    for round_no in range(args.rounds):
        for workers in args.workers:
            settings = Settings.model_validate({
                "store": made["store"], "runtime": {"text_precision": args.text_precision},
                "reload": {"watch": False, "verify_checksums": False}, "server": {"workers": workers}})
            with running_server(settings, tmp / "service.json") as server:
                wrk(server.url, script, 2, 4, "miss", "full", 0)  # warm-up (each worker's first encodes)
                memory[f"workers_{workers}"] = pss_mb(serving_pids(server.proc.pid))
                for connections in args.connections:
                    seed = 1000 * (round_no + 1) + connections
                    stats = wrk(server.url, script, args.duration, connections, "miss", "full", seed)
                    # answered searches only: a shed miss (503 at once, traffic.deadline_ms) is fast and counts
                    stats["ok_qps"] = round((stats["requests"] - stats["non2xx"]) / stats["seconds"], 1)
                    stats["load_average"] = round(os.getloadavg()[0], 2)
                    runs.setdefault(f"workers_{workers}_c{connections}", []).append(stats)
            load.append(round(os.getloadavg()[0], 2))
    summary = {name: {"ok_qps_median": statistics.median(r["ok_qps"] for r in rounds),
                      "p50_ms_median": statistics.median(r["p50_ms"] for r in rounds),
                      "p99_ms_median": statistics.median(r["p99_ms"] for r in rounds),
                      "errors": sum(r["errors"] for r in rounds), "non2xx": sum(r["non2xx"] for r in rounds),
                      "requests": sum(r["requests"] for r in rounds)}
               for name, rounds in runs.items()}
    result = {"benchmark": "serving_workers", "machine": machine(), "store": made, "duration_s": args.duration,
              "rounds": args.rounds, "text_precision": args.text_precision, "load_average_1m": load,
              "pss_mb_after_warmup": memory, "summary": summary, "runs": runs}
    report_json("serving_workers", result)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
