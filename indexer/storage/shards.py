"""Float16 embedding shards: STORE/shards/<name>.f16.npy (N x D) and <name>.ids.npy (N int64).

A shard file is written to a temporary name, fsynced and renamed into place *before* the database row that
names it is committed; a shard on disk that the database does not name is debris from a killed run and is
removed at the start of the next one. Shards are plain `.npy`, so they memory-map.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

VECTORS_SUFFIX = ".f16.npy"
IDS_SUFFIX = ".ids.npy"
TMP_SUFFIX = ".tmp"


def shard_name(number: int) -> str:
    return f"{number:08d}"


def write_shard(directory: Path, name: str, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Durably write one shard (vectors as float16, ids as int64)."""
    if len(ids) != len(vectors):
        raise ValueError(f"shard {name}: {len(ids)} ids for {len(vectors)} vectors")
    directory.mkdir(parents=True, exist_ok=True)
    _write_npy(directory / f"{name}{IDS_SUFFIX}", np.asarray(ids, dtype=np.int64))
    _write_npy(directory / f"{name}{VECTORS_SUFFIX}", np.asarray(vectors, dtype=np.float16))
    fsync_dir(directory)


def _write_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (a file's own fsync does not cover its entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_vectors(directory: Path, name: str) -> np.ndarray:
    """Memory-mapped (N, D) float16 view of one shard."""
    vectors: np.memmap[Any, np.dtype[np.float16]] = np.load(directory / f"{name}{VECTORS_SUFFIX}", mmap_mode="r")
    return vectors


def open_ids(directory: Path, name: str) -> np.ndarray:
    ids: np.memmap[Any, np.dtype[np.int64]] = np.load(directory / f"{name}{IDS_SUFFIX}", mmap_mode="r")
    return ids


def gather(directory: Path, refs: list[tuple[int, str, int]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Collect (id, shard, row) references into ascending ids and their float16 vectors."""
    ids = np.fromiter((r[0] for r in refs), dtype=np.int64, count=len(refs))
    vectors = np.empty((len(refs), dim), dtype=np.float16)
    by_shard: dict[str, tuple[list[int], list[int]]] = {}
    for position, (_, shard, row) in enumerate(refs):
        slots, rows = by_shard.setdefault(shard, ([], []))
        slots.append(position)
        rows.append(row)
    for shard, (slots, rows) in by_shard.items():
        vectors[slots] = open_vectors(directory, shard)[rows]
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order]


def remove_debris(directory: Path, known: set[str]) -> list[str]:
    """Delete temporary files and shards the database does not name (left by a killed run)."""
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        name = path.name
        stem = name.split(".", 1)[0]
        if name.endswith(TMP_SUFFIX) or stem not in known:
            path.unlink()
            removed.append(name)
    return removed


def delete_shards(directory: Path, names: list[str]) -> None:
    for name in names:
        for suffix in (VECTORS_SUFFIX, IDS_SUFFIX):
            (directory / f"{name}{suffix}").unlink(missing_ok=True)
