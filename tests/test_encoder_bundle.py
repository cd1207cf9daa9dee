"""A published version carries its encoder: exported once per encoder and shared by later versions, verified
before the version opens, refused with its reason (the old version serving on) when missing, truncated or
not the manifest's encoder."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from search.artifact.bundle import ENCODERS_DIR, IMAGE_FILE, SPEC_FILE, TEXT_FILE, TOKENIZER_FILE
from search.artifact.encoder import file_sha256
from search.artifact.version import open_current
from search.http.app import create_app
from tests.indexer_support import make_tree, run
from tests.service_support import copy_store, encoder_for, publish, settings_for


def _model_files(store: Path) -> dict[str, tuple[int, int]]:
    """Every file under STORE/encoders: (inode, mtime) by relative path."""
    return {str(p.relative_to(store)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (store / ENCODERS_DIR).rglob("*") if p.is_file()}


def test_unchanged_encoder_is_exported_once_and_shared_by_later_versions(tmp_path):
    images, store = tmp_path / "images", tmp_path / "store"
    make_tree(images, 6)
    first = run(images, store)
    exported = _model_files(store)
    assert {Path(p).name for p in exported} >= {TEXT_FILE, IMAGE_FILE, SPEC_FILE, "tokenizer.json"}
    v1 = open_current(store).manifest
    assert run(images, store)["version"] == first["version"]  # no-op run: nothing published, nothing written
    make_tree(images, 2, start=6)
    second = run(images, store)
    assert second["version"] != first["version"]
    v2 = open_current(store, checks="full").manifest
    assert v1.encoder_files == v2.encoder_files  # the same folder, the same files
    assert _model_files(store) == exported  # the nightly run with the same model wrote no model file


def _break(store: Path, how: str) -> None:
    """Point the current version at a private copy of its encoder folder, then break that copy `how`."""
    version = (store / "current").resolve()
    manifest_path = version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    source = store / manifest["encoder_files"]["dir"]
    copy = store / ENCODERS_DIR / f"broken-{how}"
    shutil.copytree(source, copy)
    for path in [copy, *copy.iterdir()]:
        path.chmod(stat.S_IRWXU)
    files = manifest["encoder_files"]["files"]
    if how == "missing":
        (copy / TEXT_FILE).unlink()
    elif how == "truncated":
        with open(copy / IMAGE_FILE, "r+b") as fh:
            fh.truncate(files[IMAGE_FILE]["bytes"] // 2)
    elif how == "mismatched":  # a consistent folder whose spec names another encoder than the manifest
        spec = json.loads((copy / SPEC_FILE).read_text())
        spec["identity"]["checksum"] = "0" * 64
        (copy / SPEC_FILE).write_text(json.dumps(spec))
        files[SPEC_FILE] = {"sha256": file_sha256(copy / SPEC_FILE), "bytes": (copy / SPEC_FILE).stat().st_size}
    elif how == "corrupt-spec":
        (copy / SPEC_FILE).write_text("{" + " " * (files[SPEC_FILE]["bytes"] - 1))
    elif how == "corrupt-tokenizer":  # same size, still JSON-looking: only its checksum tells
        data = bytearray((copy / TOKENIZER_FILE).read_bytes())
        data[len(data) // 2] ^= 0x20
        (copy / TOKENIZER_FILE).write_bytes(bytes(data))
    manifest["encoder_files"]["dir"] = f"{ENCODERS_DIR}/{copy.name}"
    version.chmod(stat.S_IRWXU)
    manifest_path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    manifest_path.write_text(json.dumps(manifest))
    os.sync()


@pytest.mark.parametrize("how,reason", [
    ("missing", "text.onnx is missing"),
    ("truncated", "truncated"),
    ("mismatched", "another encoder"),
    ("corrupt-spec", "checksum"),
    ("corrupt-tokenizer", "sha256"),
])
def test_broken_encoder_files_refuse_the_version_while_the_old_keeps_serving(world, tmp_path, how, reason):
    store = copy_store(world, tmp_path / "store")
    with TestClient(create_app(settings_for(world, store=store)), base_url="http://localhost",
                    client=("127.0.0.1", 5000)) as client:
        served = client.get("/readyz").json()["version"]
        ids = sorted(world.ids_by_path.values())
        publish(store, world.image_root, encoder_for(world.checkpoint), store / "metadata.sqlite", ids,
                np.load(world.store / "vectors.npy"))
        _break(store, how)
        refused = client.post("/admin/reload", json={})
        assert refused.status_code == 409 and reason in refused.json()["error"], refused.json()
        ready = client.get("/readyz").json()
        assert ready["version"] == served and reason in ready["last_reload_error"]
        assert "photostock_reload_failed 1.0" in client.get("/metrics").text
        hit = client.get("/search", params={"q": world.queries[0]["query"]})
        assert hit.status_code == 200 and hit.json()["version"] == served


def test_a_store_whose_only_version_has_broken_encoder_files_is_not_ready(world, tmp_path):
    store = copy_store(world, tmp_path / "store")
    _break(store, "truncated")
    with TestClient(create_app(settings_for(world, store=store))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "truncated" in ready.json()["last_reload_error"]
        assert client.get("/search", params={"q": "cat"}).status_code == 503


def test_a_version_without_encoder_files_is_refused_by_the_service(tmp_path):
    from tests.artifact_support import clustered
    from tests.artifact_support import publish as publish_vectors

    store = tmp_path / "store"
    publish_vectors(store, clustered(50, 16))
    with TestClient(create_app(settings_for_store(store)), base_url="http://localhost") as client:
        assert "carries no encoder files" in client.get("/readyz").json()["last_reload_error"]


def settings_for_store(store: Path):
    from search.settings import ReloadSettings, Settings

    return Settings(store=store, reload=ReloadSettings(watch=False))


def test_a_no_change_run_republishes_a_version_that_carries_no_encoder(tmp_path):
    """Stores published before versions carried their encoder get one new version with it, then no-ops."""
    images, store = tmp_path / "images", tmp_path / "store"
    make_tree(images, 4)
    first = run(images, store)["version"]
    version = (store / "current").resolve()
    manifest = json.loads((version / "manifest.json").read_text())
    del manifest["encoder_files"]  # as published before this change
    version.chmod(stat.S_IRWXU)
    (version / "manifest.json").chmod(stat.S_IRUSR | stat.S_IWUSR)
    (version / "manifest.json").write_text(json.dumps(manifest))
    second = run(images, store)["version"]
    assert second != first and open_current(store).encoder_bundle is not None
    assert run(images, store)["version"] == second


def test_encoder_folders_no_version_lists_are_pruned_with_the_versions(world, tmp_path):
    import torch

    from indexer.index.index_select import IndexConfig
    from indexer.index.publish import publish_version
    from indexer.models.clip import load_encoder
    from indexer.models.export import export_bundle

    store = copy_store(world, tmp_path / "store")
    old = {p.name for p in (store / ENCODERS_DIR).iterdir()}
    torch.manual_seed(7)
    other = load_encoder("tiny", pretrained="random", device="cpu")
    ids = np.asarray(sorted(world.ids_by_path.values()), np.int64)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(ids), other.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    config = IndexConfig(recall_queries=20, latency_queries=5, use_gpu=False, rerank_candidates=(20,),
                         keep_versions=1)
    files = export_bundle(other, store, tmp_path / "onnx")
    publish_version(store, ids, vectors, store / "metadata.sqlite", other.identity, world.image_root, config,
                    {"indexed": len(ids)}, {}, encoder_files=files)
    left = {p.name for p in (store / ENCODERS_DIR).iterdir()}
    assert left == {Path(files.dir).name} and not left & old
    assert open_current(store, checks="full").encoder_bundle is not None
