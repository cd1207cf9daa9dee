"""GPU check: on a CUDA machine, indexer images/s for a CLIP model from JPEG files (AMP; random-init weights
saved as a local checkpoint, since speed does not depend on the weights), the same build with CPU overflow
workers beside it (GPU alone vs GPU + CPU ONNX sessions taking batches when the GPU's queue is full: images/s,
batches per device), text-encoder QPS, and FAISS IVF training time on the GPU with the CPU time beside it for
the ratio. Prints one JSON object.

Without CUDA it prints {"skipped": true, ...} and exits 0. GPU_CHECK_DEVICE=cpu runs the same code on the CPU
(a dry run of the check itself; CI runs it with small sizes, tests/test_gpu_check.py). GPU_CHECK_LIMIT_S
(default 470) bounds the run: past it the JSON says so and the exit status is 1.

    python benchmarks/gpu_check.py [--images 2000] [--faiss-vectors 1000000] [--model ViT-B-32] [--out DIR]
                                   [--overflow-workers 1] [--overflow-threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import random_checkpoint, write_jpegs  # noqa: E402  (the benchmarks folder is not a package)

BATCH_SIZE = 256


def device() -> str:
    return os.environ.get("GPU_CHECK_DEVICE", "cuda")


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def indexer_rate(root: Path, store: Path, model: str, ckpt: Path, n: int, overflow_workers: int = 0,
                 overflow_threads: int = 0) -> dict[str, Any]:
    """The real indexer pipeline (decode workers, encoder, publish) over N JPEG files; `overflow_workers` CPU
    ONNX sessions beside the GPU (0: the GPU alone)."""
    from indexer.models.clip import load_encoder
    from indexer.run.pipeline import run_build
    from indexer.settings import IndexerSettings

    dev = device()
    encoder = load_encoder(model, pretrained=str(ckpt), device=dev)
    workers = max(1, (os.cpu_count() or 2) - 2)
    settings = IndexerSettings(model=model, device=dev, workers=workers, batch_size=BATCH_SIZE,
                               overflow_workers=overflow_workers, overflow_threads=overflow_threads,
                               onnx_cache_dir=str(store.parent / "onnx"),
                               index={"use_gpu": True, "recall_queries": 100, "latency_queries": 20})
    start = time.perf_counter()
    report = run_build(root, store, settings, encoder)
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
            "workers": workers, "batch_size": BATCH_SIZE, "amp": "float16 autocast" if dev == "cuda" else "none",
            "overflow_workers": overflow_workers, "devices": report["encode_devices"],
            "timings": report["timings"], "encoded": report["counts"]["encoded"]}


def overflow_compare(root: Path, base: Path, args: argparse.Namespace, ckpt: Path,
                     alone: dict[str, Any]) -> dict[str, Any]:
    """GPU alone (the `indexer` section) vs GPU + CPU overflow workers: same files, same process, one after the
    other. The overflow run goes second: it finds the image tower's ONNX export cached (the first run's publish
    exported it) and the JPEGs in the page cache (a small bias in its favour; the decode workers read them)."""
    helped = indexer_rate(root, base / "store-overflow", args.model, ckpt, args.images, args.overflow_workers,
                          args.overflow_threads)
    encode_s = {name: alone["timings"].get(name) for name in ("encode", "encode_wait")}
    return {
        "gpu_alone": {"images_per_s": alone["images_per_s"], "devices": alone["devices"], **encode_s},
        "gpu_plus_cpu_overflow": {
            "images_per_s": helped["images_per_s"], "overflow_workers": args.overflow_workers,
            "devices": helped["devices"], "encode_wait": helped["timings"].get("encode_wait"),
            "encoded": helped["encoded"], "timings": helped["timings"],
        },
        "speedup": round(helped["images_per_s"] / alone["images_per_s"], 2) if alone["images_per_s"] else None,
    }


def text_qps(model: str, ckpt: Path, seconds: float) -> dict[str, float]:
    """Queries per second of the full-context text tower at batch 1 and 256, each timed for `seconds`."""
    import torch

    from indexer.lab import world
    from indexer.models.clip import load_encoder

    dev = device()
    encoder = load_encoder(model, pretrained=str(ckpt), device=dev)
    texts = [item.composition.caption for item in world.iter_gallery(5, 256, (16, 16))]
    out: dict[str, float] = {}
    for batch in (1, 256):
        encoder.encode_texts(texts[:batch])  # warm-up (kernels, autotune)
        if dev == "cuda":
            torch.cuda.synchronize()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            encoder.encode_texts(texts[:batch])
            count += batch
        if dev == "cuda":
            torch.cuda.synchronize()
        out[f"batch_{batch}_qps"] = round(count / (time.perf_counter() - start), 1)
    return out


def faiss_ivf(n: int, d: int = 512) -> dict[str, Any]:
    """IVF k-means training on the GPU (when this faiss build has GPU support) and on the CPU, same sample."""
    import faiss
    import numpy as np

    nlist = 4096 if n >= 1_000_000 else max(16, n // 256)
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    faiss.normalize_L2(x)
    sample = x[: nlist * 64]
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    out: dict[str, Any] = {"vectors": n, "dim": d, "nlist": nlist, "train_points": len(sample), "gpus": gpus}
    if gpus > 0:
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexIVFFlat(res, d, nlist, faiss.METRIC_INNER_PRODUCT)
        start = time.perf_counter()
        index.train(sample)
        out["gpu_train_s"] = round(time.perf_counter() - start, 2)
    else:
        out["gpu_train_s"] = None
        out["note"] = "this faiss build has no GPU support (install the `gpu` extra instead of `cpu`)"
    cpu = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    cpu.train(sample)
    out["cpu_train_s"] = round(time.perf_counter() - start, 2)
    if out["gpu_train_s"]:
        out["gpu_speedup"] = round(out["cpu_train_s"] / out["gpu_train_s"], 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    dev = device()
    base = Path(args.out or tempfile.mkdtemp(prefix="gpu-check-"))
    start = time.perf_counter()
    root = write_jpegs(base / "jpegs", args.images, (640, 480))
    write_s = time.perf_counter() - start
    from indexer.models import registry

    arch = registry.TINY_MODEL_NAME if args.model in registry.TINY_ALIASES else args.model
    ckpt = random_checkpoint(arch, base / f"{arch}-random.pt")
    result: dict[str, Any] = {
        "benchmark": "gpu_check", "skipped": False, "model": args.model,
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)",
        "torch": torch.__version__, "jpeg_write_s": round(write_s, 1),
    }
    result["indexer"] = indexer_rate(root, base / "store", args.model, ckpt, args.images)  # the GPU alone
    if args.overflow_workers > 0:
        result["indexer_overflow"] = overflow_compare(root, base, args, ckpt, result["indexer"])
    result["text_encoder"] = text_qps(args.model, ckpt, args.text_seconds)
    result["faiss_ivf"] = faiss_ivf(args.faiss_vectors)
    return result


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--faiss-vectors", type=int, default=1_000_000)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name or `tiny`")
    parser.add_argument("--overflow-workers", type=int, default=1,
                        help="CPU overflow workers for the GPU + CPU build (0: skip that comparison)")
    parser.add_argument("--overflow-threads", type=int, default=0,
                        help="intra-op threads per overflow session (0: the CPUs the decode workers leave)")
    parser.add_argument("--text-seconds", type=float, default=5.0, help="timing window per text batch size")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a new temp folder)")
    args = parser.parse_args(argv)
    if device() == "cuda" and not cuda_available():
        print(json.dumps({"benchmark": "gpu_check", "skipped": True, "reason": "no CUDA device visible to torch"}))
        return 0
    limit_s = int(os.environ.get("GPU_CHECK_LIMIT_S", "470"))
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(limit_s)
    try:
        result = run(args)
    except TimeoutError:
        print(json.dumps({"benchmark": "gpu_check", "skipped": False, "error": f"timed out after {limit_s} s"}))
        return 1
    finally:
        signal.alarm(0)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
