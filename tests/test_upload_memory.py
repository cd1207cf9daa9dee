"""Service area, bounded memory (CI size of benchmarks/upload_memory.py): sixteen concurrent uploads of
3000x3000 RGBA PNGs (~63 MB each while decoding) through a real uvicorn keep the server's peak RSS near
decode_concurrency x one decode, not sixteen, and hand the memory back afterwards."""

from __future__ import annotations

from search.settings import LimitSettings, TrafficSettings
from tests.service_support import running_server, settings_for
from tests.upload_support import big_jpeg, png_bomb, upload_burst

DECODE_MB = 3000 * 3000 * 7 / 2**20  # RGBA decode + its RGB conversion


def test_sixteen_concurrent_bomb_uploads_stay_bounded(world, tmp_path):
    # every upload admitted (no shedding: this measures the decode gate's memory bound with all sixteen
    # waiting; uploads shed past the deadline are tests/test_upload_shedding.py's)
    settings = settings_for(world, limits=LimitSettings(decode_concurrency=2, max_upload_pixels=10_000_000),
                            traffic=TrafficSettings(deadline_ms=600_000, entry_shedding=False))
    payloads = [("bomb.png", png_bomb(3000))] * 14 + [("big.jpg", big_jpeg(3000))] * 2
    with running_server(settings, tmp_path / "service.json") as server:
        burst = upload_burst(server.url, server.proc.pid, payloads)
    print(burst)
    assert burst.statuses == {200: 16}
    # two decodes at a time (+ preprocessing and allocator slack), far below the 16 x 63 MB an unbounded pool takes
    assert burst.peak_above_idle_mb < 3 * DECODE_MB + 100, burst
    assert burst.after_above_idle_mb < 100, burst  # malloc_trim handed the decode buffers back
