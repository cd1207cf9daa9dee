"""Incremental runs with the real tiny encoder and the real publish step: add / modify / touch / rename /
delete / duplicate / restore, no-op reruns, encoder changes, broken files inside a batch, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from indexer.run.pipeline import run_build
from tests.indexer_support import (
    cli,
    current_ids,
    draw,
    make_tree,
    paths_with,
    rows,
    run,
    settings,
    status,
    tiny_encoder,
)


def _vectors(store: Path) -> dict[int, np.ndarray]:
    ids = current_ids(store)
    vecs = np.load(store / "current" / "vectors.f16.npy")
    return {int(i): v for i, v in zip(ids, vecs, strict=True)}


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    images, store = tmp_path / "images", tmp_path / "store"
    make_tree(images, 6)
    return images, store


def test_first_run_indexes_everything_and_publishes(tree: tuple[Path, Path]) -> None:
    images, store = tree
    (images / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (images / "metadata.jsonl").write_text(json.dumps({"path": "b/img000.png", "caption": "noise", "tags": ["t"],
                                                       "licence": "CC0", "popularity": 1.5}) + "\n")
    report = run(images, store)
    assert report["counts"]["encoded"] == 6 and report["counts"]["failed"] == 1
    assert report["published"] and report["version"]
    assert set(report["timings"]) >= {"scan", "decode", "encode", "write", "index_build"}
    st = status(store)
    assert (st["version"], st["indexed"], st["failed"], st["deleted"]) == (report["version"], 6, 1, 0)
    assert st["failures"][0]["path"] == "a/broken.jpg" and st["failures"][0]["reason"]
    by_path = rows(store)
    assert sorted(current_ids(store).tolist()) == sorted(r["id"] for r in by_path.values() if r["status"] == "indexed")
    saved = list((store / "runs").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["counts"] == report["counts"]
    with sqlite3.connect(store / "current" / "metadata.sqlite") as snap:
        row = snap.execute("SELECT caption, tags FROM images WHERE path='b/img000.png'").fetchone()
        assert row == ("noise", '["t"]')


def test_stored_vector_is_the_encoders_embedding(tree: tuple[Path, Path]) -> None:
    from PIL import Image

    images, store = tree
    run(images, store)
    row = rows(store)["a/img001.png"]
    expected = tiny_encoder().encode_images([Image.open(images / "a/img001.png").convert("RGB")])[0]
    np.testing.assert_allclose(_vectors(store)[row["id"]].astype(np.float32), expected, atol=2e-3)
    assert (row["width"], row["height"]) == (24, 20)


def test_noop_rerun_encodes_nothing_and_keeps_the_version(tree: tuple[Path, Path]) -> None:
    images, store = tree
    first = run(images, store)
    second = run(images, store)
    assert second["counts"]["encoded"] == 0 and second["counts"]["unchanged"] == 6
    assert second["version"] == first["version"] and not second["published"]
    assert "index_build" not in second["timings"] and "decode" not in second["timings"]


def test_add_modify_and_touch(tree: tuple[Path, Path]) -> None:
    images, store = tree
    run(images, store)
    before = rows(store)
    old_vectors = _vectors(store)
    draw(images / "new" / "added.png", seed=100)
    draw(images / "a/img001.png", seed=101)  # new content, same path
    os.utime(images / "b/img002.png", ns=(1, 1))  # new mtime, same content
    report = run(images, store)
    c = report["counts"]
    assert (c["encoded"], c["new"], c["changed"], c["touched"]) == (2, 1, 1, 1)
    after = rows(store)
    assert after["a/img001.png"]["id"] == before["a/img001.png"]["id"]
    assert after["a/img001.png"]["content_hash"] != before["a/img001.png"]["content_hash"]
    assert after["b/img002.png"]["mtime_ns"] == 1 and after["b/img002.png"]["status"] == "indexed"
    new_vectors = _vectors(store)
    modified = after["a/img001.png"]["id"]
    assert not np.array_equal(new_vectors[modified], old_vectors[modified])
    assert after["new/added.png"]["id"] in new_vectors and len(new_vectors) == 7


def test_rename_reuses_the_embedding(tree: tuple[Path, Path]) -> None:
    images, store = tree
    run(images, store)
    old = rows(store)["a/img003.png"]
    old_vector = _vectors(store)[old["id"]]
    (images / "moved").mkdir()
    os.rename(images / "a/img003.png", images / "moved/renamed.png")
    report = run(images, store)
    assert (report["counts"]["encoded"], report["counts"]["renamed"]) == (0, 1)
    after = rows(store)
    assert "a/img003.png" not in after and after["moved/renamed.png"]["id"] == old["id"]
    np.testing.assert_array_equal(_vectors(store)[old["id"]], old_vector)
    assert report["published"] and status(store)["deleted"] == 0


def test_delete_removes_from_next_version(tree: tuple[Path, Path]) -> None:
    images, store = tree
    run(images, store)
    gone = rows(store)["b/img004.png"]["id"]
    (images / "b/img004.png").unlink()
    report = run(images, store)
    assert report["counts"]["deleted_this_run"] == 1 and report["counts"]["encoded"] == 0
    assert rows(store)["b/img004.png"]["status"] == "deleted"
    assert gone not in current_ids(store).tolist() and len(current_ids(store)) == 5
    assert status(store)["deleted"] == 1


def test_deleted_file_coming_back_is_restored_without_encoding(tree: tuple[Path, Path]) -> None:
    images, store = tree
    run(images, store)
    shutil.move(images / "b/img004.png", store.parent / "aside.png")
    run(images, store)
    shutil.move(store.parent / "aside.png", images / "b/img004.png")
    report = run(images, store)
    assert (report["counts"]["restored"], report["counts"]["encoded"]) == (1, 0)
    assert paths_with(store, "deleted") == set() and len(current_ids(store)) == 6


def test_duplicate_content_reuses_the_embedding(tree: tuple[Path, Path]) -> None:
    images, store = tree
    run(images, store)
    shutil.copy(images / "a/img001.png", images / "copy.png")
    report = run(images, store)
    assert (report["counts"]["reused"], report["counts"]["encoded"]) == (1, 0)
    r = rows(store)
    vectors = _vectors(store)
    np.testing.assert_array_equal(vectors[r["copy.png"]["id"]], vectors[r["a/img001.png"]["id"]])


def test_changed_encoder_reencodes_everything(tree: tuple[Path, Path]) -> None:
    images, store = tree
    run(images, store)
    base = tiny_encoder()
    other_identity = dataclasses.replace(base.identity, weights="other-checkpoint", checksum="0" * 64)
    other = type(base)(base.model, base.preprocess, base.tokenizer, other_identity, base.device)
    report = run_build(images, store, settings(), other)
    assert report["counts"]["encoded"] == 6 and report["published"]
    assert json.loads((store / "current" / "manifest.json").read_text())["encoder"]["weights"] == "other-checkpoint"


def test_broken_image_never_aborts_its_batch(tmp_path: Path) -> None:
    images, store = tmp_path / "images", tmp_path / "store"
    make_tree(images, 3)
    (images / "a" / "img000x.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    report = run(images, store, batch_size=4)  # all four files land in one batch
    assert report["counts"]["encoded"] == 3 and report["counts"]["failed"] == 1
    assert paths_with(store, "failed") == {"a/img000x.png"}
    assert len(current_ids(store)) == 3


def test_failed_publish_is_retried_by_the_next_run(tree: tuple[Path, Path]) -> None:
    images, store = tree

    def broken_publisher(request):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_build(images, store, settings(), tiny_encoder(), publisher=broken_publisher)
    assert not (store / "current").exists() and len(paths_with(store, "indexed")) == 6
    report = run(images, store)
    assert report["counts"]["encoded"] == 0 and report["published"] and len(current_ids(store)) == 6


def test_cli_build_status_and_unavailable_weights(tree: tuple[Path, Path]) -> None:
    images, store = tree
    (images / "bad.png").write_text("nope")
    built = cli("build", "--images", str(images), "--store", str(store), "--pretrained", "random",
                "--device", "cpu", "--batch-size", "4", "--workers", "1")
    assert built.returncode == 0, built.stderr
    report = json.loads(built.stdout)
    shown = cli("status", "--store", str(store), "--json")
    assert shown.returncode == 0, shown.stderr
    st = json.loads(shown.stdout)
    assert st["version"] == report["version"]
    assert (st["indexed"], st["failed"], st["deleted"]) == (6, 1, 0)
    assert st["failures"] == [{"path": "bad.png", "reason": st["failures"][0]["reason"]}]
    assert st["failures"][0]["reason"]
    again = cli("build", "--images", str(images), "--store", str(store), "--pretrained", "random",
                "--device", "cpu", "--batch-size", "4", "--workers", "1")
    assert again.returncode == 0, again.stderr
    noop = json.loads(again.stdout)
    assert (noop["counts"]["encoded"], noop["published"], noop["version"]) == (0, False, report["version"])
    missing = cli("build", "--images", str(images), "--store", str(store), "--pretrained", "/nonexistent/w.pt")
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert missing.stderr.strip().splitlines()[-1].startswith("error: Checkpoint file not found")


def test_lazy_encoder_is_not_loaded_for_a_noop_run(tree: tuple[Path, Path]) -> None:
    from indexer.commands.build_cmd import LazyEncoder

    images, store = tree
    run(images, store)
    loads: list[int] = []

    def load():
        loads.append(1)
        return tiny_encoder()

    lazy = LazyEncoder(tiny_encoder().identity, load)
    noop = run_build(images, store, settings(), lazy)
    assert noop["counts"]["encoded"] == 0 and loads == []
    draw(images / "late.png", seed=77)
    added = run_build(images, store, settings(), lazy)
    assert added["counts"]["encoded"] == 1 and loads == [1] and added["published"]


def test_lazy_encoder_refuses_a_different_identity() -> None:
    from indexer.commands.build_cmd import LazyEncoder

    base = tiny_encoder()
    lazy = LazyEncoder(dataclasses.replace(base.identity, checksum="f" * 64), lambda: base)
    assert lazy.dim == base.dim
    with pytest.raises(RuntimeError, match="checksum"):
        _ = lazy.preprocess


def test_lazy_encoder_pickles_as_the_real_encoder() -> None:
    import pickle

    from indexer.commands.build_cmd import LazyEncoder

    base = tiny_encoder()
    clone = pickle.loads(pickle.dumps(LazyEncoder(base.identity, lambda: base)))
    assert type(clone) is type(base) and clone.identity == base.identity
