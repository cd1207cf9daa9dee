"""Images/s of `indexer build` with the local backend (the same-run baseline) and the Ray backend, on this machine.

Both backends index the same freshly written synthetic-world folder into fresh stores with the real tiny CLIP
(seeded random weights). Prints one JSON object: per backend the wall time of the decode/encode/write stage
and of the whole run, images/s, per-stage timings, measured per-image costs; and a projection of Ray
throughput on a cluster from those per-image costs (the calculation is in the output, term by term).

    nice -n 10 .venv/bin/python benchmarks/ray_vs_local.py --images 240 --size 128
    nice -n 10 .venv/bin/python benchmarks/ray_vs_local.py --images 8 --size 4000x3000 --costs-only  # photo-sized
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _timed(stage: Callable[..., Any], box: dict[str, float]) -> Callable[..., Any]:
    """Wrap an encode stage to record its wall time (the part the backends differ in)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return stage(*args, **kwargs)
        finally:
            box["stage_wall_s"] = time.perf_counter() - start

    return run


def _build(images: Path, store: Path, backend: str, batch_size: int, workers: int) -> dict[str, Any]:
    import torch

    from indexer.encoding.encode import encode_pending
    from indexer.models.clip import load_encoder
    from indexer.run.pipeline import run_build
    from indexer.run.ray_backend import RayOptions, ray_encode_stage
    from indexer.settings import IndexerSettings

    torch.manual_seed(0)
    encoder = load_encoder("tiny", pretrained="random", device="cpu")
    settings = IndexerSettings(model="tiny", pretrained="random", device="cpu", batch_size=batch_size,
                               workers=workers)
    stage = ray_encode_stage(RayOptions()) if backend == "ray" else encode_pending
    box: dict[str, float] = {}
    start = time.perf_counter()
    report = run_build(images, store, settings, encoder, encode_stage=_timed(stage, box))
    wall = time.perf_counter() - start
    n = report["counts"]["encoded"] + report["counts"]["failed_this_run"]
    t = report["timings"]
    per_image = {
        "decode_cpu_s": t.get("decode_worker_cpu", 0.0) / n,
        "encode_s": t.get("encode", 0.0) / n,  # local: main-process wall; ray: actor busy time (1 thread)
        "write_s": t.get("write", 0.0) / n,  # driver: shard file + SQLite commit
    }
    return {
        "images": n, "run_wall_s": round(wall, 3), "stage_wall_s": round(box["stage_wall_s"], 3),
        "images_per_s_stage": round(n / box["stage_wall_s"], 2), "images_per_s_run": round(n / wall, 2),
        "timings": t, "per_image_s": {k: round(v, 6) for k, v in per_image.items()},
    }


def _unit_costs(images: Path, batch_size: int, sample: int) -> dict[str, float]:
    """Per-image costs measured alone, one thread each, with the backends' own functions: decode_with,
    encode_pixels, and write_batch (real fsyncs, real SQLite) at this batch size and at 256."""
    import numpy as np
    import torch

    from indexer.encoding.encode import EncodeStats, write_batch
    from indexer.ingest.decode import decode_with
    from indexer.models.clip import load_encoder
    from indexer.progress import StageTimer
    from indexer.storage.store import Decoded, MetadataStore, RowChange

    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = load_encoder("tiny", pretrained="random", device="cpu")
    files = sorted(p for p in images.rglob("*") if p.suffix in (".jpg", ".png"))[:sample]
    start = time.perf_counter()
    outcomes = [decode_with(str(f), encoder.preprocess, 89_478_485) for f in files]
    pixels = np.stack([o.pixels for o in outcomes if o.ok])
    decode_s = (time.perf_counter() - start) / len(files)
    encoder.encode_pixels(pixels[:batch_size])  # warm-up
    start = time.perf_counter()
    for lo in range(0, len(pixels), batch_size):
        encoder.encode_pixels(pixels[lo:lo + batch_size])
    encode_s = (time.perf_counter() - start) / len(pixels)
    costs = {"decode_s_per_image": decode_s, "encode_s_per_image": encode_s}
    with tempfile.TemporaryDirectory(prefix="write-cost-") as tmp:
        store = MetadataStore.open(Path(tmp) / "m.sqlite")
        n, batches = 0, 4
        for size in (batch_size, 256):
            changes = [RowChange(f"x/{n + i}.jpg", f"{n + i:064x}", 1, 1, "pending") for i in range(size * batches)]
            store.apply_plan(changes, [], {})
            ids = [i for i, _ in store.pending()]
            start = time.perf_counter()
            for b in range(batches):
                chunk = ids[b * size:(b + 1) * size]
                vectors = np.random.default_rng(b).standard_normal((len(chunk), encoder.dim)).astype(np.float32)
                write_batch(f"{n // size + b:08d}-{size}", [Decoded(i, 64, 64) for i in chunk], vectors, [], store,
                            Path(tmp) / "shards", EncodeStats(), StageTimer())
            costs[f"write_s_per_batch_{size}"] = (time.perf_counter() - start) / batches
            n += size * batches
        store.close()
    return {k: round(v, 6) for k, v in costs.items()}


