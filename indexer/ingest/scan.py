"""Find candidate image files under an image root.

Symlinks are followed only while they stay inside the root, and every directory is entered at most once
(by device+inode), so a symlink loop or a link to `/` can neither hang the walk nor leak files from outside.
Anything skipped is reported with a reason rather than silently dropped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from indexer.ingest.paths import display


@dataclass(frozen=True)
class Candidate:
    """One image file: `path` is relative to the root, '/'-separated (the store's key), lossless: a name that is
    not valid UTF-8 keeps its bytes as surrogateescape characters (indexer.ingest.paths)."""

    path: str
    abs_path: str
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: links out, loops, errors


def scan(root: Path, extensions: tuple[str, ...], exclude: tuple[Path, ...] = ()) -> ScanResult:
    """Walk `root` depth-first in name order; `exclude` holds directories never to enter (e.g. the store)."""
    root_real = os.path.realpath(root)
    if not os.path.isdir(root_real):
        raise NotADirectoryError(f"image root is not a directory: {root}")
    wanted = {e.lower() for e in extensions}
    excluded = {os.path.realpath(p) for p in exclude}
    result = ScanResult()
    visited: set[tuple[int, int]] = set()
    root_stat = os.stat(root_real)
    visited.add((root_stat.st_dev, root_stat.st_ino))
    stack: list[tuple[str, str]] = [(root_real, "")]
    while stack:
        directory, rel_dir = stack.pop()
        subdirs = _scan_dir(directory, rel_dir, root_real, wanted, excluded, visited, result)
        stack.extend(reversed(subdirs))
    return result


def _scan_dir(
    directory: str,
    rel_dir: str,
    root_real: str,
    wanted: set[str],
    excluded: set[str],
    visited: set[tuple[int, int]],
    result: ScanResult,
) -> list[tuple[str, str]]:
    """Add this directory's image files to `result`; return its subdirectories still to walk."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        reason = f"cannot list directory: {exc.strerror or exc}"
        result.skipped.append({"path": display(rel_dir) or ".", "reason": reason})
        return []
    subdirs: list[tuple[str, str]] = []
    for entry in entries:
        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        try:
            target, st = _follow(entry, root_real)
        except _Skip as skip:
            result.skipped.append({"path": display(rel), "reason": str(skip)})
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if target in excluded:
                continue
            if key in visited:
                reason = "directory already visited (symlink loop or alias)"
                result.skipped.append({"path": display(rel), "reason": reason})
                continue
            visited.add(key)
            subdirs.append((target, rel))
        elif stat.S_ISREG(st.st_mode) and os.path.splitext(entry.name)[1].lower() in wanted:
            result.candidates.append(Candidate(rel, target, st.st_size, st.st_mtime_ns))
    return subdirs


class _Skip(Exception):
    pass


def _follow(entry: os.DirEntry[str], root_real: str) -> tuple[str, os.stat_result]:
    """Real path and stat of `entry`, refusing links that leave the root or dangle."""
    if not entry.is_symlink():
        try:
            return entry.path, entry.stat(follow_symlinks=False)
        except OSError as exc:
            raise _Skip(f"cannot stat: {exc.strerror or exc}") from exc
    target = os.path.realpath(entry.path)
    if target != root_real and not target.startswith(root_real + os.sep):
        raise _Skip("symlink points outside the image root")
    try:
        return target, os.stat(target)
    except OSError as exc:
        raise _Skip(f"broken symlink: {exc.strerror or exc}") from exc
