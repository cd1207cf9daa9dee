"""Immediate takedown end to end: the indexer CLI or POST /admin/takedown hides an image from search, similar,
image and thumbnail on the next takedown check of a running service (no reindex); restore shows it again; a
later publish carries the list into its version. Also serves a file whose name is not UTF-8 by id."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from indexer.cli import main as indexer_main
from search.artifact.takedown import TAKEDOWN_FILE, apply_takedowns, read_takedowns
from search.http.app import create_app
from search.settings import ReloadSettings, Settings
from tests.indexer_support import draw, rows, run, status

NON_UTF8 = b"caf\xe9.png"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("takedown")
    images, store = base / "images", base / "store"
    for i in range(6):
        draw(images / f"img{i}.png", seed=500 + i, size=(40, 30))
    draw(Path(os.fsdecode(os.fsencode(images) + b"/" + NON_UTF8)), seed=599, size=(40, 30))
    run(images, store)
    # no model settings: the service runs the encoder the published version carries
    settings = Settings(store=store, reload=ReloadSettings(watch=True, poll_s=0.2, takedown_check_s=0.1))
    app = create_app(settings)
    with TestClient(app, base_url="http://localhost", client=("127.0.0.1", 5000)) as client:
        yield images, store, client, app


@pytest.fixture(autouse=True)
def no_takedowns_left(served):
    """Each test starts with nothing taken down: the store and service are shared by the module, and a test
    that leaves an image down (the carried-into-later-versions one does) must not change what another sees."""
    _, store, client, _ = served
    active = read_takedowns(store / TAKEDOWN_FILE)["active"]
    if active:
        apply_takedowns(store, [(int(k), v.get("path")) for k, v in active.items()], "test isolation", restore=True)
        ids = [int(k) for k in active]
        _wait_for(lambda: all(client.get(f"/images/{i}").status_code == 200 for i in ids))
    yield


def _visible(client: TestClient, image_id: int) -> dict[str, bool]:
    found = client.get("/search", params={"q": "a photo", "k": 100}).json()["hits"]
    return {"image": client.get(f"/images/{image_id}").status_code == 200,
            "thumb": client.get(f"/images/{image_id}", params={"thumb": 1}).status_code == 200,
            "similar": client.get(f"/search/similar/{image_id}").status_code == 200,
            "search": image_id in {h["id"] for h in found}}


def _wait_for(predicate, timeout_s: float = 30.0) -> None:
    """Poll the service until predicate() holds; the deadline only bounds a failure (how fast a takedown
    applies is the reader's check interval, takedown_check_s, not a figure a unit test measures)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "not applied within the deadline"


def test_non_utf8_name_is_served_by_id(served) -> None:
    images, store, client, _ = served
    image_id = rows(store)["caf\\xe9.png"]["id"]
    r = client.get(f"/images/{image_id}")
    assert r.status_code == 200 and r.content == (Path(os.fsdecode(os.fsencode(images) + b"/" + NON_UTF8))).read_bytes()
    hits = client.get("/search", params={"q": "a photo", "k": 100}).json()["hits"]
    assert "caf\\xe9.png" in {h["path"] for h in hits}


def test_cli_takedown_hides_everywhere_and_restore_shows_again(served) -> None:
    _, store, client, _ = served
    image_id = rows(store)["img1.png"]["id"]
    other = rows(store)["img2.png"]["id"]
    assert all(_visible(client, image_id).values())
    assert indexer_main(["takedown", "--store", str(store), "img1.png", "--reason", "licence expired"]) == 0
    _wait_for(lambda: not any(_visible(client, image_id).values()))
    assert all(_visible(client, other).values())  # only the one taken down is hidden
    similar = client.get(f"/search/similar/{other}", params={"k": 100}).json()["hits"]
    assert image_id not in {h["id"] for h in similar}
    listed = status(store)["takedowns"]
    assert [(t["id"], t["path"], t["reason"]) for t in listed] == [(image_id, "img1.png", "licence expired")]
    assert indexer_main(["restore", "--store", str(store), str(image_id), "--reason", "renewed"]) == 0
    _wait_for(lambda: all(_visible(client, image_id).values()))
    assert status(store)["takedowns"] == []


def test_admin_takedown_endpoint_and_its_auth(served) -> None:
    _, store, client, app = served
    image_id = rows(store)["img3.png"]["id"]
    r = client.post("/admin/takedown", json={"paths": ["img3.png"], "reason": "DMCA"})
    assert r.status_code == 200 and r.json()["ids"] == [image_id] and r.json()["active"] == 1
    assert client.get(f"/images/{image_id}").status_code == 404  # this replica: immediately
    assert client.post("/admin/takedown", json={"ids": [999999], "reason": "x"}).status_code == 404
    assert client.post("/admin/takedown", json={"ids": [image_id]}).status_code == 422
    # no `with`: shares the running app's state
    remote = TestClient(app, base_url="http://localhost", client=("10.1.2.3", 5000))
    assert remote.post("/admin/takedown", json={"ids": [image_id], "reason": "x"}).status_code == 403
    r = client.post("/admin/takedown", json={"ids": [image_id], "reason": "cleared", "restore": True})
    assert r.status_code == 200 and r.json()["active"] == 0
    assert client.get(f"/images/{image_id}").status_code == 200


def test_takedowns_are_carried_into_later_versions(served) -> None:
    images, store, client, _ = served
    image_id = rows(store)["img4.png"]["id"]
    assert indexer_main(["takedown", "--store", str(store), str(image_id), "--reason", "withdrawn"]) == 0
    draw(images / "img9.png", seed=509, size=(40, 30))
    report = run(images, store)
    assert report["published"]
    carried = (store / "versions" / report["version"] / "takedowns.json").read_text()
    assert f'"{image_id}"' in carried
    _wait_for(lambda: client.get("/readyz").json()["version"] == report["version"], timeout_s=10)
    assert client.get(f"/images/{image_id}").status_code == 404
