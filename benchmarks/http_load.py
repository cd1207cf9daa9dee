"""HTTP latency (p50/p95/p99) and QPS of a running `python -m search serve`, driven by wrk (Debian's `wrk`).

Scenarios: cache hit (one repeated query), cache miss (every request a new query) with micro-batching on, and
cache miss with micro-batching off. Each scenario gets its own server process on a free localhost port. Builds
a small synthetic-world store with the real tiny encoder and its encoder files (the test-support builder); the
service takes its encoder from that store.

    .venv/bin/python benchmarks/http_load.py [--duration 8] [--connections 8] [--backend onnx|onnx-int8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.settings import BatchSettings  # noqa: E402
from tests.service_support import running_server, settings_for, world_store  # noqa: E402

# wrk Lua: a fresh query per request (cache misses) or one query (hits); prints latency percentiles as JSON.
LUA = r"""
local counter = 0
local mode = os.getenv("PHOTOSTOCK_MODE") or "hit"
request = function()
  counter = counter + 1
  local q = "a large orange square on a sand background"
  if mode == "miss" then q = q .. " " .. tostring(math.random(1, 1000000000)) .. " " .. counter end
  return wrk.format("GET", "/search?k=10&q=" .. q:gsub(" ", "%%20"))
end
done = function(summary, latency, requests)
  io.write(string.format(
    'JSON {"requests": %d, "seconds": %.3f, "errors": %d, "non2xx": %d, "p50_ms": %.3f, "p95_ms": %.3f, ' ..
    '"p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50) / 1e3, latency:percentile(95) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


def run_wrk(url: str, mode: str, duration: int, connections: int, threads: int, script: Path) -> dict:
    proc = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True, text=True, env={**os.environ, "PHOTOSTOCK_MODE": mode},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    out = proc.stdout
    line = next(line for line in out.splitlines() if line.startswith("JSON "))
    stats = json.loads(line[5:])
    stats["qps"] = round(stats["requests"] / stats["seconds"], 1)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--backend", default="onnx", choices=["onnx", "onnx-int8"],
                        help="the store's fp32 text tower, or its int8 one (runtime.text_precision)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these scenarios")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="http-load-"))
    world = world_store(work / "world")
    script = work / "report.lua"
    script.write_text(LUA)
    scenarios = [("cache_hit", "hit", 3.0, args.connections), ("cache_hit_1_connection", "hit", 3.0, 1),
                 ("cache_miss_batching_3ms", "miss", 3.0, args.connections),
                 ("cache_miss_no_batching", "miss", 0.0, args.connections),
                 ("cache_miss_1_connection", "miss", 3.0, 1)]
    results: dict[str, object] = {"benchmark": "http_load", "cpus": os.cpu_count(),
                                  "load_average_at_start": os.getloadavg(),
                                  "connections": args.connections, "duration_s": args.duration,
                                  "backend": args.backend, "vectors": len(world.ids_by_path)}
    for name, mode, window, connections in scenarios:
        if args.only and name not in args.only:
            continue
        settings = settings_for(world, batching=BatchSettings(window_ms=window, max_batch=32))
        precision = "int8" if args.backend == "onnx-int8" else "fp32"
        settings = settings.model_copy(update={"runtime": settings.runtime.model_copy(
            update={"text_precision": precision})})
        with running_server(settings, work / f"{name}.json") as server:
            run_wrk(server.url, mode, 2, connections, args.wrk_threads, script)  # warm-up
            results[name] = run_wrk(server.url, mode, args.duration, connections, args.wrk_threads, script)
            results[name]["connections"] = connections
    print(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
