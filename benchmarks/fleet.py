"""Added latency of the search fleet (search/fleet/, S shards) over the single-process service, 1 connection.

The synthetic-world store with the real tiny encoder; the same service settings for both (result-page cache
off, so every request runs the search; the query-vector cache warmed, so the figure is the search path's hops,
not the encode). The single-process service is `python -m search serve` in a subprocess; the fleet runs on a
local 2-CPU Ray (ingress, query encoder, 2 replicas of Shard0, fractional CPUs) deployed with `serve.run`.
Both are asked the same sequence of GET /search requests, one at a time, each followed by a GET /healthz.
`--shards S` (latency only): both serve the same store's catalogue in S parts, the fleet as S Shard deployments
of one replica each; the sharded copy is published beside the store from its stored vectors, nothing re-encoded
(serving_store.sharded_copy for --serving-store, reused while the store's version is unchanged; the test
helpers' sharded_copy for the synthetic world).
Where the added time goes: `added_p50_split_ms` (the proxy's hop, from /healthz; the time inside the ingress
against the single process's, from the pages' own `timings_ms.total`) and `handle_calls` (one Shard0 search
through a handle, through the ingress's fan-out over that handle, and in this process; a no-op Serve deployment's
handle call, answered on its replica's loop or from a thread: Serve's cost of one hop here, and of the thread;
the same no-op call carrying a shard's 100-candidate answer there and back, with float32 rows and with the
float16 rows the wire sends (search/fleet/wire.py), also at the production shape (100 candidates at D = 512),
and the answers' pickled sizes).

Replica memory (with the latency run): each Shard0 replica process's RssAnon, RssFile, Pss and USS after both
served the run's searches, and the extra replica's RssAnon against the shard's index + vectors bytes (the index
and the rerank vectors are memory-mapped, so replicas on one node share one page-cache copy of them).

`--serving-store`: the production shape instead of the synthetic world: the store of serving_store.py (same
`--n`, `--factory`, `--model`, `--vectors`; default ViT-B-32 random init, 1M clustered vectors,
OPQ64_256,IVF4096,PQ64), int8 text tower, distinct mixed-length queries as serving_core.py asks them.

Cold start (`--only cold_start` runs only this): a second fleet application whose QueryEncoder and Shard0 scale to
zero (min_replicas 0, 2 s idle to zero, as configs/fleet-scale-to-zero.yaml with shorter delays); once Serve
reports both at zero replicas, one GET /search with a query not asked before is timed from send to answer (the
encoder and the shard replicas start, load the encoder and open the part). `breakdown`: per deployment, when
(seconds after the send) Serve decided to leave zero, started the replica actor, had its process up with its
imports done, its constructor done, saw it running, and had its first call answered (and a shard's wake-up
call, made as the encode starts), read from Serve's controller and replica logs; `imports_s`: the replica
modules' imports timed apart in fresh interpreters.

`--without-ray-data`: every process of the local Ray finds no pandas, as in an install of ray[serve] alone (the
`fleet` extra) rather than ray[data,serve] (`distributed`): Ray Serve imports pandas in each replica process when
it is installed, and the fleet never uses it.

`--direct-ingress`: Ray started with Serve's direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS=1, experimental in
Ray 2.60), where the ingress replica serves HTTP on its own port: the fleet is measured through the proxy and at
that port in the same run (`fleet_direct_ingress`).

Kill under load (`--only kill` runs only this): wrk (as benchmarks/http_load.py drives it) with 16 connections
asks the S = 1 fleet one GET /search over and over (query vector cached, page cache off: every request reaches
a shard) for `--kill-seconds`; a third of the way in, one of Shard0's two replica processes gets SIGKILL (kill -9).
Reports wrk's requests, failures (socket errors + non-2xx) and latency, the ingress's shard calls by kind
(first, hedge, retry; its /metrics) before and after the kill, and the replicas Serve runs afterwards.
Prints one JSON object.

    .venv/bin/python benchmarks/fleet.py [--requests 200] [--kill-seconds 9] [--only latency|cold_start|kill]
        [--without-ray-data] [--direct-ingress] [--serving-store [--n 1000000] [--vectors clustered]]
        [--only latency --shards S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine  # noqa: E402 - puts the repository root on the path
from http_load import LUA  # noqa: E402
from replica_memory import proc_memory  # noqa: E402
from serving_store import add_store_arguments, build, sharded_copy  # noqa: E402

from search.artifact.manifest import shard_dir_name  # noqa: E402
from search.artifact.version import current_path, open_current  # noqa: E402
from search.settings import CacheSettings, Settings  # noqa: E402
from tests.fleet_support import replica_pids  # noqa: E402
from tests.service_support import free_port, running_server, settings_for, world_store  # noqa: E402
from tests.service_support import sharded_copy as sharded_world  # noqa: E402


def _latencies(url: str, queries: list[str], n: int) -> dict[str, list[float]]:
    """Milliseconds per GET /search as the client sees it (`search`), the service's own total for it (its body's
    timings_ms: from the route to the page, inside the app), and per GET /healthz right after (`healthz`: the
    HTTP path with no search behind it)."""
    out: dict[str, list[float]] = {"search": [], "in_app": [], "healthz": []}
    with httpx.Client(base_url=url, timeout=60) as client:
        for q in queries:  # warm the query-vector cache (and the connection)
            assert client.get("/search", params={"q": q, "k": 10}).status_code == 200
        for i in range(n):
            start = time.perf_counter()
            r = client.get("/search", params={"q": queries[i % len(queries)], "k": 10})
            out["search"].append((time.perf_counter() - start) * 1000)
            assert r.status_code == 200, r.text
            out["in_app"].append(r.json()["timings_ms"]["total"])
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            out["healthz"].append((time.perf_counter() - start) * 1000)
    return out


def _summary(ms: dict[str, list[float]]) -> dict[str, float]:
    cuts = statistics.quantiles(ms["search"], n=100)
    return {"p50_ms": round(statistics.median(ms["search"]), 2), "p99_ms": round(cuts[98], 2),
            "in_app_p50_ms": round(statistics.median(ms["in_app"]), 2),
            "healthz_p50_ms": round(statistics.median(ms["healthz"]), 2)}


def _direct_port() -> int:
    """The HTTP port Serve's direct ingress gave the ingress replica (from its 30000-31000 range)."""
    import psutil

    ports = sorted({c.laddr.port for c in psutil.net_connections("tcp")
                    if c.status == psutil.CONN_LISTEN and 30000 <= c.laddr.port < 31000})
    if len(ports) != 1:
        raise RuntimeError(f"expected one direct-ingress port, found {ports}")
    return ports[0]


