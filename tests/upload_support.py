"""Worst-case upload payloads and the server-side RSS they cost, shared by tests/test_upload_memory.py (CI
size) and benchmarks/upload_memory.py (the 64-upload target). Real HTTP against a real uvicorn process; peak
RSS is the kernel's own high-water mark (VmHWM, reset through /proc/PID/clear_refs before the burst), so no
sampling can miss a spike."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

__all__ = ["png_bomb", "big_jpeg", "UploadBurst", "upload_burst"]


def png_bomb(side: int) -> bytes:
    """A flat RGBA PNG of side x side: a few hundred kB that decode to 4 bytes per pixel."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGBA", (side, side), (90, 120, 200, 255)).save(out, format="PNG", optimize=False)
    return out.getvalue()


def big_jpeg(side: int) -> bytes:
    """A flat JPEG of side x side (decoded through draft mode at a fraction of its size)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 120, 90)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@dataclass
class UploadBurst:
    idle_mb: float
    peak_mb: float
    after_mb: float
    statuses: dict[int, int]
    seconds: float
    answers: list[tuple[int, float]] = field(default_factory=list)  # (status, seconds to answer) per upload

    @property
    def peak_above_idle_mb(self) -> float:
        return self.peak_mb - self.idle_mb

    @property
    def after_above_idle_mb(self) -> float:
        return self.after_mb - self.idle_mb


async def _burst(url: str, payloads: list[tuple[str, bytes]]) -> list[tuple[int, float]]:
    limits = httpx.Limits(max_connections=len(payloads), max_keepalive_connections=len(payloads))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        async def one(name: str, data: bytes) -> tuple[int, float]:
            start = time.perf_counter()
            r = await http.post("/search/image", files={"file": (name, data, "application/octet-stream")})
            return r.status_code, time.perf_counter() - start

        return list(await asyncio.gather(*(one(name, data) for name, data in payloads)))


def upload_burst(url: str, pid: int, payloads: list[tuple[str, bytes]]) -> UploadBurst:
    """All `payloads` uploaded at once; the server's RSS before, at its peak, and right after."""
    asyncio.run(_burst(url, payloads[:2]))  # warm: sessions, arenas and threads exist before the baseline
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    idle = psutil.Process(pid).memory_info().rss / 2**20
    start = time.perf_counter()
    answers = asyncio.run(_burst(url, payloads))
    seconds = time.perf_counter() - start
    peak = _status_kb(pid, "VmHWM") / 1024
    after = psutil.Process(pid).memory_info().rss / 2**20
    counts: dict[int, int] = {}
    for status, _ in answers:
        counts[status] = counts.get(status, 0) + 1
    return UploadBurst(round(idle, 1), round(peak, 1), round(after, 1), counts, round(seconds, 2), answers)
