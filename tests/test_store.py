"""The live metadata database, float16 shards and the sidecar parser."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from indexer.ingest.sidecar import read_sidecar
from indexer.settings import SettingsError, load_settings
from indexer.storage import shards
from indexer.storage.store import SCHEMA_VERSION, Decoded, MetadataStore, RowChange, StoreError, connect


def _store(tmp_path: Path) -> MetadataStore:
    return MetadataStore.open(tmp_path / "metadata.sqlite")


def test_schema_is_versioned_and_newer_schema_is_refused(tmp_path: Path) -> None:
    db = _store(tmp_path)
    assert db.get_meta("schema_version") == str(SCHEMA_VERSION)
    db.update_meta({"schema_version": str(SCHEMA_VERSION + 1)})
    db.close()
    with pytest.raises(StoreError, match="newer"):
        _store(tmp_path)


def test_meta_writes_commit_and_survive_reopening(tmp_path: Path) -> None:
    db = _store(tmp_path)
    db.update_meta({"dirty": "1", "encoder_fingerprint": "abc"})
    db.mark_published("v1")
    db.delete_meta("encoder_fingerprint")
    db.close()
    again = _store(tmp_path)  # a fresh connection sees only what was committed
    assert (again.get_meta("published"), again.dirty, again.get_meta("encoder_fingerprint")) == ("v1", False, None)
    again.close()


def test_contract_columns_exist(tmp_path: Path) -> None:
    db = _store(tmp_path)
    cols = {r[1] for r in db.conn.execute("PRAGMA table_info(images)")}
    assert {"id", "path", "content_hash", "size", "mtime_ns", "width", "height", "status", "reason", "caption",
            "tags", "licence", "popularity", "created_at", "updated_at"} <= cols


def test_plan_then_batch_commit(tmp_path: Path) -> None:
    db = _store(tmp_path)
    db.apply_plan([RowChange(f"p{i}.png", f"h{i}", 10, 1, "pending") for i in range(3)], [], {"image_root": "/x"})
    assert db.dirty and db.get_meta("image_root") == "/x"
    pending = db.pending()
    assert [p for _, p in pending] == ["p0.png", "p1.png", "p2.png"]
    ids = [i for i, _ in pending]
    db.commit_batch("00000000", [Decoded(ids[0], 5, 6), Decoded(ids[2], 7, 8)], [(ids[1], "broken")])
    assert db.counts() == {"pending": 0, "indexed": 2, "failed": 1, "deleted": 0}
    assert db.failures() == [{"path": "p1.png", "reason": "broken"}]
    assert db.embedding_refs() == [(ids[0], "00000000", 0), (ids[2], "00000000", 1)]
    assert db.shard_names() == ["00000000"] and db.next_shard_number() == 1


def test_failed_batch_commit_leaves_nothing(tmp_path: Path) -> None:
    db = _store(tmp_path)
    db.apply_plan([RowChange("a.png", "h", 1, 1, "pending")], [], {})
    (row_id, _), = db.pending()
    db.commit_batch("00000000", [Decoded(row_id, 1, 1)], [])
    with pytest.raises(sqlite3.IntegrityError):  # the same shard name twice violates the primary key
        db.commit_batch("00000000", [Decoded(row_id, 1, 1)], [(row_id, "x")])
    assert db.counts()["indexed"] == 1 and db.failures() == []


def test_sidecar_values_are_applied_to_rows(tmp_path: Path) -> None:
    db = _store(tmp_path)
    db.apply_plan([RowChange("a.png", "h", 1, 1, "pending")], [], {})
    changed = db.apply_sidecar({"a.png": {"caption": "red cube", "tags": ["red", "cube"], "licence": "CC0",
                                          "popularity": 2.5}})
    assert changed == (1, 0)
    row = db.conn.execute("SELECT caption, tags, licence, popularity FROM images").fetchone()
    assert tuple(row) == ("red cube", '["red", "cube"]', "CC0", 2.5)
    assert db.apply_sidecar({"a.png": {"caption": "red cube", "tags": ["red", "cube"], "licence": "CC0",
                                       "popularity": 2.5}}) == (0, 0)


def test_readonly_connection_cannot_write(tmp_path: Path) -> None:
    _store(tmp_path).close()
    conn = connect(tmp_path / "metadata.sqlite", readonly=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO meta VALUES ('k', 'v')")


def test_shards_roundtrip_memmap_and_gather(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 8)), rng.standard_normal((2, 8))
    shards.write_shard(tmp_path, "00000000", np.array([5, 1, 9]), a)
    shards.write_shard(tmp_path, "00000001", np.array([3, 7]), b)
    mm = shards.open_vectors(tmp_path, "00000000")
    assert isinstance(mm, np.memmap) and mm.dtype == np.float16
    ids, vecs = shards.gather(tmp_path, [(9, "00000000", 2), (3, "00000001", 0), (5, "00000000", 0)], 8)
    assert ids.tolist() == [3, 5, 9]
    np.testing.assert_array_equal(vecs, np.stack([b[0], a[0], a[2]]).astype(np.float16))


def test_debris_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    shards.write_shard(tmp_path, "00000000", np.array([1]), np.ones((1, 4)))
    shards.write_shard(tmp_path, "00000001", np.array([2]), np.ones((1, 4)))  # never committed to the DB
    (tmp_path / "00000002.f16.npy.tmp").write_bytes(b"partial")
    removed = shards.remove_debris(tmp_path, known={"00000000"})
    assert sorted(removed) == ["00000001.f16.npy", "00000001.ids.npy", "00000002.f16.npy.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000000.f16.npy", "00000000.ids.npy"]


def test_sidecar_bad_lines_are_reported_not_fatal(tmp_path: Path) -> None:
    lines = [
        json.dumps({"path": "./a/x.png", "caption": "a cat", "tags": ["cat"], "licence": "CC-BY", "popularity": 3}),
        "{not json",
        json.dumps({"caption": "no path"}),
        json.dumps({"path": "b.png", "popularity": "high"}),
        "",
        json.dumps({"path": "c.png", "tags": "single"}),
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    sidecar = read_sidecar(tmp_path / "metadata.jsonl")
    assert sidecar.records["a/x.png"] == {"caption": "a cat", "tags": ["cat"], "licence": "CC-BY", "popularity": 3.0}
    assert sidecar.records["c.png"]["tags"] == ["single"]
    assert [e["line"] for e in sidecar.errors] == [2, 3, 4]
    assert "popularity" in sidecar.errors[2]["reason"]


def test_missing_sidecar_is_empty(tmp_path: Path) -> None:
    assert read_sidecar(tmp_path / "metadata.jsonl").records == {}


def test_settings_file_and_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "indexer.yaml"
    cfg.write_text("batch_size: 8\nworkers: 3\nextensions: [PNG, .Jpg]\n")
    settings = load_settings(cfg, {"workers": 1, "model": None})
    assert (settings.batch_size, settings.workers, settings.model) == (8, 1, "tiny")
    assert settings.extensions == (".jpg", ".png")
    cfg.write_text("batch_size: 0\nbogus: 1\n")
    with pytest.raises(SettingsError, match="batch_size.*bogus|bogus.*batch_size"):
        load_settings(cfg)


def test_repo_config_loads() -> None:
    settings = load_settings()
    assert settings.model == "tiny" and settings.batch_size >= 1
    assert "keep_versions" in settings.index_options()


def test_schema_1_store_migrates_to_lossless_paths_and_keeps_sidecar_values(tmp_path: Path) -> None:
    """A store written by schema 1 (UTF-8 paths only, sidecar values in the columns) opens as schema 2."""
    db_path = tmp_path / "metadata.sqlite"
    conn = sqlite3.connect(db_path)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
        "CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, content_hash TEXT,"
        " size INTEGER, mtime_ns INTEGER, width INTEGER, height INTEGER, status TEXT NOT NULL, reason TEXT,"
        " caption TEXT, tags TEXT, licence TEXT, popularity REAL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
        " shard TEXT, shard_row INTEGER);"
        "INSERT INTO images (path, status, caption, tags, created_at, updated_at)"
        " VALUES ('d/caf\u00e9.png', 'pending', 'old caption', '[\"x\"]', 't', 't'), ('b.png', 'pending', NULL,"
        " NULL, 't', 't');"
    )
    conn.commit()
    conn.close()
    db = MetadataStore.open(db_path)
    assert db.get_meta("schema_version") == "2"
    assert set(db.rows()) == {"d/caf\u00e9.png", "b.png"}
    row = db.conn.execute("SELECT path_raw, sidecar, caption FROM images WHERE path = 'd/caf\u00e9.png'").fetchone()
    assert bytes(row[0]) == "d/caf\u00e9.png".encode() and json.loads(row[1]) == {"caption": "old caption",
                                                                                   "tags": ["x"]}
    assert db.conn.execute("SELECT sidecar FROM images WHERE path = 'b.png'").fetchone()[0] in (None, "{}")
    db.apply_plan([RowChange(os.fsdecode(b"caf\xe9.png"), "h", 1, 1, "pending")], [], {})  # no surrogate error
    assert os.fsdecode(b"caf\xe9.png") in db.rows()
    db.close()
