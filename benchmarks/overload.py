"""Load shedding over real HTTP against a real `python -m search serve`: find the sustainable cache-miss rate,
then offer twice that rate of misses (open loop, every request a new query) while a cache-hit stream runs
beside it (and a /healthz stream: the floor any answer pays on the machine at that moment). Reports admitted
(200) latency p50/p99, rejected (503) answer time p50/p99/max, cache-hit p99 under the overload, and that the
service still answers /readyz afterwards; the issue's targets sit beside them (`meets_target`).

Targets (issue 12, ViT-B-32 store on 2 cores): admitted p99 <= 150 ms, rejected <= 5 ms, service up, hits
keep serving. The load generator is autocannon (benchmarks/load/overload.mjs, Node; installed on first use with
`npm ci`): it runs on the same machine, so its CPU use is reported beside the figures (`generator.cpu_s`).

    .venv/bin/python benchmarks/overload.py [--seconds 10] [--deadline-ms 60] [--ort-threads 1] [--factor 2]
        [--model ViT-B-32]

The store (synthetic world encoded by a seeded random-init checkpoint of `--model`; speed does not depend on
the weights' values) is built once (~45 s for ViT-B-32) and reused from benchmarks/out/overload/; a
`--model ViT-B-32 --seconds 10` run then takes ~45 s (two servers, probe, two loads).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import OUT, machine, random_checkpoint  # noqa: E402

from search.settings import (  # noqa: E402
    BatchSettings,
    ReloadSettings,
    RuntimeSettings,
    Settings,
    ThreadSettings,
    TrafficSettings,
)
from tests.service_support import running_server, world_store  # noqa: E402

HIT_QUERY = "a large orange square on a sand background"
LOAD = ROOT / "benchmarks" / "load"
TARGETS = {"admitted_p99_ms": 150.0, "rejected_p99_ms": 5.0, "rejected_max_ms": 5.0, "readyz_after": 200,
           "hits_all_200": True}


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _generator(config: dict[str, Any]) -> dict[str, Any]:
    """One run of the autocannon script; its JSON (latencies by status per stream, its own CPU use)."""
    if not (LOAD / "node_modules" / "autocannon").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=LOAD, check=True, capture_output=True)
    done = subprocess.run(["node", str(LOAD / "overload.mjs"), json.dumps(config)], capture_output=True,
                          text=True, check=False, timeout=config["seconds"] * 6 + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load generator exited {done.returncode}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except OSError as exc:  # HTTPError carries the status; a refused connection has none
        return int(getattr(exc, "code", 0))


def _stream_summary(stream: dict[str, Any]) -> dict[str, Any]:
    statuses: dict[str, list[float]] = stream["statuses"]
    return {"answered": stream["answered"], "elapsed_s": stream["elapsed_s"], "errors": stream["errors"],
            "timeouts": stream["timeouts"], "statuses": {k: len(v) for k, v in sorted(statuses.items())}}


def _settle(url: str) -> None:
    """Caches the hit query and waits for the image session, which loads in a background thread after start
    (one upload blocks until it is there): nothing of the start-up runs beside the measurement."""
    import io

    import httpx
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(png, format="PNG")
    with httpx.Client(base_url=url, timeout=120) as http:
        http.get("/search", params={"q": HIT_QUERY, "k": 10}).raise_for_status()
        http.post("/search/image", files={"file": ("warm.png", png.getvalue(), "image/png")}).raise_for_status()


def _probe(url: str, seconds: float, probe_connections: int) -> dict[str, Any]:
    """The sustainable miss rate: closed-loop misses at `probe_connections`, answered per second. Run on a
    server without shedding only (a shedding server would refuse part of the probe and skew the rate)."""
    probe = _generator({"url": url, "mode": "probe", "seconds": min(seconds, 5.0), "connections": probe_connections})
    miss = probe["streams"]["miss"]
    return {"connections": probe_connections, **_stream_summary(miss),
            "p50_ms": _pct(miss["statuses"].get("200", []), 50),
            "sustainable_miss_rate_per_s": round(len(miss["statuses"].get("200", [])) / miss["elapsed_s"], 1)}


def _measure(url: str, seconds: float, factor: float, hit_rate: float, sustainable: float | None,
             probe_connections: int, spread: int) -> dict[str, Any]:
    """Calibrates the sustainable miss rate when `sustainable` is None (on a server without shedding, so no
    request of the calibration is refused), then offers `factor` times it."""
    _settle(url)
    result: dict[str, Any] = {}
    if sustainable is None:
        result["probe"] = _probe(url, seconds, probe_connections)
        sustainable = result["probe"]["sustainable_miss_rate_per_s"]
    offered = sustainable * factor
    load = _generator({"url": url, "mode": "open", "seconds": seconds, "missRate": offered, "hitRate": hit_rate,
                       "hitQuery": HIT_QUERY, "floorRate": 20, "spread": spread, "timeoutS": 30})
    misses, hits = load["streams"]["miss"]["statuses"], load["streams"]["hit"]["statuses"]
    floor = load["streams"]["floor"]["statuses"].get("200", [])
    admitted, rejected = misses.get("200", []), misses.get("503", [])
    result.update({
        "sustainable_miss_rate_per_s": round(sustainable, 1), "offered_miss_rate_per_s": round(offered, 1),
        "answered_miss_rate_per_s": round(load["streams"]["miss"]["answered"] / load["streams"]["miss"]["elapsed_s"],
                                          1),
        "misses": _stream_summary(load["streams"]["miss"]),
        "admitted_p50_ms": _pct(admitted, 50), "admitted_p99_ms": _pct(admitted, 99),
        "rejected_p50_ms": _pct(rejected, 50), "rejected_p99_ms": _pct(rejected, 99),
        "rejected_max_ms": round(max(rejected), 2) if rejected else None,
        "hit_rate_per_s": hit_rate, "hits": _stream_summary(load["streams"]["hit"]),
        "hit_p50_ms": _pct(hits.get("200", []), 50), "hit_p99_ms": _pct(hits.get("200", []), 99),
        # GET /healthz beside the load: what any answer costs on this machine now (loop, generator, kernel)
        "healthz_floor_p50_ms": _pct(floor, 50), "healthz_floor_p99_ms": _pct(floor, 99),
        "readyz_after": _status(f"{url}/readyz"), "generator": load["generator"],
    })
    return result


def _verdict(run: dict[str, Any]) -> dict[str, bool]:
    hits = run["hits"]
    return {
        "admitted_p99_ms": run["admitted_p99_ms"] is not None and run["admitted_p99_ms"] <= TARGETS["admitted_p99_ms"],
        "rejected_p99_ms": run["rejected_p99_ms"] is None or run["rejected_p99_ms"] <= TARGETS["rejected_p99_ms"],
        "rejected_max_ms": run["rejected_max_ms"] is None or run["rejected_max_ms"] <= TARGETS["rejected_max_ms"],
        "readyz_after": run["readyz_after"] == TARGETS["readyz_after"],
        "hits_all_200": hits["answered"] > 0 and set(hits["statuses"]) == {"200"} and not hits["timeouts"],
    }


def _store(model: str) -> Path:
    """A synthetic-world store encoded with `model` (the tiny world store, or for another open_clip model a
    seeded random-init checkpoint), built once under benchmarks/out/overload/ and reused."""
    base = OUT / "overload"
    store = base / f"store-{model}"
    if (store / "current").exists():
        return store
    if store.exists():
        shutil.rmtree(store)  # a build that did not finish
    world = world_store(base / "world" if model != "tiny" else Path(tempfile.mkdtemp(prefix="overload-")))
    if model == "tiny":
        shutil.copytree(world.store, store, symlinks=True)
        return store
    from PIL import Image

    from indexer.models.clip import load_encoder
    from tests.service_support import _write_metadata, publish

    checkpoint = random_checkpoint(model, OUT / f"{model}-random.pt")
    encoder = load_encoder(model, pretrained=str(checkpoint), device="cpu")
    records = [json.loads(line) for line in (world.image_root / "metadata.jsonl").read_text().splitlines()]
    vectors = encoder.encode_images([Image.open(world.image_root / r["path"]).convert("RGB") for r in records])
    building = base / f"building-{model}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    ids = _write_metadata(building / "metadata.sqlite", world.image_root, records)
    publish(building, world.image_root, encoder, building / "metadata.sqlite", ids, np.asarray(vectors),
            onnx_cache=base / "onnx-cache")
    building.rename(store)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=2.0, help="offered miss rate / sustainable miss rate")
    parser.add_argument("--deadline-ms", type=float, default=60.0,
                        help="traffic.deadline_ms: a 150 ms p99 budget leaves ~60 ms to wait for the encoder")
    parser.add_argument("--hit-rate", type=float, default=20.0, help="cache-hit requests per second beside it")
    parser.add_argument("--probe-connections", type=int, default=4,
                        help="closed-loop clients of the sustainable-rate probe")
    parser.add_argument("--spread", type=int, default=25,
                        help="autocannon instances per stream, started 1000/spread ms apart (smaller sub-bursts)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the load without shedding (the sustainable rate is still probed on a "
                             "non-shedding server)")
    parser.add_argument("--model", default="tiny", help="tiny, or an open_clip model such as ViT-B-32")
    parser.add_argument("--ort-threads", type=int, default=0,
                        help="threads.ort_intra_op (0: the service default; 1 leaves a core to the event loop)")
    args = parser.parse_args()
    store = _store(args.model)
    base = Path(tempfile.mkdtemp(prefix="overload-"))
    # checksums in full before ready: no background hashing of the store while the load runs
    model_settings = Settings(store=store, reload=ReloadSettings(watch=False, start_checks="full"),
                              runtime=RuntimeSettings(), threads=ThreadSettings(ort_intra_op=args.ort_threads))
    result: dict[str, Any] = {"benchmark": "overload", "machine": machine(), "model": args.model,
                              "seconds": args.seconds, "factor": args.factor,
                              "text_precision": model_settings.runtime.text_precision,
                              "deadline_ms": args.deadline_ms, "spread": args.spread, "targets": TARGETS,
                              "ort_intra_op_threads": args.ort_threads or "service default"}
    # first the same load with a deadline nobody reaches (calibration + what queueing without shedding costs),
    # then the same offered rate with shedding
    runs = [("no_shedding", TrafficSettings(deadline_ms=600_000, max_queue=100_000, entry_shedding=False)),
            ("shedding", TrafficSettings(deadline_ms=args.deadline_ms))]
    sustainable: float | None = None
    if args.no_baseline:  # no baseline load, but the rate is still probed on a server that does not shed
        settings = model_settings.model_copy(update={"traffic": runs[0][1],
                                                     "batching": BatchSettings(window_ms=3, max_batch=32)})
        with running_server(settings, base / "probe.json") as server:
            _settle(server.url)
            result["probe_without_shedding"] = _probe(server.url, args.seconds, args.probe_connections)
        sustainable = result["probe_without_shedding"]["sustainable_miss_rate_per_s"]
        runs = runs[1:]
    for name, traffic in runs:
        settings = model_settings.model_copy(update={"traffic": traffic,
                                                     "batching": BatchSettings(window_ms=3, max_batch=32)})
        with running_server(settings, base / f"{name}.json") as server:
            result[name] = _measure(server.url, args.seconds, args.factor, args.hit_rate, sustainable,
                                    args.probe_connections, args.spread)
        sustainable = result[name]["sustainable_miss_rate_per_s"]
    if "shedding" in result:
        result["meets_target"] = _verdict(result["shedding"])
    result["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
