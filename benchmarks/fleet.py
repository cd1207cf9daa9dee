"""Added latency of the search fleet (search/fleet/, S = 1) over the single-process service, 1 connection.

The synthetic-world store with the real tiny encoder; the same service settings for both (result-page cache
off, so every request runs the search; the query-vector cache warmed, so the figure is the search path's hops,
not the encode). The single-process service is `python -m search serve` in a subprocess; the fleet runs on a
local 2-CPU Ray (ingress, query encoder, 2 replicas of Shard0, fractional CPUs) deployed with `serve.run`.
Both are asked the same sequence of GET /search requests, one at a time.

Cold start (`--only cold_start` runs only this): a second fleet application whose QueryEncoder and Shard0 scale to
zero (min_replicas 0, 2 s idle to zero, as configs/fleet-scale-to-zero.yaml with shorter delays); once Serve
reports both at zero replicas, one GET /search with a query not asked before is timed from send to answer (the
encoder and the shard replicas start, load the encoder and open the part). Prints one JSON object.

    .venv/bin/python benchmarks/fleet.py [--requests 200] [--only latency|cold_start]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402 - puts the repository root on the path

from search.artifact.version import open_current  # noqa: E402
from search.settings import CacheSettings  # noqa: E402
from tests.service_support import free_port, running_server, settings_for, world_store  # noqa: E402


def _latencies(url: str, queries: list[str], n: int) -> list[float]:
    with httpx.Client(base_url=url, timeout=60) as client:
        for q in queries:  # warm the query-vector cache (and the connection)
            assert client.get("/search", params={"q": q, "k": 10}).status_code == 200
        out = []
        for i in range(n):
            start = time.perf_counter()
            r = client.get("/search", params={"q": queries[i % len(queries)], "k": 10})
            out.append((time.perf_counter() - start) * 1000)
            assert r.status_code == 200, r.text
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(ms, n=100)
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(cuts[98], 2)}


ZERO = {"min_replicas": 0, "max_replicas": 1, "upscale_delay_s": 0, "downscale_delay_s": 2,
        "downscale_to_zero_delay_s": 2, "metrics_interval_s": 0.5, "look_back_period_s": 2}


def _cold_start(url: str, app: str, query: str) -> dict[str, float]:
    """Seconds from a query sent to a fleet at zero encoder and shard replicas to its answer."""
    from ray import serve
    from ray.serve.schema import ReplicaState  # type: ignore[attr-defined]

    def at_zero() -> bool:
        deployments = serve.status().applications[app].deployments
        return all(not deployments[d].replica_states.get(ReplicaState.RUNNING) for d in ("QueryEncoder", "Shard0"))

    end = time.monotonic() + 300
    while not at_zero():
        if time.monotonic() > end:
            raise RuntimeError("the encoder and the shard did not scale to zero within 300 s")
        time.sleep(0.2)
    with httpx.Client(base_url=url, timeout=300) as client:
        start = time.perf_counter()
        ready = client.get("/readyz")
        ready_s = time.perf_counter() - start
        r = client.get("/search", params={"q": query, "k": 10})
        first_s = time.perf_counter() - start
    assert ready.status_code == 200 and r.status_code == 200, r.text
    return {"readyz_at_zero_s": round(ready_s, 3), "first_answer_s": round(first_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--only", choices=["latency", "cold_start"], default=None)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    world = world_store(base)
    settings = settings_for(world).model_copy(update={"cache": CacheSettings(results_max_mb=0)})
    queries = [q["query"] for q in world.queries[:20]]
    config = base / "service.json"
    single: list[float] = []
    if args.only != "cold_start":
        with running_server(settings, base / "server.json") as server:
            single = _latencies(server.url, queries, args.requests)
    config.write_text(json.dumps(settings.model_dump(mode="json", exclude={"store"})), encoding="utf-8")

    import ray
    from ray import serve

    from search.fleet.app import build_app

    small = {"ray_actor_options": {"num_cpus": 0.1}}
    ray.init(num_cpus=2, object_store_memory=128 * 2**20, include_dashboard=False, logging_level="WARNING")
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        out: dict[str, Any] = {"benchmark": "fleet", "shards": 1}
        if args.only != "cold_start":
            serve.run(build_app({"store": str(world.store), "config": str(config),
                                 "ingress": {"num_replicas": 1, **small}, "encoder": {"num_replicas": 1, **small},
                                 "shards": {"count": 1, "num_replicas": 2, **small}}), name="photostock",
                      route_prefix="/")
            fleet = _latencies(f"http://127.0.0.1:{port}", queries, args.requests)
            one, many = _summary(single), _summary(fleet)
            out.update({"requests": args.requests, "connections": 1, "single_process": one, "fleet": many,
                        "added_p50_ms": round(many["p50_ms"] - one["p50_ms"], 2),
                        "added_p99_ms": round(many["p99_ms"] - one["p99_ms"], 2)})
        if args.only != "latency":
            serve.run(build_app({"store": str(world.store), "config": str(config), "cold_start_timeout_s": 120,
                                 "ingress": {"num_replicas": 1, **small},
                                 "encoder": {"autoscaling_config": ZERO, **small},
                                 "shards": {"count": 1, "autoscaling_config": ZERO, **small}}),
                      name="photostock-zero", route_prefix="/zero")
            with open_current(world.store) as artifact:
                vectors = len(artifact.ids)
            out["cold_start"] = {"store_vectors": vectors,
                                 **_cold_start(f"http://127.0.0.1:{port}/zero", "photostock-zero",
                                               world.queries[-1]["query"])}
    finally:
        serve.shutdown()
        ray.shutdown()
    out["machine"] = machine()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
