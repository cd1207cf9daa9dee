"""Cost of reading EXIF/IPTC/XMP in the decode worker, against decode + preprocess without it, same run.

Per size, writes JPEGs (synthetic-world pictures scaled to the size, with grain so that they compress like
photos) carrying the blocks a stock photo carries: a camera's EXIF
(~25 Exif sub-IFD entries with a MakerNote, date taken, orientation), an IPTC APP13 segment (caption, 15
keywords, copyright, byline) and a Lightroom-shaped XMP packet (~5 KB with its padding). Then times
`indexer.ingest.decode.decode_with` over the same files with `read_meta=False` (baseline) and `read_meta=True`,
back to back per file in alternating order so load changes hit both alike; the median of each file's per-round
times decides. Target: <= 5%.

The process is set up as a decode worker is (`indexer.ingest.decode.settle_decode_process`: one torch thread, the
import-time objects frozen out of the garbage collector); `--no-gc-freeze` measures without the freeze.
Decoding uses JPEG draft mode to the encoder's side (224), as the indexer does, so decode cost grows far
less than the pixel count; metadata cost does not grow with it at all. Fewer files are used at larger sizes
(`--images` scaled by 1/sqrt(pixels), at least 16) to keep the run under two minutes.

    .venv/bin/python benchmarks/file_meta_overhead.py [--images 200] [--size 640x480 ...] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

DEFAULT_SIZES = ["640x480", "1920x1080", "4000x3000"]
DRAFT_SIDE = 224
DISTINCT_PICTURES = 8  # files share these pixels (world pictures rendered at 640x480, scaled, with grain)


def _library(root: Path, n: int, size: tuple[int, int], light: bool = False) -> list[str]:
    import numpy as np
    from photo_files import STOCK_XMP, XMP, camera_exif_block, exif_block, iptc_segment
    from PIL import Image

    from indexer.lab import world

    keywords = [(25, b"kw")] if light else [(25, b"keyword %d" % k) for k in range(15)]
    exif, xmp = (exif_block(1), XMP) if light else (camera_exif_block(size), STOCK_XMP)
    rng = np.random.default_rng(0)
    pictures = []
    for i in range(min(n, DISTINCT_PICTURES)):
        picture = world.gallery_item(0, i, (640, 480)).image.resize(size, Image.Resampling.BICUBIC)
        grain = rng.normal(0, 6, (size[1], size[0], 1)).astype(np.float32)  # texture: photo-like JPEG sizes
        picture = Image.fromarray(np.clip(np.asarray(picture, np.float32) + grain, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        picture.save(buf, "JPEG", quality=90, exif=exif, xmp=xmp)
        pictures.append(buf.getvalue())
    paths = []
    for i in range(n):
        data = pictures[i % len(pictures)]
        extra = [] if light else [(105, b"headline"), (80, b"Jane Doe")]
        iptc = iptc_segment([(120, b"caption %d" % i), *keywords, (116, b"(c) studio"), *extra])
        path = root / f"img-{i:06d}.jpg"
        path.write_bytes(data[:2] + iptc + data[2:])
        paths.append(str(path))
    return paths


def _files_for(size: tuple[int, int], images: int) -> int:
    return max(16, round(images * math.sqrt(640 * 480 / (size[0] * size[1]))))


def _measure(preprocess: Any, size: tuple[int, int], images: int, rounds: int, light: bool) -> dict[str, Any]:
    from indexer.ingest.decode import decode_with

    n = _files_for(size, images)
    with tempfile.TemporaryDirectory(prefix="file-meta-bench-") as tmp:
        paths = _library(Path(tmp), n, size, light)
        for p in paths[:3]:  # warm-up: imports, caches
            decode_with(p, preprocess, 10**9, DRAFT_SIDE, True)
        times: dict[bool, list[list[float]]] = {False: [[] for _ in paths], True: [[] for _ in paths]}
        fields = 0
        for r in range(rounds):
            for i, p in enumerate(paths):  # both modes back to back per file: load changes hit both alike
                for read_meta in ((False, True) if (r + i) % 2 == 0 else (True, False)):
                    start = time.perf_counter()
                    out = decode_with(p, preprocess, 10**9, DRAFT_SIDE, read_meta)
                    times[read_meta][i].append(time.perf_counter() - start)
                    fields += len(out.file_meta)
                    if not out.ok:
                        raise RuntimeError(f"{p}: {out.reason}")
    base = sum(statistics.median(t) for t in times[False])
    meta = sum(statistics.median(t) for t in times[True])
    return {
        "size": f"{size[0]}x{size[1]}", "files": n, "draft_side": DRAFT_SIDE,
        "decode_ms_per_image_baseline": round(1000 * base / n, 3),
        "decode_ms_per_image_with_metadata": round(1000 * meta / n, 3),
        "added_ms_per_image": round(1000 * (meta - base) / n, 3),
        "overhead": round(meta / base - 1, 4), "target_met": meta / base - 1 <= 0.05,
        "fields_read_per_image": round(fields / (2 * rounds * n), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="files at 640x480; fewer at larger sizes")
    parser.add_argument("--size", action="append", help=f"WxH, repeatable (default: {' '.join(DEFAULT_SIZES)})")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--light", action="store_true",
                        help="the first version's light blocks: 2-entry Exif sub-IFD, 0.7 KB XMP, 3 IPTC datasets")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="one torch thread as in a worker, but no gc.freeze (shows what the freeze buys)")
    args = parser.parse_args()
    import torch

    from indexer.models.clip import load_encoder

    torch.manual_seed(0)
    preprocess = load_encoder("tiny", "random", "cpu").preprocess
    if args.no_gc_freeze:
        torch.set_num_threads(1)
    else:
        from indexer.ingest.decode import settle_decode_process

        settle_decode_process()  # exactly what each decode worker does after its imports
    sizes = [(int(w), int(h)) for w, h in (s.split("x") for s in args.size or DEFAULT_SIZES)]
    started = time.perf_counter()
    measured = [_measure(preprocess, size, args.images, args.rounds, args.light) for size in sizes]
    result: dict[str, Any] = {
        "benchmark": "file_meta_overhead", "machine": machine(), "rounds": args.rounds, "target": 0.05,
        "gc_freeze": not args.no_gc_freeze, "blocks": "light" if args.light else "stock", "sizes": measured,
        "target_met_at": [m["size"] for m in measured if m["target_met"]],
        "seconds": round(time.perf_counter() - started, 1), "load_average_1m_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
