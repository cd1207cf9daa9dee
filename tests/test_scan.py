"""Candidate discovery: extensions, non-files, symlink loops and links out of the root."""

from __future__ import annotations

import os
from pathlib import Path

from indexer.ingest.scan import scan
from indexer.settings import DEFAULT_EXTENSIONS
from tests.indexer_support import draw


def _paths(root: Path, **kw) -> list[str]:
    return [c.path for c in scan(root, DEFAULT_EXTENSIONS, **kw).candidates]


def test_candidates_are_image_files_by_case_insensitive_extension(tmp_path: Path) -> None:
    draw(tmp_path / "a.PNG", 1)
    draw(tmp_path / "sub" / "b.JpG", 2)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "metadata.jsonl").write_text("{}\n")
    (tmp_path / "folder.jpg").mkdir()  # a directory named like an image
    draw(tmp_path / "folder.jpg" / "inner.png", 3)
    assert _paths(tmp_path) == ["a.PNG", "folder.jpg/inner.png", "sub/b.JpG"]


def test_candidates_carry_stat(tmp_path: Path) -> None:
    path = draw(tmp_path / "x.png", 1)
    (cand,) = scan(tmp_path, DEFAULT_EXTENSIONS).candidates
    st = path.stat()
    assert (cand.size, cand.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert Path(cand.abs_path) == path.resolve()


def test_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    draw(tmp_path / "d" / "x.png", 1)
    os.symlink("..", tmp_path / "d" / "up")  # d/up -> root -> d -> ...
    os.symlink(".", tmp_path / "self")
    result = scan(tmp_path, DEFAULT_EXTENSIONS)
    assert [c.path for c in result.candidates] == ["d/x.png"]
    assert {s["path"] for s in result.skipped} == {"d/up", "self"}
    assert all("already visited" in s["reason"] for s in result.skipped)


def test_symlinks_out_of_root_are_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    draw(outside / "secret.png", 1)
    draw(root / "own.png", 2)
    os.symlink(outside, root / "linkdir")
    os.symlink(outside / "secret.png", root / "linkfile.png")
    os.symlink(root / "missing.png", root / "dangling.png")
    result = scan(root, DEFAULT_EXTENSIONS)
    assert [c.path for c in result.candidates] == ["own.png"]
    reasons = {s["path"]: s["reason"] for s in result.skipped}
    assert "outside" in reasons["linkdir"] and "outside" in reasons["linkfile.png"]
    assert "broken symlink" in reasons["dangling.png"]


def test_symlink_inside_root_is_a_candidate(tmp_path: Path) -> None:
    draw(tmp_path / "real" / "x.png", 1)
    os.symlink(tmp_path / "real" / "x.png", tmp_path / "alias.png")
    assert _paths(tmp_path) == ["alias.png", "real/x.png"]


def test_store_inside_image_root_is_excluded(tmp_path: Path) -> None:
    draw(tmp_path / "x.png", 1)
    draw(tmp_path / "store" / "thumb.png", 2)
    assert _paths(tmp_path, exclude=(tmp_path / "store",)) == ["x.png"]


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(NotADirectoryError, match="not a directory"):
        scan(tmp_path / "nope", DEFAULT_EXTENSIONS)


def test_build_survives_symlink_loop_and_ignores_links_out(tmp_path: Path) -> None:
    from tests.indexer_support import rows, run

    images, outside = tmp_path / "images", tmp_path / "outside"
    draw(images / "d" / "x.png", 1)
    draw(outside / "secret.png", 2)
    os.symlink("..", images / "d" / "loop")
    os.symlink(outside, images / "out")
    report = run(images, tmp_path / "store")
    assert set(rows(tmp_path / "store")) == {"d/x.png"}
    assert report["counts"]["indexed"] == 1
    assert {s["path"] for s in report["skipped"]} == {"d/loop", "out"}
