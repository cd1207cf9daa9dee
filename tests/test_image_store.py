"""search/artifact/images.py: which stored files an id serves, and the thumbnails rendered from them."""

from __future__ import annotations

import io
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.artifact.images import ImageNotFound, ImageStore
from search.artifact.takedown import TakedownList, apply_takedowns
from search.artifact.version import Artifact, open_version
from tests.artifact_support import clustered, publish
from tests.metadata_support import MetaRow, write_metadata

INSERT = ("INSERT INTO images(id, path, path_raw, content_hash, size, mtime_ns, status, created_at, updated_at)"
          " VALUES (?, ?, ?, 'h', 0, 0, 'indexed', '', '')")


def _picture(path: Path, size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    channels = len(mode)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], channels), np.uint8).squeeze(), mode).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Artifact]]:
    """ids 1-3 pictures, 4 a missing file, 5 a directory, 6 a path out of the root, 7 a name that is not UTF-8
    (only its stored bytes find it)."""
    base = tmp_path_factory.mktemp("images")
    root = base / "photos"
    _picture(root / "img" / "001.jpg", (80, 40))
    _picture(root / "img" / "002.png", (30, 90), "RGBA")
    _picture(root / "img" / "003.jpg", (16, 16))
    (root / "img" / "005.jpg").mkdir()
    _picture(base / "outside.jpg", (16, 16))
    _picture(root / os.fsdecode(b"img/\xff7.jpg"), (20, 20))
    db = root / "live.sqlite"
    write_metadata(db, [MetaRow(i, p) for i, p in [(1, "img/001.jpg"), (2, "img/002.png"), (3, "img/003.jpg"),
                                                     (4, "img/004.jpg"), (5, "img/005.jpg"), (6, "../outside.jpg")]])
    with sqlite3.connect(db) as conn:
        conn.execute(INSERT, (7, "img/\ufffd7.jpg", b"img/\xff7.jpg"))
    ids = np.arange(1, 8, dtype=np.int64)
    (root / "store").mkdir()
    apply_takedowns(root / "store", [(3, None)], "carried into the version")  # the version's own copy
    version = publish(root / "store", clustered(len(ids), 8, clusters=2), ids)  # the image root: the store's parent
    with open_version(version.path) as artifact:
        yield base, artifact


def test_served_ids_resolve_to_their_files(world: tuple[Path, Artifact]) -> None:
    base, artifact = world
    images = ImageStore(thumbnail_px=32, cache_size=4)
    root = (base / "photos").resolve()
    assert images.path_of(artifact, 1) == root / "img" / "001.jpg"
    assert images.path_of(artifact, 2) == root / "img" / "002.png"
    # the stored bytes of a name that is not UTF-8 find the file its display text cannot
    assert os.fsencode(images.path_of(artifact, 7)) == os.fsencode(root) + b"/img/\xff7.jpg"


@pytest.mark.parametrize(("image_id", "message"), [
    (4, "^image 4 is not available$"),  # the file is gone
    (5, "^image 5 is not available$"),  # a directory, not a file
    (6, "^image 6 is not available$"),  # resolves outside the image root (the file there exists)
    (9, "^no image 9 in index version "),  # in the metadata, not in the served version
    (10, "^no image 10 in index version "),
])
def test_unservable_ids_are_not_found(world: tuple[Path, Artifact], image_id: int, message: str) -> None:
    _, artifact = world
    images = ImageStore(thumbnail_px=32, cache_size=4)
    with pytest.raises(ImageNotFound, match=message):
        images.path_of(artifact, image_id)
    with pytest.raises(ImageNotFound, match=message):
        images.thumbnail(artifact, image_id)
    if image_id == 10:
        with pytest.raises(ImageNotFound, match=artifact.version):
            images.path_of(artifact, image_id)


def test_thumbnails_are_jpegs_within_the_size_and_cached(world: tuple[Path, Artifact]) -> None:
    base, artifact = world
    images = ImageStore(thumbnail_px=32, cache_size=1)
    wide = images.thumbnail(artifact, 1)
    with Image.open(io.BytesIO(wide)) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 16))  # aspect kept
    with Image.open(base / "photos" / "img" / "001.jpg") as source:  # PIL's own thumbnail at quality 85
        source.thumbnail((32, 32))
        expected = io.BytesIO()
        source.convert("RGB").save(expected, format="JPEG", quality=85)
    assert wide == expected.getvalue()
    tall = images.thumbnail(artifact, 2)  # RGBA source: flattened to RGB for JPEG
    with Image.open(io.BytesIO(tall)) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (11, 32))
    small = ImageStore(thumbnail_px=64, cache_size=4).thumbnail(artifact, 3)
    with Image.open(io.BytesIO(small)) as image:
        assert image.size == (16, 16)  # never enlarged


def test_the_cache_serves_without_the_file_and_keeps_its_size(world: tuple[Path, Artifact]) -> None:
    base, artifact = world
    images = ImageStore(thumbnail_px=32, cache_size=0)  # at least one entry
    path = base / "photos" / "img" / "003.jpg"
    first = images.thumbnail(artifact, 3)
    saved = path.read_bytes()
    path.unlink()
    try:
        assert images.thumbnail(artifact, 3) == first  # from the cache
        images.thumbnail(artifact, 1)  # evicts id 3 (one entry)
        with pytest.raises(ImageNotFound):
            images.thumbnail(artifact, 3)
    finally:
        path.write_bytes(saved)
    assert images.thumbnail(artifact, 3) == first


def test_taken_down_ids_go_dark_even_when_cached(world: tuple[Path, Artifact], tmp_path: Path) -> None:
    _, artifact = world
    takedowns = TakedownList(tmp_path, check_s=0.0)
    images = ImageStore(thumbnail_px=32, cache_size=4, takedowns=takedowns)
    with pytest.raises(ImageNotFound, match="^image 3 is not available$"):  # no store list: the version's copy
        images.path_of(artifact, 3)
    thumb = images.thumbnail(artifact, 1)
    assert images.path_of(artifact, 2).name == "002.png"
    apply_takedowns(tmp_path, [(1, None), (2, None)], "test")
    for image_id in (1, 2):
        with pytest.raises(ImageNotFound, match=f"^image {image_id} is not available$"):
            images.thumbnail(artifact, image_id)
        with pytest.raises(ImageNotFound, match=f"^image {image_id} is not available$"):
            images.path_of(artifact, image_id)
    apply_takedowns(tmp_path, [(1, None)], "test", restore=True)
    assert images.thumbnail(artifact, 1) == thumb
    assert images.path_of(artifact, 3).name == "003.jpg"  # the store's own list rules once it has one


def test_a_snapshot_without_stored_name_bytes_serves_the_text_path(tmp_path: Path) -> None:
    # snapshots written before path_raw existed hold only the text path
    root = tmp_path / "photos"
    _picture(root / "img" / "001.jpg", (20, 10))
    db = write_metadata(root / "live.sqlite", [MetaRow(1, "img/001.jpg")])
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE old AS SELECT id, path, status, width, height, caption, tags FROM images")
        conn.execute("DROP TABLE images")
        conn.execute("ALTER TABLE old RENAME TO images")
    version = publish(root / "store", clustered(1, 8, clusters=1), np.array([1], np.int64))
    with open_version(version.path) as artifact:
        assert "path_raw" not in artifact.metadata([1])[0]
        assert ImageStore(thumbnail_px=8, cache_size=1).path_of(artifact, 1) == (root / "img" / "001.jpg").resolve()
