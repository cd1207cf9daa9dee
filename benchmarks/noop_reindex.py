"""No-op reindex cost: a full build of a small synthetic world vs an immediate rerun over the unchanged tree.

Both runs happen in this process with the same encoder (the real tiny CLIP, seeded random init), so the
ratio is against a same-run baseline. Prints one JSON object.

A real library is messier: `--broken 0.01 --non-utf8 0.01` truncates 1% of the files and renames another 1% to
names that are not valid UTF-8, and the result checks that indexed + failed == candidates in both runs.
Target (issue 11): at 100k files with those fractions, every candidate accounted for and no-op / full <= 0.02.
Stage lines with timestamps go to stderr while it runs (a long run shows how far it got).

    .venv/bin/python benchmarks/noop_reindex.py --images 300
    .venv/bin/python benchmarks/noop_reindex.py --images 100000 --size 16 --broken 0.01 --non-utf8 0.01
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
TARGET_RATIO = 0.02

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=300, help="gallery size")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--broken", type=float, default=0.0, help="fraction of files truncated (fail to decode)")
    parser.add_argument("--non-utf8", dest="non_utf8", type=float, default=0.0,
                        help="fraction of files renamed to a name that is not valid UTF-8")
    parser.add_argument("--cli", action="store_true",
                        help="also time `python -m indexer build` twice (process start, imports, model load)")
    args = parser.parse_args()

    import torch

    from indexer.lab.world import write_world
    from indexer.models.clip import load_encoder
    from indexer.run.pipeline import run_build
    from indexer.settings import load_settings

    settings = load_settings(overrides={"pretrained": "random", "device": args.device, "workers": args.workers,
                                        "batch_size": args.batch_size})
    with tempfile.TemporaryDirectory(prefix="noop-bench-") as tmp:
        _stage(f"writing {args.images} images of {args.size}px")
        write_world(Path(tmp) / "world", seed=0, gallery=args.images, size=(args.size, args.size))
        images, store = Path(tmp) / "world" / "gallery", Path(tmp) / "store"
        damage = _damage(images, args.broken, args.non_utf8)
        _stage(f"library ready ({damage}); full run starts")
        start = time.perf_counter()
        torch.manual_seed(0)
        encoder = load_encoder(settings.model, settings.pretrained, settings.device)
        load_s = time.perf_counter() - start
        full, full_s = _timed(lambda: run_build(images, store, settings, encoder))
        _stage(f"full run {full_s:.1f} s {_counts(full)}; no-op run starts")
        noop, noop_s = _timed(lambda: run_build(images, store, settings, encoder))
        _stage(f"no-op run {noop_s:.1f} s {_counts(noop)}")
        cli = _cli_runs(images, Path(tmp) / "cli-store", args) if args.cli else {}
    accounted = all(r["counts"]["indexed"] + r["counts"]["failed"] == r["counts"]["candidates"] for r in (full, noop))
    result = {
        "benchmark": "noop_reindex",
        "images": args.images,
        "image_size": args.size,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "device": str(encoder.device),
        "encoder_load_s": round(load_s, 3),
        "full_run_s": round(full_s, 3),
        "noop_run_s": round(noop_s, 3),
        "ratio": round(noop_s / full_s, 4),
        "target_ratio": TARGET_RATIO,
        "target_met": accounted and noop_s / full_s <= TARGET_RATIO,
        **_counts(full),
        "ratio_including_encoder_load": round((noop_s + load_s) / (full_s + load_s), 4),
        "full_encoded": full["counts"]["encoded"],
        "noop_encoded": noop["counts"]["encoded"],
        "noop_published": noop["published"],
        **damage,
        "noop_counts": _counts(noop),
        "accounted_for": accounted,
        **cli,
        "full_timings": full["timings"],
        "noop_timings": noop["timings"],
    }
    print(json.dumps(result, indent=2))
    return 0


def _stage(text: str) -> None:
    import os

    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {text}", file=sys.stderr, flush=True)


def _counts(report: dict[str, Any]) -> dict[str, int]:
    return {k: int(report["counts"][k]) for k in ("candidates", "indexed", "failed")}


def _cli_runs(images: Path, store: Path, args: argparse.Namespace) -> dict[str, float]:
    """Full and no-op runs as a user runs them: the no-op never loads the model (LazyEncoder)."""
    import subprocess

    cmd = [sys.executable, "-m", "indexer", "build", "--images", str(images), "--store", str(store),
           "--pretrained", "random", "--device", args.device, "--workers", str(args.workers),
           "--batch-size", str(args.batch_size)]
    root = Path(__file__).resolve().parents[1]
    times = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"cli_full_run_s": round(times[0], 3), "cli_noop_run_s": round(times[1], 3),
            "cli_ratio": round(times[1] / times[0], 4)}


def _damage(images: Path, broken: float, non_utf8: float) -> dict[str, int]:
    """Truncate every 1/broken-th file and rename every 1/non_utf8-th (offset so they differ)."""
    import os

    files = sorted(p for p in images.rglob("img-*") if p.is_file())
    hit_broken = files[:: max(1, round(1 / broken))] if broken > 0 else []
    hit_names = files[1:: max(1, round(1 / non_utf8))] if non_utf8 > 0 else []
    for path in hit_broken:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    for path in hit_names:
        raw = os.fsencode(path)
        os.rename(raw, raw.replace(b"img-", b"img-\xe9\xff-"))
    return {"broken_files": len(hit_broken), "non_utf8_names": len(hit_names)}


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
