"""Read-only access to a published index version: manifest, FAISS index, float16 vectors, id map, metadata.

`open_current(store)` / `open_version(path)` check the version before returning it (manifest schema, every
file present with the recorded size, array shapes against the manifest and encoder, the index's size); with
`checks="sampled"` or `"full"` they also hash every file's samples or every byte (search.artifact.checksums).
A version that lists encoder files (search.artifact.bundle) opens only when they verify too. Anything wrong
raises ArtifactError, which the service uses to refuse a reload and keep serving the version it has.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.artifact import ann
from search.artifact.bundle import EncoderBundle, verify_encoder_files
from search.artifact.checksums import CheckLevel, check_file
from search.artifact.encoder import EncoderIdentity, encoder_mismatch
from search.artifact.manifest import (
    IDS_FILE,
    INDEX_FILE,
    METADATA_FILE,
    VECTORS_FILE,
    ArtifactError,
    Manifest,
    read_manifest,
)

__all__ = ["CURRENT_LINK", "Artifact", "ArtifactError", "SearchResult", "current_link", "current_path",
           "check_version_files", "current_version", "open_current", "open_version"]

CURRENT_LINK = "current"


@dataclass(frozen=True)
class SearchResult:
    """Per query row: image ids, their ANN-stage scores and exact (float16 rerank) scores; -1 id = no hit."""

    ids: np.ndarray
    ann_scores: np.ndarray
    exact_scores: np.ndarray


def current_link(store: str | os.PathLike[str]) -> Path:
    """`STORE/current`: the symlink naming the served version (the one place its name is spelled)."""
    return Path(store) / CURRENT_LINK


def current_version(store: str | os.PathLike[str]) -> str | None:
    """Name of the version `STORE/current` points to, or None when nothing (that exists) is published."""
    link = current_link(store)
    if not link.exists():
        return None
    return Path(os.path.realpath(link)).name


def current_path(store: str | os.PathLike[str]) -> Path:
    """The version directory `STORE/current` points to (resolved), or ArtifactError when there is none."""
    link = current_link(store)
    if not link.is_symlink() and not link.exists():
        raise ArtifactError(f"{link} does not exist: no index version has been published in {store}")
    target = link.resolve()
    if not target.is_dir():
        raise ArtifactError(f"{link} points to {target}, which is not a directory")
    return target


def open_current(store: str | os.PathLike[str], *, checks: CheckLevel = "size",
                 expect_encoder: EncoderIdentity | None = None) -> Artifact:
    return open_version(current_path(store), checks=checks, expect_encoder=expect_encoder)


def open_version(path: str | os.PathLike[str], *, checks: CheckLevel = "size",
                 expect_encoder: EncoderIdentity | None = None) -> Artifact:
    """Open and check one version directory; `expect_encoder` refuses vectors from a different encoder."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a directory")
    manifest = read_manifest(path)
    if expect_encoder is not None:
        reason = encoder_mismatch(expect_encoder, manifest.encoder, f"version {manifest.version}")
        if reason is not None:
            raise ArtifactError(reason)
    bundle = check_version_files(path, manifest, checks)
    return Artifact(path, manifest, bundle)


def check_version_files(path: Path, manifest: Manifest, checks: CheckLevel) -> EncoderBundle | None:
    """Check a version's files and its encoder's files at `checks`; returns the verified encoder bundle."""
    for name, entry in manifest.files.items():
        check_file(path / name, entry, checks, f"version {manifest.version}")
    return verify_encoder_files(path, manifest, checks)


