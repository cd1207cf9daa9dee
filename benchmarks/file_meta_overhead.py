"""Cost of reading EXIF/IPTC/XMP in the decode worker, against decode + preprocess without it, same run.

Writes JPEGs from the synthetic world, each with an EXIF block (camera, date taken, orientation), an IPTC
APP13 segment and an XMP packet (the blocks a stock photo carries), then times `indexer.decode.decode_with`
over the same files with `read_meta=False` (baseline) and `read_meta=True`, back to back per file in alternating
order so load changes hit both alike; the median of each file's per-round times decides. Target: <= 5%.

    .venv/bin/python benchmarks/file_meta_overhead.py [--images 200] [--size 640x480] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _library(root: Path, n: int, size: tuple[int, int]) -> list[str]:
    import io

    from photo_files import XMP, exif_block, iptc_segment

    from indexer.lab import world

    paths = []
    for i in range(n):
        buf = io.BytesIO()
        world.gallery_item(0, i, size).image.save(buf, "JPEG", quality=90, exif=exif_block(1), xmp=XMP)
        data = buf.getvalue()
        data = data[:2] + iptc_segment([(120, b"caption %d" % i), (25, b"kw"), (116, b"(c) studio")]) + data[2:]
        path = root / f"img-{i:06d}.jpg"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def _measure(preprocess: Any, args: argparse.Namespace, size: tuple[int, int]) -> dict[str, Any]:
    from indexer.decode import decode_with

    side = 224
    with tempfile.TemporaryDirectory(prefix="file-meta-bench-") as tmp:
        paths = _library(Path(tmp), args.images, size)
        for p in paths[:5]:  # warm-up: imports, caches
            decode_with(p, preprocess, 10**9, side, True)
        times: dict[bool, list[list[float]]] = {False: [[] for _ in paths], True: [[] for _ in paths]}
        fields = 0
        for r in range(args.rounds):
            for i, p in enumerate(paths):  # both modes back to back per file: load changes hit both alike
                for read_meta in ((False, True) if (r + i) % 2 == 0 else (True, False)):
                    start = time.perf_counter()
                    out = decode_with(p, preprocess, 10**9, side, read_meta)
                    times[read_meta][i].append(time.perf_counter() - start)
                    fields += len(out.file_meta)
    base = sum(statistics.median(t) for t in times[False])
    meta = sum(statistics.median(t) for t in times[True])
    return {
        "size": f"{size[0]}x{size[1]}", "draft_side": side,
        "decode_ms_per_image_baseline": round(1000 * base / len(paths), 3),
        "decode_ms_per_image_with_metadata": round(1000 * meta / len(paths), 3),
        "added_ms_per_image": round(1000 * (meta - base) / len(paths), 3),
        "overhead": round(meta / base - 1, 4), "target_met": meta / base - 1 <= 0.05,
        "fields_read_per_image": round(fields / (args.rounds * len(paths)), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", action="append",
                        help="WxH, repeatable (default: 640x480 and a 6 MP photo, 3000x2000)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import torch

    from indexer.models.clip import load_encoder

    torch.set_num_threads(1)  # as in a decode worker
    torch.manual_seed(0)
    preprocess = load_encoder("tiny", "random", "cpu").preprocess
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.size or ["640x480", "3000x2000"]]
    result: dict[str, Any] = {"benchmark": "file_meta_overhead", "machine": machine(), "images": args.images,
                              "rounds": args.rounds, "target": 0.05,
                              "sizes": [_measure(preprocess, args, size) for size in sizes]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
