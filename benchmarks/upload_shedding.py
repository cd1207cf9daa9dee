"""Uploads under overload: N concurrent ~40 MP uploads (flat RGBA PNGs just under the pixel limit, every fourth
a big JPEG) over real HTTP against a real `python -m search serve`. With shedding (the default config: uploads
admitted before their decode, 503 + Retry-After when the decode + encode cannot start within
`traffic.deadline_ms`) every answer, 200 or 503, should come within the target; the baseline server in the same
run queues every upload (deadline 10 min, entry shedding off), which is how uploads behaved before they joined
load shedding. Peak server RSS (the kernel's VmHWM) is watched for both.

    .venv/bin/python benchmarks/upload_shedding.py [--uploads 32] [--side 6300] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine  # noqa: E402

from search.settings import LimitSettings, TrafficSettings  # noqa: E402
from tests.service_support import running_server, settings_for, world_store  # noqa: E402
from tests.upload_support import big_jpeg, png_bomb, upload_burst  # noqa: E402

TARGET_S = 5.0


def _run(world: object, base: Path, name: str, traffic: TrafficSettings, limits: LimitSettings,
         payloads: list[tuple[str, bytes]]) -> dict:
    settings = settings_for(world, traffic=traffic, limits=limits)  # type: ignore[arg-type]
    with running_server(settings, base / f"{name}.json") as server:
        burst = upload_burst(server.url, server.proc.pid, payloads)
    seconds = sorted(s for _, s in burst.answers)
    by_status: dict[str, float] = {}
    for status in sorted({st for st, _ in burst.answers}):
        by_status[f"max_s_{status}"] = round(max(s for st, s in burst.answers if st == status), 2)
    return {"deadline_ms": traffic.deadline_ms, "entry_shedding": traffic.entry_shedding,
            "statuses": burst.statuses, "answer_p50_s": round(statistics.median(seconds), 2),
            "answer_max_s": round(seconds[-1], 2), **by_status, "burst_s": burst.seconds,
            "idle_mb": burst.idle_mb, "peak_above_idle_mb": round(burst.peak_above_idle_mb, 1),
            "after_above_idle_mb": round(burst.after_above_idle_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=32)
    parser.add_argument("--side", type=int, default=6300, help="PNG side (6300 = 39.7 MP, under the 40 MP limit)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the queue-everything server")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="upload-shedding-"))
    world = world_store(base / "world")
    bomb, jpeg = png_bomb(args.side), big_jpeg(args.side)
    payloads = [("bomb.png", bomb) if i % 4 else ("big.jpg", jpeg) for i in range(args.uploads)]
    limits = LimitSettings(max_upload_pixels=max(args.side * args.side + 1, 40_000_000))
    result: dict = {"benchmark": "upload_shedding", "machine": machine(), "uploads": args.uploads,
                    "side": args.side, "target_every_answer_s": TARGET_S}
    result["shedding"] = _run(world, base, "shedding", TrafficSettings(), limits, payloads)
    if not args.no_baseline:
        queue_all = TrafficSettings(deadline_ms=600_000, entry_shedding=False)
        result["queue_everything"] = _run(world, base, "queue-all", queue_all, limits, payloads)
    result["meets_target"] = result["shedding"]["answer_max_s"] <= TARGET_S
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
