"""The live metadata database (STORE/metadata.sqlite): one row per image path, row id == FAISS id.

Every change is made in a transaction that leaves the database consistent, so a run killed at any moment
resumes from what was committed. Besides the contract's columns a row carries `shard`/`shard_row`, the
location of its embedding, so a renamed or duplicated file can point at an existing embedding.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from indexer.ingest.paths import display, from_raw, to_raw

SCHEMA_VERSION = 2
DB_NAME = "metadata.sqlite"
STATUSES = ("pending", "indexed", "failed", "deleted")
# Fields a row shows, each from the sidecar when it set it, else from the file's own metadata (store_meta.py).
EFFECTIVE_FIELDS = ("caption", "tags", "licence", "popularity", "creator", "taken_at", "camera_make",
                    "camera_model")

_IMAGES_COLUMNS = """
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    path_raw BLOB NOT NULL UNIQUE,
    content_hash TEXT,
    size INTEGER,
    mtime_ns INTEGER,
    width INTEGER,
    height INTEGER,
    status TEXT NOT NULL CHECK (status IN ('pending', 'indexed', 'failed', 'deleted')),
    reason TEXT,
    caption TEXT,
    tags TEXT,
    licence TEXT,
    popularity REAL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    shard TEXT,
    shard_row INTEGER,
    taken_at TEXT,
    camera_make TEXT,
    camera_model TEXT,
    creator TEXT,
    file_meta TEXT,
    sidecar TEXT
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS images_status ON images(status);
CREATE INDEX IF NOT EXISTS images_hash ON images(content_hash);
CREATE INDEX IF NOT EXISTS images_path ON images(path);
"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images ({_IMAGES_COLUMNS});
{_INDEXES}
CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, created_at TEXT NOT NULL);
"""
_V1_COLUMNS = ("id, path, content_hash, size, mtime_ns, width, height, status, reason, caption, tags, licence,"
               " popularity, created_at, updated_at, shard, shard_row")
# v1 -> v2: path_raw (the name's bytes) becomes the unique key, `path` the display form; file metadata columns.
# v1 could only hold UTF-8 names, so CAST(path AS BLOB) is exact. v1 values came from the sidecar only.
_MIGRATE_V1 = f"""
BEGIN;
CREATE TABLE images_v2 ({_IMAGES_COLUMNS});
INSERT INTO images_v2 ({_V1_COLUMNS}, path_raw, sidecar)
    SELECT {_V1_COLUMNS}, CAST(path AS BLOB),
           json_patch(json_patch(json_patch(json_patch('{{}}',
               CASE WHEN caption IS NULL THEN '{{}}' ELSE json_object('caption', caption) END),
               CASE WHEN tags IS NULL THEN '{{}}' ELSE json_object('tags', json(tags)) END),
               CASE WHEN licence IS NULL THEN '{{}}' ELSE json_object('licence', licence) END),
               CASE WHEN popularity IS NULL THEN '{{}}' ELSE json_object('popularity', popularity) END)
    FROM images;
DROP TABLE images;
ALTER TABLE images_v2 RENAME TO images;
{_INDEXES}
UPDATE meta SET value = '2' WHERE key = 'schema_version';
COMMIT;
"""


class StoreError(RuntimeError):
    """The store cannot be used (newer schema, corrupt database)."""


@dataclass(frozen=True)
class ImageRow:
    id: int
    path: str
    content_hash: str | None
    size: int | None
    mtime_ns: int | None
    status: str
    reason: str | None
    shard: str | None
    shard_row: int | None


@dataclass(frozen=True)
class Decoded:
    """One successfully encoded image of a batch: its row id, pixel size and row in the batch's shard."""

    id: int
    width: int
    height: int
    file_meta: dict[str, Any] | None = None  # fields read from the file's EXIF/IPTC/XMP (indexer.ingest.file_meta)