def _projection(costs: dict[str, float], nodes: int, cpus: int, gpus: int, gpu_encode_s: float,
                batch_size: int) -> dict[str, Any]:
    """Throughput bound of the Ray pipeline on `nodes` x (`cpus`, `gpus`): the slowest of its three stages.

    decode: every CPU not held by an encoder actor decodes at the measured single-thread cost; encode: actors
    x threads at the measured single-thread cost (or the stated GPU cost); write: the driver commits every
    batch serially, so batch_size / (write seconds per batch) is a ceiling no number of nodes lifts.
    """
    from indexer.run.ray_backend import plan_resources

    plan = plan_resources({"CPU": nodes * cpus, "GPU": nodes * gpus})
    decode_cpus = nodes * cpus - plan.actors * plan.cpus
    encode_cost = gpu_encode_s if gpus else costs["encode_s_per_image"] / plan.cpus  # ideal thread scaling
    stages = {
        "decode": decode_cpus / costs["decode_s_per_image"],
        "encode": plan.actors / encode_cost,
        "driver_write": batch_size / costs[f"write_s_per_batch_{batch_size}"],
    }
    bottleneck = min(stages, key=stages.get)
    return {
        "cluster": {"nodes": nodes, "cpus_per_node": cpus, "gpus_per_node": gpus}, "batch_size": batch_size,
        "encoder_actors": plan.actors, "decode_cpus": decode_cpus,
        "encode_s_per_image_used": round(encode_cost, 6),
        "stage_capacity_images_per_s": {k: round(v, 1) for k, v in stages.items()},
        "bottleneck": bottleneck, "projected_images_per_s": round(stages[bottleneck], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--size", default="128", help="world image size, e.g. 128 or 640x480")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="local decode worker processes")
    parser.add_argument("--gpu-encode-ms", type=float, default=1.0,
                        help="per-image GPU encode cost assumed for the GPU projection (not measurable here)")
    parser.add_argument("--costs-only", action="store_true",
                        help="skip the two builds; only the one-thread unit costs and the projection")
    args = parser.parse_args()

    from indexer.lab.world import parse_size, write_world

    with tempfile.TemporaryDirectory(prefix="ray-vs-local-") as tmp:
        root = Path(tmp)
        write_world(root / "world", seed=11, gallery=args.images, size=parse_size(args.size))
        images = root / "world" / "gallery"
        results = {} if args.costs_only else {
            b: _build(images, root / f"store-{b}", b, args.batch_size, args.workers) for b in ("local", "ray")}
        costs = _unit_costs(images, args.batch_size, min(args.images, 128))
    out: dict[str, Any] = {
        "benchmark": "ray_vs_local", "machine_cpus": os.cpu_count(), "images": args.images, "size": args.size,
        "batch_size": args.batch_size, **results,
    }
    if results:
        out["ray_over_local_stage_time"] = round(results["ray"]["stage_wall_s"] / results["local"]["stage_wall_s"], 2)
        out["ray_startup_s"] = results["ray"]["timings"].get("ray_init")
    out["unit_costs_one_thread"] = costs
    out["projection"] = [_projection(costs, 8, 16, 0, 0.0, size) for size in (args.batch_size, 256)] + [
        _projection(costs, 8, 16, 1, args.gpu_encode_ms / 1e3, 256)]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
