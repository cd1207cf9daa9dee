"""Real photo libraries: names that are not UTF-8 (or hold newlines, or are 255 bytes long), metadata the
files carry (EXIF/IPTC/XMP) and its precedence, and a sidecar that never wipes what it does not mention."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.indexer_support import draw, rows, run, status
from tests.photo_files import XMP, jpeg_with_metadata, tiff_with_metadata

NON_UTF8 = b"caf\xe9.png"
NEWLINE = "two\nlines.png"
LONG_ASCII = "a" * 251 + ".png"  # 255 bytes, the usual NAME_MAX
LONG_UTF8 = "\u00e9" * 125 + "x.png"  # 255 bytes in UTF-8


def _write_library(root: Path) -> dict[str, str]:
    """display path -> lossless key of each file (plus one broken file)."""
    root.mkdir(parents=True, exist_ok=True)
    keys = {}
    for i, name in enumerate([os.fsdecode(NON_UTF8), NEWLINE, LONG_ASCII, LONG_UTF8, "plain.png"]):
        draw(root / name, seed=100 + i)
        keys[os.fsencode(name).decode("utf-8", "backslashreplace")] = name
    sub = os.fsencode(root) + b"/d\xff"
    os.makedirs(sub, exist_ok=True)
    draw(Path(os.fsdecode(sub + b"/x.png")), seed=99)
    keys["d\\xff/x.png"] = os.fsdecode(b"d\xff/x.png")
    (root / "broken.png").write_bytes(b"not an image")
    return keys


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str], dict]:
    base = tmp_path_factory.mktemp("names")
    images, store = base / "images", base / "store"
    keys = _write_library(images)
    report = run(images, store)
    return images, store, keys, report


def test_every_name_is_indexed_and_stored_losslessly(library) -> None:
    images, store, keys, report = library
    c = report["counts"]
    assert c["indexed"] + c["failed"] == c["candidates"] == len(keys) + 1
    assert (c["indexed"], c["failed"]) == (len(keys), 1)
    by_path = rows(store)
    for shown, key in keys.items():
        assert by_path[shown]["status"] == "indexed", shown
        assert bytes(by_path[shown]["path_raw"]) == os.fsencode(key)  # the exact bytes on disk
    json.dumps(report, ensure_ascii=False).encode("utf-8")  # no lone surrogates anywhere in the report
    assert {f["path"] for f in status(store)["failures"]} == {"broken.png"}


def test_rerun_is_a_no_op_and_a_rename_keeps_the_row(library) -> None:
    images, store, keys, _ = library
    again = run(images, store)
    assert (again["counts"]["encoded"], again["published"]) == (0, False)
    before = rows(store)["caf\\xe9.png"]["id"]
    os.rename(os.fsencode(images) + b"/" + NON_UTF8, os.fsencode(images) + b"/caf\xe8.png")
    moved = run(images, store)
    assert moved["counts"]["renamed"] == 1 and moved["counts"]["encoded"] == 0
    assert rows(store)["caf\\xe8.png"]["id"] == before
    os.rename(os.fsencode(images) + b"/caf\xe8.png", os.fsencode(images) + b"/" + NON_UTF8)
    run(images, store)


def test_status_cli_prints_names_on_one_line(library) -> None:
    from tests.indexer_support import cli

    _, store, _, _ = library
    shown = cli("status", "--store", str(store))
    assert shown.returncode == 0, shown.stderr
    assert "FAILED broken.png" in shown.stdout and "Traceback" not in shown.stderr


# -- metadata carried by the files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    images = tmp_path_factory.mktemp("photos") / "images"
    jpeg_with_metadata(images / "all.jpg", orientation=6,
                       iptc=[(120, b"IPTC caption"), (25, b"iptc-kw"), (116, "\u00a9 Studio".encode()),
                             (80, b"IPTC Creator")], xmp=XMP)
    jpeg_with_metadata(images / "iptc.jpg", iptc=[(105, b"IPTC headline"), (25, b"one"), (25, b"two")],
                       color=(10, 10, 200))
    jpeg_with_metadata(images / "corrupt_xmp.jpg", xmp=b"<x:xmpmeta><broken", color=(10, 200, 10))
    tiff_with_metadata(images / "scan.tif")
    (images / "metadata.jsonl").write_text(json.dumps({"path": "iptc.jpg", "caption": "sidecar wins"}) + "\n")
    store = images.parent / "store"
    return images, store, run(images, store)


def test_file_metadata_with_precedence_xmp_iptc_exif(photos) -> None:
    _, store, report = photos
    by_path = rows(store)
    full = by_path["all.jpg"]
    assert full["status"] == "indexed"
    assert (full["width"], full["height"]) == (24, 48)  # EXIF orientation 6 applied to the stored size
    assert full["caption"] == "A red fox in snow"  # XMP beats IPTC's caption
    assert json.loads(full["tags"]) == ["fox", "snow"]
    assert full["licence"] == "Editorial use only" and full["creator"] == "Jane Doe"
    assert full["taken_at"] == "2021-06-01T12:30:00+02:00"
    assert (full["camera_make"], full["camera_model"]) == ("Canon", "EOS 5D")
    iptc = by_path["iptc.jpg"]
    assert iptc["caption"] == "sidecar wins"  # sidecar beats the file
    assert json.loads(iptc["tags"]) == ["one", "two"]
    assert json.loads(iptc["file_meta"])["caption"] == "IPTC headline"
    tif = by_path["scan.tif"]
    assert (tif["camera_make"], tif["caption"]) == ("Nikon", "A red fox in snow")


def test_corrupt_metadata_block_never_fails_the_image(photos) -> None:
    _, store, report = photos
    row = rows(store)["corrupt_xmp.jpg"]
    assert row["status"] == "indexed" and row["caption"] is None
    assert row["taken_at"] == "2021-06-01T12:30:00+02:00"  # the EXIF block is fine and still read
    assert report["counts"]["metadata_errors"] == 1
    assert any(w["path"] == "corrupt_xmp.jpg" and "XMP" in w["warning"] for w in report["warnings"])


# -- the sidecar ------------------------------------------------------------------------------------------


def test_sidecar_bad_line_missing_sidecar_and_explicit_null(tmp_path: Path) -> None:
    images, store = tmp_path / "images", tmp_path / "store"
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        draw(images / name, seed=200 + i)
    sidecar = images / "metadata.jsonl"
    full = {"caption": "cap", "tags": ["t"], "licence": "CC0", "popularity": 1.0}
    sidecar.write_text("".join(json.dumps({"path": p, **full}) + "\n" for p in ("a.png", "b.png", "c.png")))
    run(images, store)
    sidecar.write_text(
        json.dumps({"path": "a.png", "caption": 5}) + "\n"  # malformed: wrong type
        + "{broken\n"
        + json.dumps({"path": "c.png", "licence": None}) + "\n"  # explicit null clears; other fields stay
    )
    report = run(images, store)
    assert [e["line"] for e in report["sidecar_errors"]] == [1, 2]
    by_path = rows(store)
    for name in ("a.png", "b.png"):  # a: bad line; b: no line at all
        assert (by_path[name]["caption"], by_path[name]["licence"], by_path[name]["popularity"]) == ("cap", "CC0", 1.0)
    assert (by_path["c.png"]["caption"], by_path["c.png"]["licence"]) == ("cap", None)
    sidecar.unlink()
    run(images, store)
    assert rows(store)["a.png"]["caption"] == "cap"


def test_date_filters_use_taken_at_where_known() -> None:
    from search.query.batch import hit_dict as _hit
    from search.query.filters import Filters
    from search.query.rerank import Ranked

    shot = {"created_at": "2026-01-01T00:00:00+00:00", "taken_at": "2019-05-01T10:00:00+02:00"}
    assert Filters(created_before="2020-01-01").matches(shot)
    assert not Filters(created_after="2025-01-01").matches(shot)
    assert Filters(created_after="2025-01-01").matches({"created_at": "2026-01-01T00:00:00+00:00"})
    hit = _hit(Ranked(7, 0.5, 0.5), {**shot, "path": "a.jpg", "camera_make": "Canon", "creator": "Jane"})
    assert (hit["taken_at"], hit["camera_make"], hit["creator"]) == (shot["taken_at"], "Canon", "Jane")