class Artifact:
    """One opened version. Vectors and ids are memory-mapped; the FAISS index is loaded into RAM.

    Thread-safe for searching: FAISS search is re-entrant with per-call parameters, and metadata reads use one
    read-only SQLite connection per thread.
    """

    def __init__(self, path: Path, manifest: Manifest, encoder_bundle: EncoderBundle | None = None):
        self.path = path
        self.manifest = manifest
        self.encoder_bundle = encoder_bundle  # verified encoder files; None when the version carries none
        self.version = manifest.version
        self.ids, self.vectors = self._load_arrays()
        self.index = self._load_index()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._conn_lock = threading.Lock()
        self._check_metadata()

    # -- loading --------------------------------------------------------------------------------------
    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        m, n, dim = self.manifest, self.manifest.counts["vectors"], self.manifest.dim
        try:
            ids = np.load(self.path / IDS_FILE, mmap_mode="r")
            vectors = np.load(self.path / VECTORS_FILE, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise ArtifactError(f"version {m.version}: cannot read arrays ({exc})") from exc
        if ids.dtype != np.int64 or ids.shape != (n,):
            raise ArtifactError(f"version {m.version}: ids.npy is {ids.dtype}{ids.shape}, expected int64 ({n},)")
        if vectors.dtype != np.float16 or vectors.shape != (n, dim):
            raise ArtifactError(
                f"version {m.version}: vectors are {vectors.dtype}{vectors.shape}, expected float16 ({n}, {dim})"
            )
        if n > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            raise ArtifactError(f"version {m.version}: ids.npy is not strictly ascending")
        return ids, vectors

    def _load_index(self) -> Any:
        import faiss

        try:
            index = faiss.read_index(str(self.path / INDEX_FILE))
        except RuntimeError as exc:
            raise ArtifactError(f"version {self.version}: FAISS cannot read the index ({exc})") from exc
        if index.d != self.manifest.dim or index.ntotal != self.manifest.counts["vectors"]:
            raise ArtifactError(
                f"version {self.version}: index holds {index.ntotal}x{index.d}, "
                f"manifest says {self.manifest.counts['vectors']}x{self.manifest.dim}"
            )
        return index

    def _check_metadata(self) -> None:
        try:
            self._conn().execute("SELECT id FROM images LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise ArtifactError(f"version {self.version}: metadata snapshot unreadable ({exc})") from exc

    # -- search ---------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def search_params(self) -> dict[str, Any]:
        """The tuned FAISS search parameters recorded in the manifest (a fresh dict; safe to modify)."""
        return dict(self.manifest.index.params)

    @property
    def rerank_candidates(self) -> int:
        return int(self.manifest.index.rerank_candidates)

    def ann_search(self, queries: np.ndarray, k: int,
                   params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """ANN stage only: (scores, ids), id -1 where fewer than k results. `params` default: the tuned ones."""
        scores, rows = self.ann_rows(queries, k, params)
        return scores, self._rows_to_ids(rows)

    def ann_rows(self, queries: np.ndarray, k: int,
                 params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """ANN stage by row position (-1 where fewer than k): a caller that gathers the candidates' vectors next
        (the rerank) then needs no id -> row lookup (`ids_at` gives their ids)."""
        params = self.search_params if params is None else params
        return ann.ann_search(self.index, queries, k, params)

    def ids_at(self, rows: np.ndarray) -> np.ndarray:
        """Image ids at row positions (all >= 0)."""
        return np.asarray(self.ids[np.asarray(rows, dtype=np.int64)], dtype=np.int64)

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the float16 vectors: the ground truth. (scores, ids)."""
        scores, rows = ann.exact_search(self.vectors, queries, k)
        return scores, self._rows_to_ids(rows)

    def search(self, queries: np.ndarray, k: int, params: Mapping[str, Any] | None = None,
               candidates: int | None = None) -> SearchResult:
        """ANN over-fetch of `candidates` (default: the tuned count, at least k), then exact float16 rerank."""
        params = self.search_params if params is None else params
        fetch = max(int(k), int(candidates if candidates is not None else self.rerank_candidates))
        ann_s, ann_rows = ann.ann_search(self.index, queries, fetch, params)
        exact_s, rows = ann.rerank(self.vectors, queries, ann_rows, k)
        ann_of = np.full(rows.shape, np.nan, dtype=np.float32)
        for q in range(rows.shape[0]):
            lookup = dict(zip(ann_rows[q].tolist(), ann_s[q].tolist(), strict=True))
            ann_of[q] = [lookup.get(r, np.nan) for r in rows[q].tolist()]
        return SearchResult(ids=self._rows_to_ids(rows), ann_scores=ann_of, exact_scores=exact_s)

    def rows_for(self, ids: Iterable[int]) -> np.ndarray:
        """Row positions of image ids; KeyError names any id that is not in this version."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids)
        bad = (rows >= len(self.ids)) | (self.ids[np.minimum(rows, len(self.ids) - 1)] != ids)
        if bad.any():
            raise KeyError(f"ids not in version {self.version}: {ids[bad][:10].tolist()}")
        return rows

    def vectors_for(self, ids: Iterable[int]) -> np.ndarray:
        """float32 copies of the stored vectors of these image ids (in the given order)."""
        return self.vectors_at(self.rows_for(ids))

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """float32 copies of the stored vectors at row positions, in the given order (reading them in file order
        instead was 6-9% slower for 200 rows of a 1M store: benchmarks/rerank_path.py)."""
        return np.asarray(self.vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    def _rows_to_ids(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(rows >= 0, self.ids[np.clip(rows, 0, None)], -1) if len(self.ids) else rows

    # -- metadata -------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            uri = (self.path / METADATA_FILE).as_uri() + "?mode=ro&immutable=1"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._conn_lock:
                self._connections.append(conn)
        return conn

    def metadata_conn(self) -> sqlite3.Connection:
        """This thread's read-only connection to the snapshot, for reads `metadata` does not cover (whole-column
        passes such as search.query.examples)."""
        return self._conn()

    def metadata(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Snapshot rows as stored (dicts) in the order of `ids`; KeyError for unknown ids."""
        wanted = [int(i) for i in ids]
        if not wanted:
            return []
        rows: dict[int, dict[str, Any]] = {}
        conn = self._conn()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT * FROM images WHERE id IN ({marks})", chunk):
                rows[row["id"]] = dict(row)
        missing = [i for i in wanted if i not in rows]
        if missing:
            raise KeyError(f"ids not in the metadata snapshot of {self.version}: {missing[:10]}")
        return [rows[i] for i in wanted]

    def close(self) -> None:
        """Close every thread's SQLite connection (connections are opened with check_same_thread=False)."""
        with self._conn_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Artifact({self.version!r}, {self.manifest.index.factory!r}, n={len(self.ids)})"