def _handle_calls(store: Path, settings: Any, app: str, n: int) -> dict[str, float | int]:
    """Where a shard call's time goes: the same search in this process (`ShardServer`), through a handle to the
    fleet's Shard0, and a no-op Serve deployment's handle call with the same query vector (Serve's own cost
    of one hop on this machine). Medians in ms."""
    from ray import serve

    from search.fleet.fanout import RemoteShard, ShardTiming, fan_out
    from search.fleet.parts import ShardServer
    from search.fleet.wire import to_wire
    from search.query.shard import ShardQuery

    @serve.deployment(name="Echo", ray_actor_options={"num_cpus": 0.1})
    class Echo:
        async def echo(self, value: Any) -> Any:
            return value

        async def echo_in_thread(self, value: Any) -> Any:  # as a replica that runs its work off its loop
            return await asyncio.to_thread(lambda: value)

    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    echo = serve.get_deployment_handle("Echo", app_name="echo")
    shard = serve.get_deployment_handle("Shard0", app_name=app)
    server = ShardServer(settings, 0)
    version_dir = str(current_path(store))
    with open_current(store) as artifact:  # a stored vector as the query: any store, any size
        qv = artifact.rows16(np.asarray([0])).astype(np.float32)
    asks = [ShardQuery(fetch=100)]
    hits32 = server.search(version_dir, qv, asks, frozenset())
    hits16 = to_wire(hits32)
    rows = np.random.default_rng(0).standard_normal((100, 512)).astype(np.float16).astype(np.float32)
    wide32 = [replace(hits32[0], ids=np.arange(100, dtype=np.int64), similarity=np.zeros(100, np.float32),
                      vectors=rows)]  # the production shape: 100 candidates at D = 512
    wide16 = to_wire(wide32)
    remote = RemoteShard("Shard0", lambda *a: shard.search.remote(*a[:4], tag=a[4]))  # tag: as the ingress sends it
    fanout = fan_out([remote], version_dir, frozenset(), ShardTiming(5.0, 5.0))
    times: dict[str, list[float]] = {}
    for i in range(n + 20):  # the first 20: warm-up
        for name, call in (("in_process_search", lambda: server.search(version_dir, qv, asks, frozenset())),
                           ("shard_handle_call", lambda: shard.search.remote(version_dir, qv, asks,
                                                                             frozenset()).result()),
                           ("shard_fan_out", lambda: fanout(qv, asks)),  # the ingress's fan-out over it
                           ("noop_handle_call", lambda: echo.echo.remote(qv).result()),
                           ("noop_handle_call_to_thread", lambda: echo.echo_in_thread.remote(qv).result()),
                           # a shard's answer sent there and back: float32 rows, and float16 as the wire has them
                           ("echo_answer_float32", lambda: echo.echo.remote(hits32).result()),
                           ("echo_answer_float16", lambda: echo.echo.remote(hits16).result()),
                           ("echo_answer_d512_float32", lambda: echo.echo.remote(wide32).result()),
                           ("echo_answer_d512_float16", lambda: echo.echo.remote(wide16).result())):
            start = time.perf_counter()
            call()
            if i >= 20:
                times.setdefault(name, []).append((time.perf_counter() - start) * 1000)
    server.close()
    serve.delete("echo")
    return {"answer_bytes_float32": len(pickle.dumps(hits32)), "answer_bytes_float16": len(pickle.dumps(hits16)),
            "answer_d512_bytes_float32": len(pickle.dumps(wide32)),
            "answer_d512_bytes_float16": len(pickle.dumps(wide16)),
            **{f"{name}_p50_ms": round(statistics.median(ms), 2) for name, ms in times.items()}}


