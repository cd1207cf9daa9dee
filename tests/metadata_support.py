"""The one way test stores get a metadata database: the indexer's own schema (MetadataStore.open, schema
version, WAL) and writers (commit_batch for the indexed rows, apply_sidecar for caption/tags/licence/
popularity), so a test store can never drift from what `python -m indexer build` writes.

Only the row ids are chosen by the caller (the indexer's plan takes AUTOINCREMENT ids): tests use ids that
are not row numbers, which catches id/row mix-ups in the search side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.ingest.paths import to_raw
from indexer.storage.store import Decoded, MetadataStore


@dataclass(frozen=True)
class MetaRow:
    """One indexed image: its id and relative path, pixel size, the sidecar fields it carries (caption, tags,
    licence, popularity, taken_at, ...) and when it was first indexed."""

    id: int
    path: str
    width: int = 64
    height: int = 48
    fields: dict[str, Any] = field(default_factory=dict)
    created_at: str = "2024-01-15T00:00:00+00:00"


def write_metadata(db: Path, rows: Sequence[MetaRow], meta: dict[str, str] | None = None) -> Path:
    """Create (or extend) the live database at `db` with `rows`, all status 'indexed'; returns `db`."""
    store = MetadataStore.open(Path(db))
    try:
        with store.conn:
            store.conn.executemany(
                "INSERT INTO images(id, path, path_raw, content_hash, size, mtime_ns, status, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, 0, 0, 'pending', ?, ?)",
                [(r.id, r.path, to_raw(r.path), f"h{r.id}", r.created_at, r.created_at) for r in rows],
            )
            for key, value in (meta or {}).items():
                store.set_meta(key, value)
        store.commit_batch(None, [Decoded(r.id, r.width, r.height) for r in rows], [])
        store.apply_sidecar({r.path: r.fields for r in rows if r.fields})
    finally:
        store.close()
    return Path(db)
