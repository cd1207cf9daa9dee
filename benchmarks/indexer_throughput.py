"""Indexer throughput on a folder of real JPEG files vs clip-retrieval's `clip-retrieval inference` on the same
files, the same open_clip architecture and the same checkpoint file, on the same machine, in the same run.

Both are timed end to end as a user runs them (process start, model load, decode, encode, write); ours twice:
cold (its one-off ONNX export of a new encoder included) and warm (the export cached, as every later run).
Ours also reports its per-stage breakdown from the run report, and the rate without its index build
(clip-retrieval's inference writes embeddings only). clip-retrieval is installed from PyPI into its own virtualenv under
benchmarks/out/ on first use (torch pinned to the project's build; setuptools<81 for its pkg_resources).

    .venv/bin/python benchmarks/indexer_throughput.py --n 400 [--size 640x480] [--model ViT-B-32] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, random_checkpoint, timed_run, write_jpegs  # noqa: E402

CLIP_RETRIEVAL = "clip-retrieval==2.45.0"
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")


def ensure_clip_retrieval(venv: Path) -> Path:
    """The clip-retrieval executable in its own virtualenv (created and installed when absent)."""
    exe = venv / "bin" / "clip-retrieval"
    if exe.is_file():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *TORCH_PINS], check=True)  # first, so clip-retrieval cannot pull another torch
    subprocess.run([*pip, CLIP_RETRIEVAL, "setuptools<81"], check=True)
    return exe


def run_ours(images: Path, store: Path, model: str, ckpt: Path, batch: int, workers: int,
             image_backend: str = "auto", warm: bool = False) -> dict[str, Any]:
    """One run into a fresh store. Cold: an empty ONNX export cache, so the one-off export of a new encoder is
    part of the time; warm: the export the cold run left (every later run with that encoder)."""
    shutil.rmtree(store, ignore_errors=True)
    cache = store.parent / f"{store.name}-cache"
    if not warm:
        shutil.rmtree(cache, ignore_errors=True)
    seconds, done = timed_run([sys.executable, "-m", "indexer", "build", "--images", str(images), "--store",
                               str(store), "--model", model, "--pretrained", str(ckpt), "--device", "cpu",
                               "--batch-size", str(batch), "--workers", str(workers),
                               "--image-backend", image_backend], env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    report = json.loads(done.stdout)
    n = report["counts"]["encoded"]
    index_s = report["timings"].get("index_build", 0.0)
    return {"wall_s": round(seconds, 2), "images_per_s": round(n / seconds, 2),
            "images_per_s_without_index_build": round(n / (seconds - index_s), 2),
            "encoded": n, "failed": report["counts"].get("failed_this_run", 0), "stages_s": report["timings"]}


def run_clip_retrieval(exe: Path, images: Path, out: Path, model: str, ckpt: Path, batch: int,
                       workers: int) -> dict[str, Any]:
    import numpy as np

    shutil.rmtree(out, ignore_errors=True)
    seconds, _ = timed_run([str(exe), "inference", "--input_dataset", str(images), "--output_folder", str(out),
                            "--clip_model", f"open_clip:{model}/{ckpt.resolve()}", "--enable_text", "False",
                            "--enable_metadata", "False", "--use_jit", "False", "--batch_size", str(batch),
                            "--num_prepro_workers", str(workers)], env={**os.environ, "PYTHONWARNINGS": "ignore"})
    n = sum(np.load(p, mmap_mode="r").shape[0] for p in (out / "img_emb").glob("*.npy"))
    return {"wall_s": round(seconds, 2), "images_per_s": round(n / seconds, 2), "encoded": int(n)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of JPEG files")
    parser.add_argument("--size", default="640x480", help="image size WIDTHxHEIGHT (photo-like)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="decode workers (both tools)")
    parser.add_argument("--work", type=Path, default=OUT / "throughput")
    parser.add_argument("--skip-baseline", action="store_true", help="measure only our indexer")
    parser.add_argument("--ablation", action="store_true",
                        help="also run our pipeline with the eager torch image tower (where the gain comes from)")
    args = parser.parse_args()
    from indexer.lab.world import parse_size

    size = parse_size(args.size)
    images = write_jpegs(args.work / f"jpegs-{size[0]}x{size[1]}-{args.n}", args.n, size)
    ckpt = random_checkpoint(args.model, args.work / f"{args.model}-random.pt")
    result: dict[str, Any] = {"benchmark": "indexer_throughput", "machine": machine(), "images": args.n,
                              "image_size": args.size, "model": args.model, "weights": "seeded random init",
                              "batch_size": args.batch_size, "workers": args.workers}
    result["ours"] = run_ours(images, args.work / "store", args.model, ckpt, args.batch_size, args.workers)
    result["ours_warm"] = run_ours(images, args.work / "store", args.model, ckpt, args.batch_size, args.workers,
                                   warm=True)
    if args.ablation:
        result["ours_torch_tower"] = run_ours(images, args.work / "store", args.model, ckpt, args.batch_size,
                                              args.workers, image_backend="torch")
    if not args.skip_baseline:
        exe = ensure_clip_retrieval(OUT / "clip-retrieval-venv")
        result["clip_retrieval"] = run_clip_retrieval(exe, images, args.work / "clip-retrieval-out", args.model,
                                                      ckpt, args.batch_size, args.workers)
        base = result["clip_retrieval"]["images_per_s"]
        result["speedup_vs_clip_retrieval"] = round(result["ours"]["images_per_s"] / base, 2)
        result["speedup_vs_clip_retrieval_without_index_build"] = round(
            result["ours"]["images_per_s_without_index_build"] / base, 2)
        result["speedup_warm_vs_clip_retrieval"] = round(result["ours_warm"]["images_per_s"] / base, 2)
        result["target_speedup"] = 1.5
        if args.ablation:
            result["speedup_torch_tower_vs_clip_retrieval"] = round(
                result["ours_torch_tower"]["images_per_s"] / base, 2)
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