def _replica_memory(app: str, store: Path) -> dict[str, Any]:
    """Memory of each running Shard0 replica process after it has served searches: RssAnon (its private heap:
    what one more replica adds on the node, the index and rerank vectors being memory-mapped files that every
    replica shares through one page-cache copy), RssFile, Pss and USS, against the shard's index + vectors
    (part 0's in a sharded version)."""
    import psutil

    version = current_path(store)
    part = version / shard_dir_name(0) if (version / shard_dir_name(0)).is_dir() else version
    part_files = [f for f in part.rglob("*") if f.is_file() and f.name.startswith(("index", "vectors"))]
    shard_mb = sum(f.stat().st_size for f in part_files) / 2**20
    replicas = []
    for pid in replica_pids(app, "Shard0"):
        mem = proc_memory(pid)
        mem["USS"] = round(psutil.Process(pid).memory_full_info().uss / 2**20, 1)
        replicas.append(mem)
    extra = max(r["RssAnon"] for r in replicas)
    return {"shard_index_and_vectors_mb": round(shard_mb, 1), "replicas": replicas,
            "extra_replica_rss_anon_mb": extra, "extra_replica_over_shard": round(extra / shard_mb, 3)}


ZERO = {"min_replicas": 0, "max_replicas": 1, "upscale_delay_s": 0, "downscale_delay_s": 2,
        "downscale_to_zero_delay_s": 2, "metrics_interval_s": 0.5, "look_back_period_s": 2}


COLD = ("QueryEncoder", "Shard0")  # the deployments at zero replicas before the cold query
_SERVE_LOG = re.compile(r"^\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ (?:\S+ )?-- (.*)$")


