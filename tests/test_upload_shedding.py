"""Uploads join load shedding: with the real tiny image tower (or a decode) held busy, an upload whose decode +
encode cannot start within `traffic.deadline_ms` is answered 503 + Retry-After at once, never queued behind the
busy one; the held upload still answers 200 once released."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from search.http.app import create_app
from search.settings import LimitSettings, TrafficSettings
from tests.admission_support import FixedCost
from tests.service_support import runtime_for, settings_for

WAIT_S = 60.0  # bounds the test if the code under test hangs; never a threshold on its speed


def _png(side: int = 64) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side), (30, 140, 60)).save(out, format="PNG")
    return out.getvalue()


class Held:
    """Wraps a function so its first call blocks (in its worker thread) until `release()`; the rest pass."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.entered = threading.Event()
        self.released = threading.Event()
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.released.wait(WAIT_S)
        return self.fn(*args)

    def release(self) -> None:
        self.released.set()


async def _two_uploads(app: Any, held: Held) -> tuple[httpx.Response, httpx.Response]:
    """The first upload is held inside; the second arrives while it is."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=WAIT_S) as http:
            upload = {"file": ("x.png", _png(), "image/png")}
            first = asyncio.create_task(http.post("/search/image", files=upload))
            assert await asyncio.to_thread(held.entered.wait, WAIT_S)
            try:
                second = await http.post("/search/image", files=upload)
            finally:
                held.release()
            return await first, second


@pytest.mark.parametrize("entry_shedding", [True, False])
def test_an_upload_behind_a_busy_image_tower_is_503_at_once(world, monkeypatch, entry_shedding):
    """The image tower holds one upload; the admission (predicting 150 ms per upload against a 200 ms deadline)
    refuses the next at the door, or, with entry shedding off, at the admission before its decode."""
    settings = settings_for(world, traffic=TrafficSettings(deadline_ms=200, entry_shedding=entry_shedding))
    app = create_app(settings, encoder=runtime_for(world))
    app.state.uploads.admission.cost = FixedCost(0.15)
    image = runtime_for(world).image
    held = Held(image.encode_pixels)
    monkeypatch.setattr(image, "encode_pixels", held)
    first, second = asyncio.run(_two_uploads(app, held))
    assert second.status_code == 503 and int(second.headers["retry-after"]) >= 1, second.text
    assert "queue" in second.json()["error"]
    assert first.status_code == 200 and first.json()["hits"]
    assert held.calls == 1  # the refused upload never reached the encoder


def test_an_upload_whose_decode_cannot_start_within_the_deadline_is_503(world, monkeypatch):
    """One decode slot, held by the first upload: the second is admitted (its predicted cost is tiny) but no
    slot comes free within the deadline, so it is answered 503 + Retry-After instead of waiting its turn. (Entry
    shedding off: its event-loop lag term could refuse the upload at the door first on a loaded machine.)"""
    settings = settings_for(world, traffic=TrafficSettings(deadline_ms=200, entry_shedding=False),
                            limits=LimitSettings(decode_concurrency=1))
    app = create_app(settings, encoder=runtime_for(world))
    app.state.uploads.admission.cost = FixedCost(0.001)
    runtime = runtime_for(world)
    held = Held(runtime.preprocess)
    monkeypatch.setattr(runtime, "preprocess", held)
    first, second = asyncio.run(_two_uploads(app, held))
    assert second.status_code == 503 and int(second.headers["retry-after"]) >= 1, second.text
    assert "decode slot" in second.json()["error"]
    assert first.status_code == 200
    assert held.calls == 1 and app.state.uploads.gate.peak == 1
