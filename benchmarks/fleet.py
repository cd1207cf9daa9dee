"""Added latency of the search fleet (search/fleet/, S = 1) over the single-process service, 1 connection.

The synthetic-world store with the real tiny encoder; the same service settings for both (result-page cache
off, so every request runs the search; the query-vector cache warmed, so the figure is the search path's hops,
not the encode). The single-process service is `python -m search serve` in a subprocess; the fleet runs on a
local 2-CPU Ray (ingress, query encoder, 2 replicas of Shard0, fractional CPUs) deployed with `serve.run`.
Both are asked the same sequence of GET /search requests, one at a time.

Cold start (`--only cold_start` runs only this): a second fleet application whose QueryEncoder and Shard0 scale to
zero (min_replicas 0, 2 s idle to zero, as configs/fleet-scale-to-zero.yaml with shorter delays); once Serve
reports both at zero replicas, one GET /search with a query not asked before is timed from send to answer (the
encoder and the shard replicas start, load the encoder and open the part).

Kill under load (`--only kill` runs only this): wrk (as benchmarks/http_load.py drives it) with 16 connections
asks the S = 1 fleet one GET /search over and over (query vector cached, page cache off: every request reaches
a shard) for `--kill-seconds`; a third of the way in, one of Shard0's two replica processes gets SIGKILL (kill -9).
Reports wrk's requests, failures (socket errors + non-2xx) and latency, the ingress's shard calls by kind
(first, hedge, retry; its /metrics) before and after the kill, and the replicas Serve runs afterwards.
Prints one JSON object.

    .venv/bin/python benchmarks/fleet.py [--requests 200] [--kill-seconds 9] [--only latency|cold_start|kill]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402 - puts the repository root on the path
from http_load import LUA  # noqa: E402

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


def _replica_pids(app: str, deployment: str) -> list[int]:
    """The processes of `deployment`'s replicas in Serve application `app` (Ray titles each replica process
    `ray::ServeReplica:<app>:<deployment>`)."""
    import psutil

    title = f"ServeReplica:{app}:{deployment}"
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::") and cmdline.split()[0].endswith(title):
            out.append(proc.info["pid"])
    return out


def _shard_calls(url: str) -> dict[str, int]:
    """The ingress's shard calls so far by kind (photostock_shard_calls_total in /metrics)."""
    out: dict[str, int] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("photostock_shard_calls_total{"):
            labels, value = line.rsplit(" ", 1)
            kind = labels.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = out.get(kind, 0) + int(float(value))
    return out


def _kill_under_load(url: str, app: str, seconds: int, connections: int, work: Path) -> dict[str, Any]:
    """wrk at `connections` over `seconds`; one Shard0 replica process SIGKILLed a third of the way in."""
    from ray import serve
    from ray.serve.schema import ReplicaState  # type: ignore[attr-defined]

    script = work / "report.lua"
    script.write_text(LUA, encoding="utf-8")
    pids = _replica_pids(app, "Shard0")
    if len(pids) != 2:
        raise RuntimeError(f"expected 2 Shard0 replica processes, found {pids}")
    wrk = subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
                            url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PHOTOSTOCK_MODE": "hit"})
    time.sleep(seconds / 3)  # the load is running: kill one replica under it
    before = _shard_calls(url)
    os.kill(pids[0], signal.SIGKILL)
    killed_at = time.perf_counter()
    stdout, stderr = wrk.communicate(timeout=seconds + 60)
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {stdout}\n{stderr}")
    stats = json.loads(next(line for line in stdout.splitlines() if line.startswith("JSON "))[5:])
    after = _shard_calls(url)
    end = time.monotonic() + 120
    while (running := serve.status().applications[app].deployments["Shard0"].replica_states.get(
            ReplicaState.RUNNING, 0)) < 2 and time.monotonic() < end:
        time.sleep(0.2)
    return {"connections": connections, "duration_s": seconds, "killed": "1 of 2 Shard0 replicas (SIGKILL)",
            "requests": stats["requests"], "failed": stats["errors"] + stats["non2xx"],
            "qps": round(stats["requests"] / stats["seconds"], 1),
            **{k: round(stats[k], 1) for k in ("p50_ms", "p99_ms", "max_ms")},
            "shard_calls_before_kill": before,
            "shard_calls_after_kill": {k: v - before.get(k, 0) for k, v in after.items()},
            "shard0_replicas_running_after": running,
            "replacement_running_after_s": round(time.perf_counter() - killed_at, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--kill-seconds", type=int, default=9)
    parser.add_argument("--only", choices=["latency", "cold_start", "kill"], default=None)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    world = world_store(base)
    settings = settings_for(world).model_copy(update={"cache": CacheSettings(results_max_mb=0)})
    queries = [q["query"] for q in world.queries[:20]]
    config = base / "service.json"
    single: list[float] = []
    if args.only in (None, "latency"):
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
        if args.only in (None, "latency", "kill"):
            serve.run(build_app({"store": str(world.store), "config": str(config),
                                 "ingress": {"num_replicas": 1, **small}, "encoder": {"num_replicas": 1, **small},
                                 "shards": {"count": 1, "num_replicas": 2, **small}}), name="photostock",
                      route_prefix="/")
        if args.only in (None, "latency"):
            fleet = _latencies(f"http://127.0.0.1:{port}", queries, args.requests)
            one, many = _summary(single), _summary(fleet)
            out.update({"requests": args.requests, "connections": 1, "single_process": one, "fleet": many,
                        "added_p50_ms": round(many["p50_ms"] - one["p50_ms"], 2),
                        "added_p99_ms": round(many["p99_ms"] - one["p99_ms"], 2)})
        if args.only in (None, "kill"):
            out["kill_under_load"] = _kill_under_load(f"http://127.0.0.1:{port}", "photostock", args.kill_seconds,
                                                      16, base)
        if args.only in (None, "cold_start"):
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