def _log_times(path: Path) -> list[tuple[float, str]]:
    """(epoch seconds, message) of each line of a Serve log (its timestamps are local time, to the ms)."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _SERVE_LOG.match(line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((when, m.group(2)))
    return out


def _first(pattern: str, events: list[tuple[float, str]]) -> tuple[float, re.Match[str]] | None:
    """The first (time, match) of `pattern` in a log's events."""
    rx = re.compile(pattern)
    return next(((t, m) for t, msg in events if (m := rx.search(msg))), None)


def _cold_breakdown(logs: Path, app: str, sent: float) -> dict[str, dict[str, Any]]:
    """Where a cold query's time went, per deployment started for it, in seconds after the query was sent, from
    Serve's own logs (the controller's and the replica's): the autoscaler's decision to leave zero, the replica
    actor's start, its process up with its imports done (`Started initializing replica`), its constructor done
    (encoder: ONNX sessions loaded; shard: part open), the controller seeing it running, its wake-up call
    answered (a shard woken as the encode started), and its first real call answered (with that call's own time
    in the replica)."""
    controller = [e for f in sorted(logs.glob("controller_*.log")) for e in _log_times(f) if e[0] >= sent - 1]
    out: dict[str, dict[str, Any]] = {}
    for name in COLD:
        who = f"deployment='{name}', app='{app}'"
        up = _first(re.escape(f"Upscaling Deployment(name='{name}', app='{app}') from 0"), controller)
        start = _first(r"Starting Replica\(id='(\w+)', " + re.escape(who), controller)
        if up is None or start is None:
            out[name] = {"error": "no replica started after the query (see Serve's controller log)"}
            continue
        rid = start[1].group(1)
        running = _first(re.escape(f"Replica(id='{rid}', {who}) started successfully"), controller)
        replica = [e for f in logs.glob(f"replica_{app}_{name}_{rid}.log") for e in _log_times(f)]
        init = _first(r"^Started initializing replica", replica)
        ready = _first(r"^Finished initializing replica", replica)
        woken = _first(r"^CALL wake OK", replica)
        call = _first(r"^CALL (?!wake )(\w+) OK ([\d.]+)ms", replica)
        times = {"upscale_decided": up[0], "replica_started": start[0], "imports_done": init and init[0],
                 "constructed": ready and ready[0], "running": running and running[0],
                 "wake_answered": woken and woken[0], "first_call_answered": call and call[0]}
        out[name] = {f"{k}_s": round(v - sent, 2) for k, v in times.items() if v is not None}
        if init is not None and ready is not None:
            out[name]["process_and_imports_s"] = round(init[0] - start[0], 2)
            out[name]["constructor_s"] = round(ready[0] - init[0], 2)
        if call is not None:
            out[name]["first_call"] = f"{call[1].group(1)} {call[1].group(2)} ms"
    return out


def _import_seconds() -> dict[str, float]:
    """Seconds a fresh interpreter takes to import what a replica process imports (Ray Serve's replica, then
    the module its deployment class lives in: search/fleet/replicas.py for the encoder and the shards where it
    exists, search/fleet/app.py for the ingress): the import share of a replica's start, measured on its own."""
    from importlib.util import find_spec

    code = ("import sys, time; t = time.perf_counter(); import ray.serve._private.replica; u = time.perf_counter(); "
            "__import__(sys.argv[1]); print(u - t, time.perf_counter() - u, int('pandas' in sys.modules))")
    out = {}
    for module in ("search.fleet.replicas", "search.fleet.app"):
        if find_spec(module) is None:
            continue
        done = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1])
        serve_s, module_s, pandas = (float(x) for x in done.stdout.split())
        out["ray_serve_replica"] = round(serve_s, 2)  # the last of the runs
        out["with_pandas"] = bool(pandas)
        out[module] = round(module_s, 2)
    return out


