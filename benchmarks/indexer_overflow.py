"""Indexer CPU overflow on a CPU-only machine: a primary image encoder slowed on purpose (standing in for a busy
GPU) alone, vs the same primary + CPU ONNX overflow workers, through the real build (decode workers, ordered
commits, publish) on the tiny synthetic world. Both in the same run, alternating, best of `--repeats`.

Reported per mode: encode-phase images/s (decode + encode + commit of every pending image, the encode_pending
call), batches and images per device, and the ratio against the slowed primary alone. The primary's delay is
per batch (`--primary-delay-s`); the overflow's benefit depends on how slow the primary is against a CPU
session, so the figure is the mechanism's, not a GPU's (benchmarks/gpu_check.py measures that on a GPU).

    .venv/bin/python benchmarks/indexer_overflow.py [--images 256] [--batch-size 16] [--primary-delay-s 0.1]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402  (the benchmarks folder is not a package)


class SlowedEncoder:
    """A real ONNX image session that sleeps per batch: a primary device slower than it looks."""

    def __init__(self, inner: Any, seconds: float):
        self.inner, self.seconds = inner, seconds

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return np.asarray(self.inner.encode_pixels(pixels))


def make_pool(delay: float, overflow: int, threads: int, depth: int, encoder: Any, settings: Any) -> Any:
    from indexer.encoding.device_pool import DevicePool
    from indexer.encoding.encode import onnx_cache_dir
    from indexer.models.towers import onnx_image_encoder

    cache = onnx_cache_dir(settings)
    primary = SlowedEncoder(onnx_image_encoder(encoder, cache, threads), delay)
    extra = [(f"cpu-overflow-{i}", onnx_image_encoder(encoder, cache, threads)) for i in range(1, overflow + 1)]
    return DevicePool(("slow-primary", primary), extra, depth)


def one_build(images: Path, store: Path, encoder: Any, settings: Any, pool: Any) -> dict[str, Any]:
    from indexer.encoding.encode import encode_pending
    from indexer.run.pipeline import run_build

    seconds: list[float] = []

    def stage(pending: Any, root: Path, enc: Any, db: Any, shard_dir: Path, s: Any, timer: Any) -> Any:
        start = time.perf_counter()
        stats = encode_pending(pending, root, enc, db, shard_dir, s, timer, make_pool=pool)
        seconds.append(time.perf_counter() - start)
        return stats

    report = run_build(images, store, settings, encoder, encode_stage=stage)
    encoded = report["counts"]["encoded"]
    return {"encoded": encoded, "encode_phase_s": round(seconds[0], 3),
            "images_per_s": round(encoded / seconds[0], 1), "devices": report["encode_devices"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--primary-delay-s", type=float, default=0.1, help="sleep per primary batch")
    parser.add_argument("--overflow-workers", type=int, default=1)
    parser.add_argument("--depth", type=int, default=2, help="overflow_queue_depth")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per ONNX session")
    parser.add_argument("--workers", type=int, default=1, help="decode worker processes")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from indexer.lab.world import write_world
    from indexer.models.clip import load_encoder
    from indexer.settings import IndexerSettings

    base = Path(tempfile.mkdtemp(prefix="indexer-overflow-"))
    write_world(base / "world", seed=0, gallery=args.images, size=(128, 128))
    images = base / "world" / "gallery"
    torch.manual_seed(0)
    encoder = load_encoder("tiny", pretrained="random", device="cpu")
    settings = IndexerSettings(model="tiny", pretrained="random", device="cpu", batch_size=args.batch_size,
                               workers=args.workers, onnx_cache_dir=str(base / "onnx"),
                               index={"recall_queries": 10, "latency_queries": 5})
    modes = {"primary_alone": 0, "primary_plus_overflow": args.overflow_workers}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    one_build(images, base / "warmup", encoder, settings,
              functools.partial(make_pool, 0.0, 0, args.threads, args.depth))  # the ONNX export, once
    for rep in range(args.repeats):
        for mode, overflow in modes.items():
            pool = functools.partial(make_pool, args.primary_delay_s, overflow, args.threads, args.depth)
            runs[mode].append(one_build(images, base / f"{mode}-{rep}", encoder, settings, pool))
    best = {m: max(r, key=lambda x: x["images_per_s"]) for m, r in runs.items()}
    result = {
        "benchmark": "indexer_overflow", "machine": machine(),
        "params": {k: getattr(args, k) for k in ("images", "batch_size", "primary_delay_s", "overflow_workers",
                                                 "depth", "threads", "workers", "repeats")},
        "model": "tiny (random init), ONNX Runtime CPU sessions", **best,
        "all_images_per_s": {m: [r["images_per_s"] for r in rs] for m, rs in runs.items()},
        "speedup_vs_primary_alone": round(best["primary_plus_overflow"]["images_per_s"]
                                          / best["primary_alone"]["images_per_s"], 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
