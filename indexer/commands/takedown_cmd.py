"""Take images down from search at once: `python -m indexer takedown --store STORE ID|PATH... --reason TEXT`.

Writes STORE/takedowns.json (search/artifact/takedown.py), which every service replica reading the store re-checks
within `reload.takedown_check_s`; no reindex, and every later publish carries the list into its version.
`restore` shows them again. Both are recorded with time and reason (`python -m indexer status` lists them).
Exit 0 done, 2 could not (unknown id/path, store not writable) with one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESTORE = False


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="store directory")
    parser.add_argument("refs", nargs="+", metavar="ID|PATH", help="image id or path relative to the image root")
    parser.add_argument("--reason", required=True, help="why (kept in the record)")


def resolve(store: Path, refs: list[str]) -> list[tuple[int, str | None]]:
    """(id, display path) for each ref, from the live database; LookupError names the unknown ones."""
    from indexer.storage.store import DB_NAME, MetadataStore, connect

    db_path = Path(store) / DB_NAME
    if not db_path.is_file():
        raise LookupError(f"no indexer database at {db_path}")
    db = MetadataStore(connect(db_path, readonly=True))
    try:
        found, missing = [], []
        for ref in refs:
            rows = db.find(ref)
            found.extend(rows)
            if not rows:
                missing.append(ref)
    finally:
        db.close()
    if missing:
        raise LookupError(f"no image with id or path: {', '.join(map(repr, missing))}")
    return list(dict.fromkeys(found))


def run(args: argparse.Namespace, restore: bool) -> int:
    from search.artifact.takedown import apply_takedowns

    if not args.reason.strip():
        print("error: --reason must not be empty", file=sys.stderr)
        return 2
    try:
        entries = resolve(args.store, args.refs)
        data = apply_takedowns(args.store, entries, args.reason, restore=restore)
    except (LookupError, OSError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    action = "restored" if restore else "taken down"
    print(json.dumps({action.replace(" ", "_"): [{"id": i, "path": p} for i, p in entries],
                      "generation": data["generation"], "active": len(data["active"])}, indent=2))
    return 0


def main(args: argparse.Namespace) -> int:
    return run(args, RESTORE)
