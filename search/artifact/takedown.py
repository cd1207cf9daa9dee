"""Immediate takedown: image ids hidden from every endpoint without a reindex.

The list lives in `STORE/takedowns.json`, outside the versions, so one write reaches every replica reading
the store. Writers (`python -m indexer takedown|restore`, `POST /admin/takedown`) hold `STORE/.takedowns.lock`,
read, change and replace the file atomically (temp file + fsync + os.replace), bumping `generation`.
Readers (`TakedownList`) stat the file at most every `check_s` seconds and re-read it when its identity
(inode, size, mtime) changed, so a takedown applies within about `check_s` plus one request. Each publish
copies the file into the new version (`versions/<v>/takedowns.json`); a reader whose store has no live file
falls back to the served version's copy, so a version moved elsewhere keeps its takedowns.

File: {"schema": 1, "generation": N, "active": {"<id>": {id, path, reason, at}}, "history": [{action, id, path,
reason, at}]} - history keeps every takedown and restore with its time and reason.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["TAKEDOWN_FILE", "TakedownList", "apply_takedowns", "read_takedowns"]

TAKEDOWN_FILE = "takedowns.json"
_LOCK_FILE = ".takedowns.lock"


def read_takedowns(path: Path) -> dict[str, Any]:
    """The parsed file, or an empty list when it does not exist."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"schema": 1, "generation": 0, "active": {}, "history": []}
    if not isinstance(data, dict) or not isinstance(data.get("active"), dict):
        raise ValueError(f"{path} is not a takedown list")
    found: dict[str, Any] = data
    return found


def apply_takedowns(store: Path, entries: Iterable[tuple[int, str | None]], reason: str,
                    restore: bool = False) -> dict[str, Any]:
    """Take down (or restore) (id, display path) entries; returns the new file content. Atomic, locked."""
    from filelock import FileLock

    store = Path(store)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with FileLock(store / _LOCK_FILE, timeout=30):
        data = read_takedowns(store / TAKEDOWN_FILE)
        for image_id, path in entries:
            record = {"id": int(image_id), "path": path, "reason": reason, "at": stamp}
            if restore:
                data["active"].pop(str(image_id), None)
            else:
                data["active"][str(image_id)] = record
            data["history"].append({"action": "restore" if restore else "takedown", **record})
        data["generation"] = int(data.get("generation", 0)) + 1
        _write_atomic(store / TAKEDOWN_FILE, data)
    return data


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class TakedownList:
    """The hidden ids of a store, re-read when the file changes (checked at most every `check_s`)."""

    def __init__(self, store: Path, check_s: float = 0.5):
        self.path = Path(store) / TAKEDOWN_FILE
        self.check_s = check_s
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._identity: tuple[int, int, int] | None = None
        self._fallback: tuple[Path, frozenset[int]] | None = None
        self._ids: frozenset[int] = frozenset()
        self.last_error: str | None = None

    def hidden(self, version_dir: Path | None = None) -> frozenset[int]:
        """Ids to hide now; `version_dir` (the served version) supplies its copy when the store has no file."""
        now = time.monotonic()
        if now - self._checked >= self.check_s:
            with self._lock:
                if now - self._checked >= self.check_s:
                    self._refresh()
                    self._checked = now
        if self._identity is None and version_dir is not None:
            return self._version_copy(Path(version_dir))
        return self._ids

    def invalidate(self) -> None:
        """Re-check the file on the next call (this process just wrote it)."""
        self._checked = float("-inf")

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._identity, self._ids = None, frozenset()
            return
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if identity == self._identity:
            return
        try:
            self._ids = frozenset(int(k) for k in read_takedowns(self.path)["active"])
            self._identity, self.last_error = identity, None
        except (OSError, ValueError) as exc:  # keep the last good list: never un-hide because of a bad write
            self.last_error = f"takedown list unreadable, keeping the previous one: {exc}"

    def _version_copy(self, version_dir: Path) -> frozenset[int]:
        cached = self._fallback
        if cached is not None and cached[0] == version_dir:
            return cached[1]
        try:
            ids = frozenset(int(k) for k in read_takedowns(version_dir / TAKEDOWN_FILE)["active"])
        except (OSError, ValueError):
            ids = frozenset()
        self._fallback = (version_dir, ids)
        return ids


class UnknownImageError(LookupError):
    """A takedown names an id or path the served version does not hold."""


def resolve_refs(artifact: Any, ids: list[int], paths: list[str]) -> list[tuple[int, str | None]]:
    """(id, display path) for ids and relative paths in the served version; UnknownImageError otherwise.

    A path matches its display form or its exact bytes (os.fsencode of a surrogateescape string)."""
    import sqlite3

    from search.artifact.manifest import METADATA_FILE

    found: list[tuple[int, str | None]] = []
    missing: list[str] = []
    for image_id in ids:
        try:
            (meta,) = artifact.metadata([image_id])
            found.append((int(image_id), meta.get("path")))
        except KeyError:
            missing.append(str(image_id))
    if paths:
        uri = (Path(artifact.path) / METADATA_FILE).as_uri() + "?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True)
        try:
            for path in paths:
                rel = path.strip().lstrip("/")
                try:
                    raw = os.fsencode(rel)
                except UnicodeEncodeError:
                    raw = rel.encode("utf-8", "replace")
                rows = conn.execute("SELECT id, path FROM images WHERE (path = ? OR path_raw = ?)"
                                    " AND status = 'indexed'", (rel, raw)).fetchall()
                found.extend((int(i), str(p)) for i, p in rows)
                if not rows:
                    missing.append(path)
        finally:
            conn.close()
    if missing:
        raise UnknownImageError(f"not in index version {artifact.version}: {', '.join(missing[:20])}")
    return found
