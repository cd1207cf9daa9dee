"""Load shedding over real HTTP against a real `python -m search serve`: find the sustainable cache-miss rate,
then offer twice that rate of misses (open loop, every request a new query) while a cache-hit stream runs
beside it. Reports admitted (200) latency p50/p99, rejected (503) answer time p50/p99/max, cache-hit p99 under
the overload, and that the service still answers /readyz afterwards.

Targets (issue 12, ViT-B-32 store on 2 cores): admitted p99 <= 150 ms, rejected <= 5 ms, service up, hits
keep serving. This script runs the project's tiny encoder by default (a ViT-B-32 store needs its weights and a
quiet machine); the load generator is Python asyncio + httpx on the same machine, so its own overhead is in
every figure.

    .venv/bin/python benchmarks/overload.py [--seconds 10] [--deadline-ms 100] [--factor 2] [--model ViT-B-32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import OUT, machine, random_checkpoint  # noqa: E402

from search.settings import BatchSettings, RuntimeSettings, Settings, TrafficSettings  # noqa: E402
from tests.service_support import running_server, settings_for, world_store  # noqa: E402

HIT_QUERY = "a large orange square on a sand background"


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


async def _closed_loop_rate(http: httpx.AsyncClient, seconds: float, workers: int) -> float:
    """Misses per second that `workers` back-to-back clients get answered: the sustainable miss rate."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            i += 1
            r = await http.get("/search", params={"q": f"calibration {w} {i} {time.time_ns()}", "k": 10})
            if r.status_code == 200:
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return done / (time.perf_counter() - start)


async def _open_loop(http: httpx.AsyncClient, rate: float, seconds: float, miss: bool,
                     out: dict[int, list[float]]) -> None:
    """One request every 1/rate seconds regardless of answers (open loop), latency per status."""
    tasks = []

    async def one(i: int) -> None:
        q = f"overload {i} {time.time_ns()}" if miss else HIT_QUERY
        start = time.perf_counter()
        try:
            r = await http.get("/search", params={"q": q, "k": 10})
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        out.setdefault(status, []).append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing of an open-loop generator, not synchronisation
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


async def _measure(url: str, seconds: float, factor: float, hit_rate: float, sustainable: float | None) -> dict:
    """Calibrates the sustainable miss rate when `sustainable` is None (on a server without shedding, so no
    request of the calibration is refused), then offers `factor` times it."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        await http.get("/search", params={"q": HIT_QUERY})  # the hit query is now cached
        if sustainable is None:
            sustainable = await _closed_loop_rate(http, min(seconds, 5.0), workers=4)
        misses: dict[int, list[float]] = {}
        hits: dict[int, list[float]] = {}
        await asyncio.gather(_open_loop(http, sustainable * factor, seconds, True, misses),
                             _open_loop(http, hit_rate, seconds, False, hits))
        ready = (await http.get("/readyz")).status_code
    admitted, rejected = misses.get(200, []), misses.get(503, [])
    return {
        "sustainable_miss_rate_per_s": round(sustainable, 1), "offered_miss_rate_per_s": round(sustainable * factor, 1),
        "offered_misses": sum(len(v) for v in misses.values()),
        "miss_statuses": {str(k): len(v) for k, v in sorted(misses.items())},
        "admitted_p50_ms": _pct(admitted, 50), "admitted_p99_ms": _pct(admitted, 99),
        "rejected_p50_ms": _pct(rejected, 50), "rejected_p99_ms": _pct(rejected, 99),
        "rejected_max_ms": round(max(rejected), 2) if rejected else None,
        "hit_rate_per_s": hit_rate, "hit_statuses": {str(k): len(v) for k, v in sorted(hits.items())},
        "hit_p50_ms": _pct(hits.get(200, []), 50), "hit_p99_ms": _pct(hits.get(200, []), 99),
        "readyz_after": ready,
    }


def _model_settings(model: str, base: Path) -> Settings:
    """Settings on a synthetic-world store encoded with `model` (the tiny world store, or for another open_clip
    model a seeded random-init checkpoint: speed does not depend on the weights' values). No model settings:
    the store carries its encoder files; the text tower is the service's default precision (int8)."""
    world = world_store(base / "world")
    if model == "tiny":
        return settings_for(world, runtime=RuntimeSettings())
    import json as _json

    import numpy as _np
    from PIL import Image

    from indexer.models.clip import load_encoder
    from tests.service_support import _write_metadata, publish

    checkpoint = random_checkpoint(model, OUT / f"{model}-random.pt")
    encoder = load_encoder(model, pretrained=str(checkpoint), device="cpu")
    records = [_json.loads(line) for line in (world.image_root / "metadata.jsonl").read_text().splitlines()]
    vectors = encoder.encode_images([Image.open(world.image_root / r["path"]).convert("RGB") for r in records])
    store = base / f"store-{model}"
    store.mkdir()
    ids = _write_metadata(store / "metadata.sqlite", world.image_root, records)
    publish(store, world.image_root, encoder, store / "metadata.sqlite", ids, _np.asarray(vectors))
    return settings_for(world, store=store, runtime=RuntimeSettings())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=2.0, help="offered miss rate / sustainable miss rate")
    parser.add_argument("--deadline-ms", type=float, default=100.0)
    parser.add_argument("--hit-rate", type=float, default=20.0, help="cache-hit requests per second beside it")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without load shedding")
    parser.add_argument("--model", default="tiny", help="tiny, or an open_clip model such as ViT-B-32")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="overload-"))
    model_settings = _model_settings(args.model, base)
    result: dict = {"benchmark": "overload", "machine": machine(), "model": args.model, "seconds": args.seconds,
                    "factor": args.factor, "text_precision": model_settings.runtime.text_precision,
                    "deadline_ms": args.deadline_ms}
    # first the same load with a deadline nobody reaches (calibration + what queueing without shedding costs),
    # then the same offered rate with shedding
    runs = [("no_shedding", TrafficSettings(deadline_ms=600_000, max_queue=100_000)),
            ("shedding", TrafficSettings(deadline_ms=args.deadline_ms))]
    if args.no_baseline:
        runs = runs[1:]
    sustainable: float | None = None
    for name, traffic in runs:
        settings = model_settings.model_copy(update={"traffic": traffic,
                                                     "batching": BatchSettings(window_ms=3, max_batch=32)})
        with running_server(settings, base / f"{name}.json") as server:
            result[name] = asyncio.run(_measure(server.url, args.seconds, args.factor, args.hit_rate, sustainable))
        sustainable = result[name]["sustainable_miss_rate_per_s"]
    result["machine"]["load_average_1m_after"] = round(__import__("os").getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
