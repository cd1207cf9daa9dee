"""`GET /images/{id}` serves only what the current version indexes: the version's metadata snapshot copies the
whole store database, so a file that failed to decode (recorded with its reason, in no index) has a row there
and, its file still on disk, was served by id. It and a taken-down id answer 404 with the API's JSON error body,
as similar-by-id does (one rule: search.artifact.images.served_mask); the same through a fleet ingress (the
service's app with remote parts)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from search.artifact.version import open_current
from search.fleet.fanout import RemoteShard, ShardTiming, fan_out
from search.fleet.parts import ShardServer
from search.fleet.pinning import CallTag
from search.http.app import create_app
from search.query.shard import ShardQuery
from search.runtime.towers import RuntimeEncoder, RuntimeOptions
from search.settings import ReloadSettings, Settings
from search.state import RemoteParts
from tests.fleet_support import Done
from tests.indexer_support import current_ids, draw, rows, run

BROKEN = b"\x89PNG\r\n\x1a\n" + b"not an image at all" * 20


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four images and one file of broken bytes, indexed by the indexer's own run (the tiny encoder)."""
    base = tmp_path_factory.mktemp("image-serving")
    images, store = base / "images", base / "store"
    for i in range(4):
        draw(images / f"img{i}.png", seed=700 + i, size=(40, 30))
    (images / "broken.png").write_bytes(BROKEN)
    run(images, store)
    return images, store


def _in_process_fleet(settings: Settings) -> RemoteParts:
    """A fleet ingress's remote parts run in this process: the store's text and image towers and its one
    shard's ShardServer (the fleet's routes are the service's own: create_app with these injected)."""
    assert settings.store is not None
    with open_current(settings.store) as artifact:
        assert artifact.encoder_bundle is not None
        encoder = RuntimeEncoder.load(artifact.encoder_bundle, RuntimeOptions(text_precision="fp32"))
    server = ShardServer(settings, 0)

    async def text(query: str, phase: str, language: str | None = None) -> np.ndarray:
        return np.asarray(encoder.text.encode([query])[0], np.float32)

    async def pixels(values: np.ndarray) -> np.ndarray:
        return np.asarray(encoder.image.encode_pixels(values[None])[0], np.float32)

    def call(version_dir: str, vectors: np.ndarray, asks: Sequence[ShardQuery], hidden: frozenset[int],
             tag: CallTag) -> Done:  # tag: read only by Serve's shard router, which is not in the path here
        return Done(server.search(version_dir, vectors, asks, hidden))

    return RemoteParts(text, pixels, lambda artifact, hidden: fan_out([RemoteShard("Shard0", call)],
                                                                      str(artifact.path), hidden,
                                                                      ShardTiming(30.0, 30.0)))


@pytest.fixture(scope="module", params=["service", "fleet ingress"])
def served(request: pytest.FixtureRequest, built: tuple[Path, Path]) -> Iterator[tuple[Path, Path, TestClient]]:
    images, store = built
    settings = Settings(store=store, reload=ReloadSettings(watch=False))
    remote = _in_process_fleet(settings) if request.param == "fleet ingress" else None
    with TestClient(create_app(settings, remote=remote), base_url="http://localhost",
                    client=("127.0.0.1", 5000)) as client:
        yield images, store, client


def _assert_json_404(response: Any, image_id: int) -> None:
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert str(image_id) in body["error"] and "request_id" in body


def test_a_file_that_failed_to_decode_is_not_served_by_id(served: tuple[Path, Path, TestClient]) -> None:
    images, store, client = served
    broken = rows(store)["broken.png"]
    assert broken["status"] == "failed" and broken["reason"]  # recorded with its reason ...
    assert broken["id"] not in set(current_ids(store).tolist())  # ... in no index of the version
    for params in ({}, {"thumb": 1}):
        _assert_json_404(client.get(f"/images/{broken['id']}", params=params), broken["id"])
    _assert_json_404(client.get(f"/search/similar/{broken['id']}"), broken["id"])
    indexed = rows(store)["img0.png"]["id"]
    full = client.get(f"/images/{indexed}")
    assert full.status_code == 200 and full.content == (images / "img0.png").read_bytes()
    assert client.get(f"/images/{indexed}", params={"thumb": 1}).status_code == 200


def test_a_taken_down_id_is_not_served_and_a_restored_one_is_again(served: tuple[Path, Path, TestClient]) -> None:
    _, store, client = served
    image_id = rows(store)["img1.png"]["id"]
    assert client.get(f"/images/{image_id}", params={"thumb": 1}).status_code == 200  # thumbnail now cached
    assert client.post("/admin/takedown", json={"ids": [image_id], "reason": "test"}).status_code == 200
    for params in ({}, {"thumb": 1}):
        _assert_json_404(client.get(f"/images/{image_id}", params=params), image_id)
    _assert_json_404(client.get(f"/search/similar/{image_id}"), image_id)
    r = client.post("/admin/takedown", json={"ids": [image_id], "reason": "cleared", "restore": True})
    assert r.status_code == 200
    assert client.get(f"/images/{image_id}").status_code == 200
    assert client.get(f"/search/similar/{image_id}").status_code == 200