@dataclass(frozen=True)
class RowChange:
    """A row the plan inserts (`id` None) or rewrites: stat, hash, status and embedding location."""

    path: str
    content_hash: str | None
    size: int
    mtime_ns: int
    status: str
    reason: str | None = None
    shard: str | None = None
    shard_row: int | None = None
    id: int | None = None
    copy_from: int | None = None  # reused embedding: the donor row whose size and file metadata apply too


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def connect(db_path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Open the database; read-only connections never create or migrate anything."""
    if readonly:
        conn = _connect_readonly(Path(db_path))
    else:
        conn = sqlite3.connect(db_path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a committed batch must survive power loss, not just SIGKILL
    conn.row_factory = sqlite3.Row
    return conn


def _connect_readonly(db_path: Path) -> sqlite3.Connection:
    """mode=ro; on a read-only directory a WAL database cannot get its -shm file, so fall back to
    immutable=1 (nothing can be writing a store that nobody can write)."""
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        return sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)


class MetadataStore:
    """Typed access to the live database; all writes go through methods that commit atomically."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    @classmethod
    def open(cls, db_path: Path) -> MetadataStore:
        store = cls(connect(db_path))
        store.migrate()
        return store

    def close(self) -> None:
        self.conn.close()

    def migrate(self) -> None:
        """Create the schema, or bring an older store forward in one transaction (schema_version in meta)."""
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        found = self.get_meta("schema_version")
        if found is not None and int(found) > SCHEMA_VERSION:
            raise StoreError(f"store schema {found} is newer than this indexer supports ({SCHEMA_VERSION})")
        if found == "1":
            self.conn.executescript(_MIGRATE_V1)
        with self.conn:
            self.conn.executescript(_SCHEMA)
            if found is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """One key inside the caller's transaction (the methods below open theirs; use those from outside)."""
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def update_meta(self, values: Mapping[str, str]) -> None:
        """Several meta keys in one transaction."""
        with self.conn:
            for key, value in values.items():
                self.set_meta(key, value)

    def delete_meta(self, key: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))

    def rows(self) -> dict[str, ImageRow]:
        """Every row keyed by its lossless path (os.fsdecode of the stored bytes)."""
        cur = self.conn.execute(
            "SELECT id, path_raw, content_hash, size, mtime_ns, status, reason, shard, shard_row FROM images"
        )
        rows = {}
        for r in cur:
            key = from_raw(r[1])
            rows[key] = ImageRow(r[0], key, *r[2:])
        return rows

    def pending(self) -> list[tuple[int, str]]:
        """(id, lossless relative path) of every row still to encode, ascending id."""
        cur = self.conn.execute("SELECT id, path_raw FROM images WHERE status = 'pending' ORDER BY id")
        return [(int(i), from_raw(raw)) for i, raw in cur]

    def find(self, ref: str) -> list[tuple[int, str]]:
        """(id, display path) of the rows an id or a relative path (lossless or display form) names."""
        if ref.isdigit():
            cur = self.conn.execute("SELECT id, path FROM images WHERE id = ?", (int(ref),))
        else:
            cur = self.conn.execute("SELECT id, path FROM images WHERE path_raw = ? OR path = ?",
                                    (to_raw(ref.strip("/")), display(ref.strip("/"))))
        return [(int(i), str(p)) for i, p in cur]

    def counts(self) -> dict[str, int]:
        found = dict(self.conn.execute("SELECT status, COUNT(*) FROM images GROUP BY status").fetchall())
        return {s: int(found.get(s, 0)) for s in STATUSES}

    def failures(self) -> list[dict[str, str]]:
        cur = self.conn.execute("SELECT path, reason FROM images WHERE status = 'failed' ORDER BY path_raw")
        return [{"path": p, "reason": r} for p, r in cur]

    def embedding_refs(self) -> list[tuple[int, str, int]]:
        """(id, shard, row) of every indexed image, ascending id: what the next index version contains."""
        cur = self.conn.execute(
            "SELECT id, shard, shard_row FROM images WHERE status = 'indexed' ORDER BY id"
        )
        return [tuple(r) for r in cur]

    def shard_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM shards ORDER BY name")]

    def next_shard_number(self) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM shards").fetchone()
        last = self.conn.execute("SELECT MAX(name) FROM shards").fetchone()[0]
        return max(int(row[0]), int(last) + 1 if last else 0)

    def commit_batch(
        self, shard: str | None, decoded: list[Decoded], failed: list[tuple[int, str]]
    ) -> None:
        """Record one batch atomically: the shard file (already on disk), its rows, and the failures.

        A decoded row takes the metadata read from its file; the fields the sidecar set keep precedence.
        """
        stamp = now()
        sidecars = self._sidecars([d.id for d in decoded] + [i for i, _ in failed])
        assign = ", ".join(f"{f}=?" for f in EFFECTIVE_FIELDS)
        with self.conn:
            if shard is not None:
                self.conn.execute(
                    "INSERT INTO shards(name, rows, created_at) VALUES (?, ?, ?)", (shard, len(decoded), stamp)
                )
            self.conn.executemany(
                f"UPDATE images SET status='indexed', reason=NULL, width=?, height=?, shard=?, shard_row=?,"
                f" file_meta=?, {assign}, updated_at=? WHERE id=?",
                [(d.width, d.height, shard, i, _json_or_null(d.file_meta),
                  *effective_values(d.file_meta, sidecars.get(d.id)), stamp, d.id)
                 for i, d in enumerate(decoded)],
            )
            self.conn.executemany(
                f"UPDATE images SET status='failed', reason=?, shard=NULL, shard_row=NULL, file_meta=NULL,"
                f" {assign}, updated_at=? WHERE id=?",
                [(reason, *effective_values(None, sidecars.get(row_id)), stamp, row_id) for row_id, reason in failed],
            )

    def _sidecars(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for chunk in batched(ids, 500):
            marks = ",".join("?" * len(chunk))
            for row_id, raw in self.conn.execute(
                f"SELECT id, sidecar FROM images WHERE sidecar IS NOT NULL AND id IN ({marks})", chunk
            ):
                found[int(row_id)] = json.loads(raw)
        return found

    def reset_embeddings(self, meta: dict[str, str]) -> None:
        """A different encoder: no stored embedding is comparable any more, so every indexed row re-encodes."""
        with self.conn:
            self.conn.execute(
                "UPDATE images SET shard=NULL, shard_row=NULL, updated_at=?,"
                " status=CASE WHEN status='indexed' THEN 'pending' ELSE status END", (now(),)
            )
            for key, value in {**meta, "dirty": "1"}.items():
                self.set_meta(key, value)

    def mark_published(self, version: str) -> None:
        """The rows now match `version`: record it and clear `dirty` (= the rows changed since the last
        published version; it survives a kill before publish) in one transaction."""
        self.update_meta({"published": version, "dirty": "0"})

    @property
    def dirty(self) -> bool:
        return self.get_meta("dirty") == "1"

    def apply_plan(self, changes: list[RowChange], deleted: list[int], meta: dict[str, str]) -> None:
        """One transaction: either the whole plan of this run is recorded or none of it."""
        stamp = now()
        with self.conn:
            if changes or deleted:
                self.set_meta("dirty", "1")
            for key, value in meta.items():
                self.set_meta(key, value)
            self.conn.executemany(
                "UPDATE images SET status='deleted', updated_at=? WHERE id=?", [(stamp, i) for i in deleted]
            )
            self.conn.executemany(
                "UPDATE images SET path=?, path_raw=?, content_hash=?, size=?, mtime_ns=?, status=?, reason=?, shard=?,"
                " shard_row=?, updated_at=? WHERE id=?",
                [(*_values(c), stamp, c.id) for c in changes if c.id is not None],
            )
            self.conn.executemany(
                "INSERT INTO images(path, path_raw, content_hash, size, mtime_ns, status, reason, shard, shard_row,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*_values(c), stamp, stamp) for c in changes if c.id is None],
            )
            self._copy_file_meta([c for c in changes if c.copy_from is not None])

    def _copy_file_meta(self, changes: list[RowChange]) -> None:
        """Same bytes, same pixels and metadata: a reused row takes its donor's size and file fields."""
        assign = ", ".join(f"{f}=?" for f in EFFECTIVE_FIELDS)
        for c in changes:
            donor = self.conn.execute("SELECT width, height, file_meta FROM images WHERE id = ?",
                                      (c.copy_from,)).fetchone()
            if donor is None:
                continue
            meta = json.loads(donor[2]) if donor[2] else None
            sidecar = self.conn.execute("SELECT sidecar FROM images WHERE path_raw = ?", (to_raw(c.path),)).fetchone()
            side = json.loads(sidecar[0]) if sidecar and sidecar[0] else None
            self.conn.execute(
                f"UPDATE images SET width=?, height=?, file_meta=?, {assign} WHERE path_raw=?",
                (donor[0], donor[1], donor[2], *effective_values(meta, side), to_raw(c.path)),
            )

    def drop_unreferenced_shards(self) -> list[str]:
        """Forget shards no row points at any more; returns their names so the files can go too."""
        with self.conn:
            names = [
                r[0]
                for r in self.conn.execute(
                    "SELECT name FROM shards WHERE name NOT IN (SELECT DISTINCT shard FROM images"
                    " WHERE shard IS NOT NULL)"
                )
            ]
            self.conn.executemany("DELETE FROM shards WHERE name = ?", [(n,) for n in names])
        return names

    def apply_sidecar(self, records: dict[str, dict[str, Any]]) -> tuple[int, int]:
        """Merge valid sidecar records into their rows; returns (rows changed, records naming no row).

        A record holds only the fields its line gave: an absent field keeps its stored value, an explicit
        null clears it. A path without a (valid) line changes nothing, so a missing, unreadable or partly
        malformed sidecar never wipes metadata.
        """
        if not records:
            return 0, 0
        wanted = {to_raw(key): (rec, json.dumps(rec, sort_keys=True)) for key, rec in records.items()}
        updates, matched = [], 0
        cur = self.conn.execute("SELECT id, path_raw, sidecar, file_meta FROM images")
        for row_id, raw, stored, file_meta in cur:
            found = wanted.get(bytes(raw))
            if found is None:
                continue
            matched += 1
            rec, text = found
            if stored == text:  # the common no-op: the stored fields are exactly this line's
                continue
            old = json.loads(stored) if stored else {}
            new = {**old, **rec}
            if new != old:
                meta = json.loads(file_meta) if file_meta else None
                updates.append((*effective_values(meta, new), json.dumps(new, sort_keys=True), now(), row_id))
        assign = ", ".join(f"{f}=?" for f in EFFECTIVE_FIELDS)
        with self.conn:
            self.conn.executemany(f"UPDATE images SET {assign}, sidecar=?, updated_at=? WHERE id=?", updates)
            if updates:
                self.set_meta("dirty", "1")
        return len(updates), len(wanted) - matched


def effective_values(file_meta: dict[str, Any] | None, sidecar: dict[str, Any] | None) -> tuple[Any, ...]:
    """EFFECTIVE_FIELDS in order: the sidecar's value when it set the field (even to null), else the file's."""
    file_meta, sidecar = file_meta or {}, sidecar or {}
    values = []
    for name in EFFECTIVE_FIELDS:
        value = sidecar[name] if name in sidecar else file_meta.get(name)
        if name == "tags" and value is not None:
            value = json.dumps(value)
        values.append(value)
    return tuple(values)


def _json_or_null(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, sort_keys=True) if value else None


def _values(c: RowChange) -> tuple[Any, ...]:
    return (display(c.path), to_raw(c.path), c.content_hash, c.size, c.mtime_ns, c.status, c.reason, c.shard,
            c.shard_row)


def batched(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
