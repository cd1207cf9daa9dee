"""Indexer area: the incremental plan on its own: the scanned tree diffed against the store's rows (new,
changed, touched, restored, renamed, reused, unreadable, deleted, unchanged), on real files hashed for real."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from indexer.ingest.scan import Candidate
from indexer.run.pipeline import plan_changes
from indexer.storage.store import ImageRow, RowChange


def _file(root: Path, name: str, content: bytes, mtime_ns: int = 1_000) -> Candidate:
    path = root / name
    path.write_bytes(content)
    return Candidate(path=name, abs_path=str(path), size=len(content), mtime_ns=mtime_ns)


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _row(id: int, cand: Candidate | None = None, *, path: str | None = None, content: bytes | None = None,
         status: str = "indexed", reason: str | None = None, shard: str | None = "00000001",
         shard_row: int | None = 0, size: int | None = None, mtime_ns: int | None = None) -> ImageRow:
    return ImageRow(id=id, path=path or (cand.path if cand else f"old{id}.jpg"),
                    content_hash=_sha(content) if content is not None else None,
                    size=size if size is not None else (cand.size if cand else 1),
                    mtime_ns=mtime_ns if mtime_ns is not None else (cand.mtime_ns if cand else 1),
                    status=status, reason=reason, shard=shard, shard_row=shard_row)


def test_an_unchanged_tree_plans_nothing(tmp_path: Path):
    cand = _file(tmp_path, "a.jpg", b"a")
    plan = plan_changes([cand], {"a.jpg": _row(1, cand, content=b"a")}, hash_threads=2)
    assert plan.changes == [] and plan.deleted == []
    assert plan.counts == {"new": 0, "changed": 0, "touched": 0, "restored": 0, "renamed": 0, "reused": 0,
                           "unreadable": 0, "deleted_this_run": 0, "unchanged": 1, "to_encode": 0}


def test_new_and_changed_files_are_pending(tmp_path: Path):
    new = _file(tmp_path, "new.jpg", b"new")
    changed = _file(tmp_path, "c.jpg", b"after", mtime_ns=2_000)
    rows = {"c.jpg": _row(5, path="c.jpg", content=b"before", size=6, mtime_ns=1_000)}
    plan = plan_changes([new, changed], rows, hash_threads=1)
    assert plan.changes == [
        RowChange(path="new.jpg", content_hash=_sha(b"new"), size=3, mtime_ns=1_000, status="pending"),
        RowChange(path="c.jpg", content_hash=_sha(b"after"), size=5, mtime_ns=2_000, status="pending", id=5),
    ]
    assert plan.counts["new"] == 1 and plan.counts["changed"] == 1 and plan.counts["to_encode"] == 2
    assert plan.counts["unchanged"] == 0


@pytest.mark.parametrize(("size_differs", "mtime_differs"), [(True, False), (False, True)])
def test_a_touched_file_with_the_same_content_keeps_its_embedding(tmp_path: Path, size_differs, mtime_differs):
    cand = _file(tmp_path, "a.jpg", b"same", mtime_ns=9_000)
    row = _row(3, path="a.jpg", content=b"same", size=cand.size + size_differs,
               mtime_ns=cand.mtime_ns - 1_000 * mtime_differs, shard="00000002", shard_row=4)
    plan = plan_changes([cand], {"a.jpg": row}, hash_threads=1)
    assert plan.changes == [RowChange(path="a.jpg", content_hash=_sha(b"same"), size=4, mtime_ns=9_000,
                                      status="indexed", shard="00000002", shard_row=4, id=3)]
    assert plan.counts["touched"] == 1 and plan.counts["to_encode"] == 0


def test_a_file_back_after_deletion_is_restored_with_what_its_row_held(tmp_path: Path):
    cand = _file(tmp_path, "a.jpg", b"a")
    failed = _file(tmp_path, "f.jpg", b"f")
    bare = _file(tmp_path, "p.jpg", b"p")
    rows = {"a.jpg": _row(1, cand, content=b"a", status="deleted"),
            "f.jpg": _row(2, failed, content=b"f", status="deleted", reason="cannot decode", shard=None,
                          shard_row=None),
            "p.jpg": _row(3, bare, content=b"p", status="deleted", shard=None, shard_row=None)}
    plan = plan_changes([cand, failed, bare], rows, hash_threads=2)
    by_path = {c.path: c for c in plan.changes}
    assert by_path["a.jpg"].status == "indexed" and by_path["a.jpg"].shard == "00000001" and by_path["a.jpg"].id == 1
    assert by_path["f.jpg"].status == "failed" and by_path["f.jpg"].reason == "cannot decode"
    assert by_path["p.jpg"].status == "pending" and by_path["p.jpg"].reason is None
    assert plan.counts["restored"] == 3 and plan.counts["to_encode"] == 1 and plan.deleted == []


def test_a_pending_row_touched_with_a_reason_but_not_failed_stays_pending(tmp_path: Path):
    cand = _file(tmp_path, "a.jpg", b"a", mtime_ns=5_000)
    row = _row(1, path="a.jpg", content=b"a", status="pending", reason="stale", shard=None, shard_row=None,
               size=1, mtime_ns=1)
    plan = plan_changes([cand], {"a.jpg": row}, hash_threads=1)
    assert plan.changes[0].status == "pending" and plan.changes[0].reason is None


def test_a_renamed_file_moves_its_row_and_the_old_path_is_not_deleted(tmp_path: Path):
    moved = _file(tmp_path, "b.jpg", b"photo")
    twin = _file(tmp_path, "c.jpg", b"photo")
    rows = {"a.jpg": _row(7, path="a.jpg", content=b"photo", shard="00000003", shard_row=2)}
    plan = plan_changes([moved, twin], rows, hash_threads=1)
    assert plan.changes[0] == RowChange(path="b.jpg", content_hash=_sha(b"photo"), size=5, mtime_ns=1_000,
                                        status="indexed", shard="00000003", shard_row=2, id=7)
    # the second copy finds no more rows to move: it reuses the embedding as a new row
    assert plan.changes[1] == RowChange(path="c.jpg", content_hash=_sha(b"photo"), size=5, mtime_ns=1_000,
                                        status="indexed", shard="00000003", shard_row=2, copy_from=7)
    assert plan.counts["renamed"] == 1 and plan.counts["reused"] == 1 and plan.deleted == []
    assert plan.counts["deleted_this_run"] == 0


def test_a_rename_carries_a_failure_too(tmp_path: Path):
    moved = _file(tmp_path, "b.jpg", b"bad")
    rows = {"a.jpg": _row(4, path="a.jpg", content=b"bad", status="failed", reason="truncated", shard=None,
                          shard_row=None)}
    plan = plan_changes([moved], rows, hash_threads=1)
    assert plan.changes == [RowChange(path="b.jpg", content_hash=_sha(b"bad"), size=3, mtime_ns=1_000,
                                      status="failed", reason="truncated", id=4)]


def test_missing_files_are_deleted_unless_already_deleted(tmp_path: Path):
    keep = _file(tmp_path, "k.jpg", b"k")
    rows = {"k.jpg": _row(1, keep, content=b"k"), "gone.jpg": _row(2, path="gone.jpg", content=b"g"),
            "was.jpg": _row(3, path="was.jpg", content=b"w", status="deleted"),
            "nohash.jpg": _row(4, path="nohash.jpg", content=None, shard=None, shard_row=None, status="pending")}
    plan = plan_changes([keep], rows, hash_threads=1)
    assert plan.deleted == [2, 4] and plan.counts["deleted_this_run"] == 2 and plan.counts["unchanged"] == 1


def test_unembedded_rows_lend_no_embedding(tmp_path: Path):
    cand = _file(tmp_path, "new.jpg", b"x")
    rows = {"other.jpg": _row(2, _file(tmp_path, "other.jpg", b"x"), content=b"x", status="pending", shard=None,
                              shard_row=None)}
    plan = plan_changes([cand, _file(tmp_path, "other.jpg", b"x")], rows, hash_threads=1)
    assert plan.changes == [RowChange(path="new.jpg", content_hash=_sha(b"x"), size=1, mtime_ns=1_000,
                                      status="pending")]
    assert plan.counts["new"] == 1 and plan.counts["reused"] == 0


def test_an_unreadable_file_fails_with_the_reason(tmp_path: Path):
    ghost = Candidate(path="ghost.jpg", abs_path=str(tmp_path / "ghost.jpg"), size=3, mtime_ns=1)
    plan = plan_changes([ghost], {}, hash_threads=1)
    assert len(plan.changes) == 1
    change = plan.changes[0]
    assert change.status == "failed" and change.content_hash is None and change.id is None
    assert change.reason == "cannot read file: No such file or directory"
    assert plan.counts["unreadable"] == 1 and plan.counts["to_encode"] == 0