def _cold_start(url: str, app: str, query: str, logs: Path) -> dict[str, Any]:
    """Seconds from a query sent to a fleet at zero encoder and shard replicas to its answer, and where they went
    (`breakdown`, from Serve's logs in `logs`; `imports_s`, measured apart after the query)."""
    from ray import serve
    from ray.serve.schema import ReplicaState  # type: ignore[attr-defined]

    def at_zero() -> bool:
        deployments = serve.status().applications[app].deployments
        return all(not deployments[d].replica_states.get(ReplicaState.RUNNING) for d in COLD)

    end = time.monotonic() + 300
    while not at_zero():
        if time.monotonic() > end:
            raise RuntimeError("the encoder and the shard did not scale to zero within 300 s")
        time.sleep(0.2)
    with httpx.Client(base_url=url, timeout=300) as client:
        start = time.perf_counter()
        ready = client.get("/readyz")
        ready_s = time.perf_counter() - start
        sent = time.time()
        r = client.get("/search", params={"q": query, "k": 10})
        first_s = time.perf_counter() - start
    assert ready.status_code == 200 and r.status_code == 200, r.text
    end = time.monotonic() + 10  # a replica may write its call's log line just after the answer left
    breakdown = _cold_breakdown(logs, app, sent)
    while any("first_call" not in d for d in breakdown.values()) and time.monotonic() < end:
        time.sleep(0.2)
        breakdown = _cold_breakdown(logs, app, sent)
    return {"readyz_at_zero_s": round(ready_s, 3), "first_answer_s": round(first_s, 2),
            "search_s": round(first_s - ready_s, 2), "breakdown": breakdown, "imports_s": _import_seconds()}


def _serve_logs() -> Path:
    """The folder of this Ray session's Serve logs (controller and replicas)."""
    import ray

    node = ray._private.worker.global_worker.node
    assert node is not None, "Ray is not started"
    return Path(node.get_session_dir_path()) / "logs" / "serve"


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
    pids = replica_pids(app, "Shard0")
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


def _store_under_test(args: argparse.Namespace, base: Path) -> tuple[Path, Settings, list[str], str]:
    """The store, the service settings both sides run (result-page cache off), 20 queries and a query asked
    only by the cold start: the synthetic world with its tiny encoder, or (--serving-store) the production
    shape with distinct mixed-length queries as serving_core.py asks them; in `args.shards` parts."""
    if not args.serving_store:
        world = world_store(base)
        parts = base / f"store-shards{args.shards}"
        store = world.store if args.shards == 1 else sharded_world(world, parts, args.shards)
        settings = settings_for(world, store).model_copy(update={"cache": CacheSettings(results_max_mb=0)})
        return store, settings, [q["query"] for q in world.queries[:20]], world.queries[-1]["query"]
    from serving_core import queries

    store = Path(str(build(args.n, args.factory, args.model, OUT / "serving", args.vectors)["store"]))
    store = sharded_copy(store, args.shards)
    settings = Settings.model_validate({"store": str(store), "runtime": {"text_precision": "int8"},
                                       "reload": {"watch": False, "verify_checksums": False},
                                       "cache": {"results_max_mb": 0}})
    return store, settings, queries(20, 7), queries(1, 99)[0]


