"""Unit costs behind the indexer's image path, each against a same-run baseline: the image tower through eager
torch vs ONNX Runtime at several batch sizes (with the max deviation from torch), and JPEG decode + preprocess
at full resolution vs Pillow draft (DCT-scaled) decoding. Prints one JSON object.

    .venv/bin/python benchmarks/image_units.py [--model ViT-B-32 --model tiny] [--images 96] [--size 640x480]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, write_jpegs  # noqa: E402


def _rate(fn: Callable[[np.ndarray], Any], pixels: np.ndarray, batch: int) -> float:
    """Images per second encoding `pixels` in chunks of `batch` (after one warm-up chunk)."""
    fn(pixels[:batch])
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        fn(pixels[i:i + batch])
    return round(len(pixels) / (time.perf_counter() - start), 2)


def tower(model: str, n: int) -> dict[str, Any]:
    import torch

    from indexer.models.clip import load_encoder
    from indexer.models.towers import onnx_image_encoder

    torch.manual_seed(0)
    encoder = load_encoder(model, "random", "cpu")
    side = encoder.model.visual.image_size
    side = side if isinstance(side, int) else side[0]
    pixels = np.random.default_rng(0).standard_normal((n, 3, side, side)).astype(np.float32)
    with tempfile.TemporaryDirectory() as cache:
        onnx = onnx_image_encoder(encoder, Path(cache), micro_batch=n)
        torch_rates = {b: _rate(encoder.encode_pixels, pixels, b) for b in (16, 64)}
        onnx_rates = {b: _rate(onnx.encode_pixels, pixels, b) for b in (1, 4, 8, 16, 64)}
        diff = float(np.abs(onnx.encode_pixels(pixels[:8]) - encoder.encode_pixels(pixels[:8])).max())
    best_torch = max(torch_rates.values())
    return {"model": model, "input_side": side, "torch_images_per_s": torch_rates,
            "onnx_images_per_s": onnx_rates, "onnx_max_abs_diff": diff,
            "onnx_batch_8_vs_best_torch": round(onnx_rates[8] / best_torch, 2)}


def decode(n: int, size: tuple[int, int], draft_side: int) -> dict[str, Any]:
    import open_clip

    from indexer.ingest.decode import decode_with

    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    files = sorted(write_jpegs(OUT / "units" / f"jpegs-{size[0]}x{size[1]}-{n}", n, size).glob("*.jpg"))

    def per_image_ms(side: int | None) -> float:
        decode_with(str(files[0]), preprocess, 89_478_485, side)
        start = time.perf_counter()
        for f in files:
            decode_with(str(f), preprocess, 89_478_485, side)
        return round((time.perf_counter() - start) * 1000.0 / len(files), 2)

    full, draft = per_image_ms(None), per_image_ms(draft_side)
    return {"images": n, "size": f"{size[0]}x{size[1]}", "draft_side": draft_side, "full_decode_ms": full,
            "draft_decode_ms": draft, "speedup": round(full / draft, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="open_clip model or 'tiny' (repeatable)")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", default="640x480")
    args = parser.parse_args()
    from indexer.lab.world import parse_size

    result = {"benchmark": "image_units", "machine": machine(),
              "towers": {m: tower(m, args.images) for m in (args.model or ["ViT-B-32", "tiny"])},
              "decode": decode(args.images, parse_size(args.size), 224)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
