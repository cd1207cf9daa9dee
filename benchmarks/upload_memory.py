"""Peak and retained server RSS under N concurrent worst-case image uploads, over real HTTP against a real
`python -m search serve` (uvicorn). Worst case: flat RGBA PNGs just under the pixel limit (a few hundred kB
on the wire, ~280 MB each while decoding) mixed with huge JPEGs. Two servers in the same run: the guarded
configuration (decode_concurrency from config, malloc_trim on) and an unguarded baseline (every upload decoded
at once, no trim; by default only 8 uploads, since 64 unguarded 40 MP decodes need ~18 GB), so the result is
a ratio on the same machine. Target: guarded peak <= 1.5 GB above idle for
64 uploads, and RSS back near idle afterwards.

    .venv/bin/python benchmarks/upload_memory.py [--uploads 64] [--side 6300] [--baseline-uploads 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine  # noqa: E402

from search.settings import LimitSettings, TrafficSettings  # noqa: E402
from tests.service_support import running_server, settings_for, world_store  # noqa: E402
from tests.upload_support import big_jpeg, png_bomb, upload_burst  # noqa: E402

TARGET_MB = 1536


def _run(world: object, base: Path, name: str, limits: LimitSettings, payloads: list[tuple[str, bytes]]) -> dict:
    # every upload admitted: this measures decode memory with all of them waiting (shedding, which answers most
    # of them 503 at once under this burst, is benchmarks/upload_shedding.py's)
    settings = settings_for(world, limits=limits,  # type: ignore[arg-type]
                            traffic=TrafficSettings(deadline_ms=600_000, entry_shedding=False))
    with running_server(settings, base / f"{name}.json") as server:
        burst = upload_burst(server.url, server.proc.pid, payloads)
    return {"decode_concurrency": limits.decode_concurrency, "trim_after_pixels": limits.trim_after_pixels,
            "idle_mb": burst.idle_mb, "peak_mb": burst.peak_mb, "after_mb": burst.after_mb,
            "peak_above_idle_mb": round(burst.peak_above_idle_mb, 1),
            "after_above_idle_mb": round(burst.after_above_idle_mb, 1), "statuses": burst.statuses,
            "seconds": burst.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=64)
    parser.add_argument("--side", type=int, default=6300, help="PNG side (6300 = 39.7 MP, under the 40 MP limit)")
    parser.add_argument("--decode-concurrency", type=int, default=LimitSettings().decode_concurrency)
    parser.add_argument("--baseline-uploads", type=int, default=8,
                        help="uploads for the unguarded server (0: skip it); each costs ~side^2 x 7 bytes at once")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="upload-memory-"))
    world = world_store(base / "world")
    bomb, jpeg = png_bomb(args.side), big_jpeg(args.side)
    payloads = [("bomb.png", bomb) if i % 4 else ("big.jpg", jpeg) for i in range(args.uploads)]
    pixels = args.side * args.side + 1
    result: dict = {"benchmark": "upload_memory", "machine": machine(), "uploads": args.uploads, "side": args.side,
                    "png_bytes": len(bomb), "jpeg_bytes": len(jpeg), "target_peak_above_idle_mb": TARGET_MB}
    result["guarded"] = _run(world, base, "guarded", LimitSettings(
        max_upload_pixels=max(pixels, 40_000_000), decode_concurrency=args.decode_concurrency), payloads)
    if args.baseline_uploads:
        few = payloads[:args.baseline_uploads]
        result["guarded_same_count"] = _run(world, base, "guarded-few", LimitSettings(
            max_upload_pixels=max(pixels, 40_000_000), decode_concurrency=args.decode_concurrency), few)
        result["unguarded_same_count"] = _run(world, base, "unguarded", LimitSettings(
            max_upload_pixels=max(pixels, 40_000_000), decode_concurrency=len(few), trim_after_pixels=0), few)
        result["peak_ratio_unguarded_over_guarded"] = round(
            result["unguarded_same_count"]["peak_above_idle_mb"]
            / max(result["guarded_same_count"]["peak_above_idle_mb"], 1.0), 2)
    result["meets_target"] = result["guarded"]["peak_above_idle_mb"] <= TARGET_MB
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
