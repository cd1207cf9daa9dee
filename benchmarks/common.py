"""Shared by this folder's benchmark scripts: the machine description, JPEG folders from the synthetic world,
a seeded random-init checkpoint file, timing of a subprocess. Each script prints one JSON object."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"  # git-ignored
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> dict[str, Any]:
    """What the numbers were measured on (run_all puts this above the summary table)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "platform": platform.platform()}


def _write_one(args: tuple[int, str, tuple[int, int], int]) -> None:
    from indexer.lab import world

    index, root, size, seed = args
    item = world.gallery_item(seed, index, size)
    item.image.save(Path(root) / f"img-{index:06d}.jpg", format="JPEG", quality=90)


def write_jpegs(root: Path, n: int, size: tuple[int, int], seed: int = 0, workers: int | None = None) -> Path:
    """N synthetic-world images as JPEG files in one flat folder (reused when already complete)."""
    root.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(n) if not (root / f"img-{i:06d}.jpg").is_file()]
    if todo:
        with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
            list(pool.map(_write_one, [(i, str(root), size, seed) for i in todo], chunksize=16))
    return root


def random_checkpoint(model: str, path: Path) -> Path:
    """A seeded random-init open_clip checkpoint file (speed does not depend on the weights' values)."""
    if not path.is_file():
        import open_clip
        import torch

        from indexer.models import registry

        registry.register_project_models()
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(open_clip.create_model(model).state_dict(), path)
    return path


def timed_run(cmd: Sequence[str], cwd: Path = ROOT, env: dict[str, str] | None = None,
              timeout_s: float | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of a subprocess; a non-zero exit is an error carrying the tail of its output."""
    start = time.perf_counter()
    done = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds, done


def latency_ms(fn: Callable[[], object], runs: int, warmup: int = 5) -> dict[str, float]:
    """p50 and p95 wall time of `fn` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 3),
            "p95_ms": round(samples[min(len(samples) - 1, int(0.95 * len(samples)))], 3)}


async def drive(batcher: Any, texts: list[str], concurrency: int) -> dict[str, float]:
    """Encode `texts` through `batcher.encode` with at most `concurrency` in flight: QPS and latency p50/p99."""
    import asyncio

    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(q: str) -> None:
        async with sem:
            start = time.perf_counter()
            await batcher.encode(q)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(one(q) for q in texts))
    seconds = time.perf_counter() - start
    latencies.sort()
    return {"qps": round(len(texts) / seconds, 1), "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 3)}


def report_json(name: str, result: dict[str, Any]) -> None:
    """Print a benchmark's JSON and keep it as benchmarks/out/NAME.json (the file summary.py and the docs read)."""
    text = json.dumps(result, indent=2)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(text)
    print(text)
