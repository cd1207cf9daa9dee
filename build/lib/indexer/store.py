"""The live metadata database (STORE/metadata.sqlite): one row per image path, row id == FAISS id.

Every change is made in a transaction that leaves the database consistent, so a run killed at any moment
resumes from what was committed. Besides the contract's columns a row carries `shard`/`shard_row`, the
location of its embedding, so a renamed or duplicated file can point at an existing embedding.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

SCHEMA_VERSION = 1
DB_NAME = "metadata.sqlite"
STATUSES = ("pending", "indexed", "failed", "deleted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
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
    shard_row INTEGER
);
CREATE INDEX IF NOT EXISTS images_status ON images(status);
CREATE INDEX IF NOT EXISTS images_hash ON images(content_hash);
CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, created_at TEXT NOT NULL);
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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def connect(db_path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Open the database; read-only connections never create or migrate anything."""
    if readonly:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    else:
        conn = sqlite3.connect(db_path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a committed batch must survive power loss, not just SIGKILL
    conn.row_factory = sqlite3.Row
    return conn


class MetadataStore:
    """Typed access to the live database; all writes go through methods that commit atomically."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    @classmethod
    def open(cls, db_path: Path) -> "MetadataStore":
        store = cls(connect(db_path))
        store.migrate()
        return store

    def close(self) -> None:
        self.conn.close()

    def migrate(self) -> None:
        with self.conn:
            self.conn.executescript(_SCHEMA)
            found = self.get_meta("schema_version")
            if found is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            elif int(found) > SCHEMA_VERSION:
                raise StoreError(f"store schema {found} is newer than this indexer supports ({SCHEMA_VERSION})")

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Callers wrap this in their own transaction."""
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def rows(self) -> dict[str, ImageRow]:
        cur = self.conn.execute(
            "SELECT id, path, content_hash, size, mtime_ns, status, reason, shard, shard_row FROM images"
        )
        return {r["path"]: ImageRow(*r) for r in cur}

    def pending(self) -> list[tuple[int, str]]:
        return [tuple(r) for r in self.conn.execute("SELECT id, path FROM images WHERE status = 'pending' ORDER BY id")]

    def counts(self) -> dict[str, int]:
        found = dict(self.conn.execute("SELECT status, COUNT(*) FROM images GROUP BY status").fetchall())
        return {s: int(found.get(s, 0)) for s in STATUSES}

    def failures(self) -> list[dict[str, str]]:
        cur = self.conn.execute("SELECT path, reason FROM images WHERE status = 'failed' ORDER BY path")
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
        """Record one batch atomically: the shard file (already on disk), its rows, and the failures."""
        stamp = now()
        with self.conn:
            if shard is not None:
                self.conn.execute(
                    "INSERT INTO shards(name, rows, created_at) VALUES (?, ?, ?)", (shard, len(decoded), stamp)
                )
            self.conn.executemany(
                "UPDATE images SET status='indexed', reason=NULL, width=?, height=?, shard=?, shard_row=?,"
                " updated_at=? WHERE id=?",
                [(d.width, d.height, shard, i, stamp, d.id) for i, d in enumerate(decoded)],
            )
            self.conn.executemany(
                "UPDATE images SET status='failed', reason=?, shard=NULL, shard_row=NULL, updated_at=?"
                " WHERE id=?",
                [(reason, stamp, row_id) for row_id, reason in failed],
            )

    def reset_embeddings(self, meta: dict[str, str]) -> None:
        """A different encoder: no stored embedding is comparable any more, so every indexed row re-encodes."""
        with self.conn:
            self.conn.execute(
                "UPDATE images SET shard=NULL, shard_row=NULL, updated_at=?,"
                " status=CASE WHEN status='indexed' THEN 'pending' ELSE status END", (now(),)
            )
            for key, value in {**meta, "dirty": "1"}.items():
                self.set_meta(key, value)

    def mark_dirty(self, dirty: bool) -> None:
        """`dirty` = the rows changed since the last published version (survives a kill before publish)."""
        with self.conn:
            self.set_meta("dirty", "1" if dirty else "0")

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
                "UPDATE images SET path=?, content_hash=?, size=?, mtime_ns=?, status=?, reason=?, shard=?,"
                " shard_row=?, updated_at=? WHERE id=?",
                [(*_values(c), stamp, c.id) for c in changes if c.id is not None],
            )
            self.conn.executemany(
                "INSERT INTO images(path, content_hash, size, mtime_ns, status, reason, shard, shard_row,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*_values(c), stamp, stamp) for c in changes if c.id is None],
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

    def apply_sidecar(self, records: dict[str, dict[str, Any]]) -> int:
        """Set caption/tags/licence/popularity from the sidecar; rows whose values differ only. Returns changes."""
        current = {
            r[0]: tuple(r[1:])
            for r in self.conn.execute("SELECT path, caption, tags, licence, popularity FROM images")
        }
        updates = []
        for path, old in current.items():
            rec = records.get(path, {})
            tags = rec.get("tags")
            new = (rec.get("caption"), json.dumps(tags) if tags is not None else None, rec.get("licence"),
                   rec.get("popularity"))
            if new != old:
                updates.append((*new, now(), path))
        with self.conn:
            self.conn.executemany(
                "UPDATE images SET caption=?, tags=?, licence=?, popularity=?, updated_at=? WHERE path=?", updates
            )
            if updates:
                self.set_meta("dirty", "1")
        return len(updates)


def _values(c: RowChange) -> tuple[Any, ...]:
    return (c.path, c.content_hash, c.size, c.mtime_ns, c.status, c.reason, c.shard, c.shard_row)


def batched(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
