"""Slow and hostile clients against a real `python -m search serve` on loopback: half-sent requests held open,
searches timed beside them, the half-sent ones timed until the server closes them; then JSON bodies far over
the body cap, with the server's peak RSS (the kernel's VmHWM, reset through /proc/PID/clear_refs).

1. Baseline: `--searches` text searches (every query new: encoder misses) on one keep-alive connection,
   after as many warm-up searches.
2. `--connections` sockets each send half a request (request line, one header, no end) and stop.
3. The same number of new searches while they are held: latency against the baseline of this run.
4. Every half-sent socket is watched until the server closes it (EOF or reset), bounded by
   header_timeout + `--grace` seconds; the server's open file descriptors are read while held and after.
5. `--json-mb` MB JSON bodies, declared (Content-Length) and chunked, at the JSON route: the status and the
   server's peak RSS above idle.

Targets (issue 21): 300 half-sent connections closed within 35 s while searches still answer; a 20 MB JSON
body costs < 50 MB RSS.

    .venv/bin/python benchmarks/slow_clients.py [--connections 300] [--searches 40] [--header-timeout 10]
        [--max-connections 1000] [--json-mb 20]
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine  # noqa: E402

from search.settings import ServerSettings  # noqa: E402
from tests.service_support import running_server, settings_for, world_store  # noqa: E402

TARGET_CLOSE_S = 35.0
TARGET_JSON_MB = 50.0


def _searches(url: str, queries: list[str]) -> dict:
    seconds, statuses = [], []
    with httpx.Client(base_url=url, timeout=60) as http:
        for query in queries:
            start = time.perf_counter()
            statuses.append(http.get("/search", params={"q": query}).status_code)
            seconds.append(time.perf_counter() - start)
    seconds.sort()
    return {"ok": statuses.count(200), "other": len(statuses) - statuses.count(200),
            "p50_ms": round(statistics.median(seconds) * 1000, 1),
            "p95_ms": round(seconds[int(0.95 * (len(seconds) - 1))] * 1000, 1),
            "max_ms": round(seconds[-1] * 1000, 1)}


def _half_sent(port: int, count: int) -> list[tuple[socket.socket, float]]:
    held = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET /search?q=slow{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())
        sock.setblocking(False)
        held.append((sock, time.monotonic()))
    return held


def _until_closed(held: list[tuple[socket.socket, float]], limit_s: float) -> list[float | None]:
    """Seconds from each socket's open to the server's close of it (None: still open at the bound). epoll,
    not select(): thousands of descriptors."""
    closed: dict[socket.socket, float] = {}
    opened = dict(held)
    watch = selectors.DefaultSelector()
    for sock in opened:
        watch.register(sock, selectors.EVENT_READ)
    end = time.monotonic() + limit_s
    while len(closed) < len(held) and time.monotonic() < end:
        for key, _ in watch.select(timeout=1.0):
            sock = key.fileobj
            try:
                data = sock.recv(4096)  # type: ignore[union-attr]
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if not data:
                closed[sock] = time.monotonic() - opened[sock]  # type: ignore[index]
                watch.unregister(sock)
    watch.close()
    for sock in opened:
        sock.close()
    return [closed.get(sock) for sock, _ in held]


def _peak_above_idle_mb(pid: int, send: object) -> tuple[int, float]:
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    idle = psutil.Process(pid).memory_info().rss
    status = send()  # type: ignore[operator]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return status, round((int(line.split()[1]) * 1024 - idle) / 2**20, 1)
    raise KeyError("VmHWM")


def _json_bodies(url: str, pid: int, megabytes: int) -> dict:
    body = b'{"query": "' + b"a" * (megabytes * 2**20) + b'"}'

    def declared() -> int:
        return httpx.post(url + "/search", content=body, headers={"content-type": "application/json"},
                          timeout=120).status_code

    def chunked() -> int:
        def pieces():  # a generator body: httpx sends it chunked (no Content-Length)
            for i in range(0, len(body), 2**16):
                yield body[i:i + 2**16]
        try:
            return httpx.post(url + "/search", content=pieces(), headers={"content-type": "application/json"},
                              timeout=120).status_code
        except httpx.HTTPError as exc:  # the server answered 413 and closed while we were still sending
            return getattr(getattr(exc, "response", None), "status_code", 0) or 413
    out = {}
    for name, send in (("declared", declared), ("chunked", chunked)):
        status, peak = _peak_above_idle_mb(pid, send)
        out[name] = {"status": status, "peak_above_idle_mb": peak}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--searches", type=int, default=40)
    parser.add_argument("--header-timeout", type=float, default=ServerSettings().header_timeout_s)
    parser.add_argument("--max-connections", type=int, default=ServerSettings().max_connections)
    parser.add_argument("--grace", type=float, default=30.0, help="seconds past the header timeout to wait")
    parser.add_argument("--json-mb", type=int, default=20)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    world = world_store(base / "world")
    server_cfg = ServerSettings(header_timeout_s=args.header_timeout, max_connections=args.max_connections)
    settings = settings_for(world, server=server_cfg)
    result: dict = {"benchmark": "slow_clients", "machine": machine(), "connections": args.connections,
                    "header_timeout_s": args.header_timeout, "max_connections": args.max_connections,
                    "target_closed_within_s": TARGET_CLOSE_S}
    with running_server(settings, base / "service.json") as server:
        proc = psutil.Process(server.proc.pid)
        _searches(server.url, [f"warm up {i}" for i in range(args.searches)])  # sessions, caches, allocator
        result["baseline_searches"] = _searches(server.url, [f"red circle {i}" for i in range(args.searches)])
        result["fds_idle"] = proc.num_fds()
        held = _half_sent(server.port, args.connections)
        result["searches_while_held"] = _searches(server.url, [f"blue square {i}" for i in range(args.searches)])
        result["fds_while_held"] = proc.num_fds()
        closes = _until_closed(held, args.header_timeout + args.grace)
        done = [c for c in closes if c is not None]
        result["half_sent"] = {"closed": len(done), "still_open": len(closes) - len(done),
                               "close_min_s": round(min(done), 2) if done else None,
                               "close_max_s": round(max(done), 2) if done else None}
        result["fds_after"] = proc.num_fds()
        if args.json_mb:
            result["json_body_mb"] = args.json_mb
            result["json_bodies"] = _json_bodies(server.url, server.proc.pid, args.json_mb)
    base_p50 = result["baseline_searches"]["p50_ms"]
    result["search_p50_ratio_held_over_baseline"] = round(result["searches_while_held"]["p50_ms"] / base_p50, 2)
    result["meets_target"] = (result["half_sent"]["still_open"] == 0
                              and (result["half_sent"]["close_max_s"] or 0) <= TARGET_CLOSE_S
                              and result["searches_while_held"]["other"] == 0
                              and all(b["peak_above_idle_mb"] < TARGET_JSON_MB
                                      for b in result.get("json_bodies", {}).values()))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
