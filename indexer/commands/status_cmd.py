"""Print the store's current index version, its image counts and every failure with its reason."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="store directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def store_status(store: Path) -> dict[str, Any]:
    """Current version plus the live database's counts and failures (relative paths)."""
    from indexer.storage.store import DB_NAME, MetadataStore, connect
    from search.artifact.manifest import ArtifactError, read_manifest
    from search.artifact.takedown import TAKEDOWN_FILE, read_takedowns
    from search.artifact.version import current_path, current_version

    db_path = Path(store) / DB_NAME
    if not db_path.is_file():
        raise FileNotFoundError(f"no indexer database at {db_path}: run `python -m indexer build` first")
    db = MetadataStore(connect(db_path, readonly=True))
    try:
        counts = db.counts()
        try:
            shards: int | None = read_manifest(current_path(Path(store))).shard_count
        except ArtifactError:
            shards = None
        return {
            "version": current_version(Path(store)),
            "shards": shards,
            "indexed": counts["indexed"],
            "failed": counts["failed"],
            "deleted": counts["deleted"],
            "pending": counts["pending"],
            "image_root": db.get_meta("image_root"),
            "failures": db.failures(),
            "takedowns": sorted(read_takedowns(Path(store) / TAKEDOWN_FILE)["active"].values(),
                                key=lambda t: t["id"]),
        }
    finally:
        db.close()


def main(args: argparse.Namespace) -> int:
    import sqlite3

    from indexer.ingest.paths import printable

    try:
        status = store_status(args.store)
    except (FileNotFoundError, ValueError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"version:  {status['version'] or '(none published)'}")
    if status["shards"] and status["shards"] > 1:
        print(f"shards:   {status['shards']}")
    for key in ("indexed", "failed", "deleted", "pending"):
        print(f"{key + ':':9} {status[key]}")
    for failure in status["failures"]:
        print(f"  FAILED {printable(failure['path'])}: {failure['reason']}")
    print(f"takedowns: {len(status['takedowns'])}")
    for t in status["takedowns"]:
        print(f"  TAKEN DOWN {t['id']} {printable(t['path'] or '')} at {t['at']}: {t['reason']}")
    return 0
