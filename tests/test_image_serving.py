"""`GET /images/{id}` serves only what the current version indexes: the version's metadata snapshot copies the
whole store database, so a file that failed to decode (recorded with its reason, in no index) has a row there
and, its file still on disk, was served by id. It and a taken-down id answer 404 with the API's JSON error body,
as similar-by-id does (one rule: search.artifact.images.served_row)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from search.http.app import create_app
from search.settings import ReloadSettings, Settings
from tests.indexer_support import current_ids, draw, rows, run

BROKEN = b"\x89PNG\r\n\x1a\n" + b"not an image at all" * 20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, TestClient]]:
    base = tmp_path_factory.mktemp("image-serving")
    images, store = base / "images", base / "store"
    for i in range(4):
        draw(images / f"img{i}.png", seed=700 + i, size=(40, 30))
    (images / "broken.png").write_bytes(BROKEN)
    run(images, store)
    settings = Settings(store=store, reload=ReloadSettings(watch=False))
    with TestClient(create_app(settings), base_url="http://localhost", client=("127.0.0.1", 5000)) as client:
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
