"""File checks for a version's files and its encoder's files, at three levels.

- `size`: the recorded size only (files of at most 4 MiB are always hashed whole: it costs nothing);
- `sampled`: the size plus `sample_sha256`, a sha256 over the size and 64 blocks of 64 KiB spread evenly over
  the file (first and last included). It reads 4 MiB per file whatever its size, so a 1M-vector store opens in
  milliseconds instead of the seconds a full hash of its ~2 GB takes. It catches a replaced, truncated,
  zero-filled or shifted file; a corruption confined to bytes between the samples needs the full check, which
  the service runs in the background right after such a start (search.artifact.reload);
- `full`: the size plus the sha256 of every byte.

An entry written before `sample_sha256` existed has none: the sampled level then hashes that file in full.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

from search.artifact.encoder import file_sha256
from search.artifact.manifest import ArtifactError, FileEntry

__all__ = ["CHECK_LEVELS", "CheckLevel", "check_file", "file_entry", "sample_sha256"]

CheckLevel = Literal["size", "sampled", "full"]
CHECK_LEVELS: tuple[CheckLevel, ...] = ("size", "sampled", "full")
SAMPLE_BLOCKS = 64
SAMPLE_BLOCK_BYTES = 64 << 10
ALWAYS_HASHED_BYTES = 4 << 20  # what a sample would read whole anyway (spec, tokenizer, tiny stores)


def sample_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 over the file's size and SAMPLE_BLOCKS evenly spread blocks (the whole file when it is smaller)."""
    size = os.stat(path).st_size
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as fh:
        if size <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES:
            digest.update(fh.read())
            return digest.hexdigest()
        last = size - SAMPLE_BLOCK_BYTES
        for i in range(SAMPLE_BLOCKS):
            fh.seek(last * i // (SAMPLE_BLOCKS - 1))
            digest.update(fh.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()


def file_entry(path: str | os.PathLike[str]) -> FileEntry:
    """The manifest entry of a file as written now: size, sha256 and sampled sha256."""
    return FileEntry(sha256=file_sha256(path), bytes=os.stat(path).st_size, sample_sha256=sample_sha256(path))


def check_file(path: Path, entry: FileEntry, level: CheckLevel, what: str) -> None:
    """Raise ArtifactError naming `what` and the file when it is missing or fails the `level` check."""
    if not path.is_file():
        raise ArtifactError(f"{what}: {path.name} is missing ({path})")
    size = path.stat().st_size
    if size != entry.bytes:
        raise ArtifactError(f"{what}: {path.name} has {size} bytes, manifest says {entry.bytes} "
                            "(truncated or replaced?)")
    full = level == "full" or entry.bytes <= ALWAYS_HASHED_BYTES or (level == "sampled" and not entry.sample_sha256)
    if full:
        if file_sha256(path) != entry.sha256:
            raise ArtifactError(f"{what}: {path.name} fails its sha256 checksum")
    elif level == "sampled" and sample_sha256(path) != entry.sample_sha256:
        raise ArtifactError(f"{what}: {path.name} fails its sampled sha256 checksum")