def _hide_pandas(base: Path) -> None:
    """Every process of the local Ray started after this finds no pandas, as an install without ray[data]: a
    folder first on the path whose `pandas` fails to import as a missing package does (Serve imports it only
    if it imports)."""
    stub = base / "without-ray-data"
    (stub / "pandas").mkdir(parents=True)
    (stub / "pandas" / "__init__.py").write_text('raise ImportError("No module named \'pandas\'")\n',
                                                 encoding="utf-8")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(stub), os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, str(stub))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--kill-seconds", type=int, default=9)
    parser.add_argument("--only", choices=["latency", "cold_start", "kill"], default=None)
    parser.add_argument("--direct-ingress", action="store_true",
                        help="start Ray with Serve's direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS=1) and "
                             "measure the fleet both through the proxy and at the ingress replica's own port")
    parser.add_argument("--serving-store", action="store_true",
                        help="the production-shape store of serving_store.py (--n, --factory, --model, --vectors; "
                             "int8 text tower) instead of the synthetic world's")
    add_store_arguments(parser)
    parser.add_argument("--without-ray-data", action="store_true",
                        help="hide pandas from Ray's processes, as an install of ray[serve] without ray[data]")
    parser.add_argument("--shards", type=int, default=1,
                        help="serve the store in S parts (S Shard deployments, one replica each); latency only")
    args = parser.parse_args()
    if args.shards < 1 or (args.shards > 1 and args.only != "latency"):
        parser.error("--shards takes 1 or more, and more than 1 only with --only latency")
    base = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    store, settings, queries, cold_query = _store_under_test(args, base)
    config = base / "service.json"
    single: dict[str, list[float]] = {}
    if args.only in (None, "latency"):
        with running_server(settings, base / "server.json") as server:
            single = _latencies(server.url, queries, args.requests)
    config.write_text(json.dumps(settings.model_dump(mode="json", exclude={"store"})), encoding="utf-8")

    import ray
    from ray import serve

    from search.fleet.app import build_app

    small = {"ray_actor_options": {"num_cpus": 0.1}}
    if args.without_ray_data:
        _hide_pandas(base)
    if args.direct_ingress:  # read by Serve in every Ray process the local cluster starts
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    ray.init(num_cpus=2, object_store_memory=128 * 2**20, include_dashboard=False, logging_level="WARNING")
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        out: dict[str, Any] = {"benchmark": "fleet", "shards": args.shards, "store": str(store)}
        if args.only in (None, "latency", "kill"):  # S = 1: two replicas (the kill needs a survivor); else one each
            replicas = 2 if args.shards == 1 else 1
            serve.run(build_app({"store": str(store), "config": str(config),
                                 "ingress": {"num_replicas": 1, **small}, "encoder": {"num_replicas": 1, **small},
                                 "shards": {"count": args.shards, "num_replicas": replicas, **small}}),
                      name="photostock", route_prefix="/")
        if args.only in (None, "latency"):
            fleet = _latencies(f"http://127.0.0.1:{port}", queries, args.requests)
            one, many = _summary(single), _summary(fleet)
            calls = _handle_calls(store, settings, "photostock", args.requests)
            out.update({"requests": args.requests, "connections": 1, "single_process": one, "fleet": many,
                        "added_p50_ms": round(many["p50_ms"] - one["p50_ms"], 2),
                        "added_p99_ms": round(many["p99_ms"] - one["p99_ms"], 2),
                        "handle_calls": calls,
                        # the added p50 split: the proxy's hop (same for every route), the shard call inside the
                        # ingress (its in-app total against the single process's), and the rest
                        "added_p50_split_ms": {
                            "proxy_hop": round(many["healthz_p50_ms"] - one["healthz_p50_ms"], 2),
                            "in_ingress": round(many["in_app_p50_ms"] - one["in_app_p50_ms"], 2)}})
            out["replica_memory"] = _replica_memory("photostock", store)  # both replicas have served searches
            if args.direct_ingress:
                direct = _summary(_latencies(f"http://127.0.0.1:{_direct_port()}", queries, args.requests))
                out.update({"fleet_direct_ingress": direct,
                            "added_p50_ms_direct_ingress": round(direct["p50_ms"] - one["p50_ms"], 2),
                            "added_p99_ms_direct_ingress": round(direct["p99_ms"] - one["p99_ms"], 2)})
        if args.only in (None, "kill"):
            out["kill_under_load"] = _kill_under_load(f"http://127.0.0.1:{port}", "photostock", args.kill_seconds,
                                                      16, base)
        if args.only in (None, "cold_start"):
            serve.run(build_app({"store": str(store), "config": str(config), "cold_start_timeout_s": 120,
                                 "ingress": {"num_replicas": 1, **small},
                                 "encoder": {"autoscaling_config": ZERO, **small},
                                 "shards": {"count": 1, "autoscaling_config": ZERO, **small}}),
                      name="photostock-zero", route_prefix="/zero")
            with open_current(store) as artifact:
                vectors = len(artifact.ids)
            out["cold_start"] = {"store_vectors": vectors,
                                 **_cold_start(f"http://127.0.0.1:{port}/zero", "photostock-zero",
                                               cold_query, _serve_logs())}
    finally:
        serve.shutdown()
        ray.shutdown()
    out["machine"] = machine()
    out["without_ray_data"] = args.without_ray_data
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
