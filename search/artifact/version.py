"""Read-only access to a published index version: manifest, FAISS index, float16 vectors, id map, metadata.

`open_current(store)` / `open_version(path)` check the version before returning it (manifest schema, every
file present with the recorded size, array shapes against the manifest and encoder, the index's size); with
`checks="sampled"` or `"full"` they also hash every file's samples or every byte (search.artifact.checksums).
A version that lists encoder files (search.artifact.bundle) opens only when they verify too. Anything wrong
raises ArtifactError, which the service uses to refuse a reload and keep serving the version it has.

A version is made of parts (`Artifact.parts`, each a `ShardPart`): one for an unsharded version, S for a
sharded one (search.artifact.manifest, schema 2). Each part is a search.query.shard.ShardSource; the
`Artifact`'s own methods (ids, rows_for, vectors_for, exact_search, search, metadata) answer for the whole
version across its parts. `open_shard(version_dir, i)` opens one part alone with the shared metadata: what a
process serving only that shard loads.
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
    IndexInfo,
    Manifest,
    read_manifest,
)
from search.artifact.shards import shard_of

__all__ = ["CURRENT_LINK", "Artifact", "ArtifactError", "MetadataSnapshot", "SearchResult", "ShardPart",
           "current_link", "current_path", "check_version_files", "current_version", "open_current", "open_shard",
           "open_version"]

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
    """Open and check one version directory (every part of it); `expect_encoder` refuses vectors from a
    different encoder."""
    path, manifest = _read_checked(path, expect_encoder)
    bundle = check_version_files(path, manifest, checks)
    return Artifact(path, manifest, bundle)


def open_shard(path: str | os.PathLike[str], shard: int, *, checks: CheckLevel = "size",
               expect_encoder: EncoderIdentity | None = None) -> ShardPart:
    """Open and check part `shard` of a version and the shared metadata snapshot, nothing else (no other
    part, no encoder files): what a process serving one shard loads. Part 0 of an unsharded version is the
    whole version. The part owns its metadata connections: close it when done."""
    path, manifest = _read_checked(path, expect_encoder)
    if not 0 <= int(shard) < manifest.shard_count:
        raise ArtifactError(f"version {manifest.version} has {manifest.shard_count} shard(s); there is no shard "
                            f"{shard}")
    what = f"version {manifest.version}"
    check_file(path / METADATA_FILE, manifest.files[METADATA_FILE], checks, what)
    _check_part_files(path, manifest, int(shard), checks)
    snapshot = MetadataSnapshot(path, manifest.version)
    try:
        return ShardPart(path, manifest, int(shard), snapshot, owns_metadata=True)
    except BaseException:
        snapshot.close()
        raise


def _read_checked(path: str | os.PathLike[str], expect_encoder: EncoderIdentity | None) -> tuple[Path, Manifest]:
    path = Path(path).resolve()
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a directory")
    manifest = read_manifest(path)
    if expect_encoder is not None:
        reason = encoder_mismatch(expect_encoder, manifest.encoder, f"version {manifest.version}")
        if reason is not None:
            raise ArtifactError(reason)
    return path, manifest


def check_version_files(path: Path, manifest: Manifest, checks: CheckLevel) -> EncoderBundle | None:
    """Check a version's files (every part's) and its encoder's files at `checks`; returns the verified
    encoder bundle."""
    for name, entry in manifest.files.items():
        check_file(path / name, entry, checks, f"version {manifest.version}")
    for shard in range(len(manifest.shards)):
        _check_part_files(path, manifest, shard, checks)
    return verify_encoder_files(path, manifest, checks)


def _check_part_files(path: Path, manifest: Manifest, shard: int, checks: CheckLevel) -> None:
    if not manifest.shards:
        for name in (INDEX_FILE, VECTORS_FILE, IDS_FILE):
            check_file(path / name, manifest.files[name], checks, f"version {manifest.version}")
        return
    part = manifest.shards[shard]
    if not (path / part.dir).is_dir():
        raise ArtifactError(f"version {manifest.version}: shard {shard} is missing ({path / part.dir} does not "
                            "exist)")
    for name, entry in part.files.items():
        check_file(path / part.dir / name, entry, checks, f"version {manifest.version} shard {shard} ({part.dir})")


class MetadataSnapshot:
    """A version's metadata.sqlite, read-only, one connection per thread (shared by all parts of a version)."""

    def __init__(self, version_dir: Path, version: str):
        self.path = Path(version_dir) / METADATA_FILE
        self.version = version
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self.conn().execute("SELECT id FROM images LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ArtifactError(f"version {version}: metadata snapshot unreadable ({exc})") from exc

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            uri = self.path.as_uri() + "?mode=ro&immutable=1"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def metadata(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Snapshot rows as stored (dicts) in the order of `ids`; KeyError for unknown ids."""
        wanted = [int(i) for i in ids]
        if not wanted:
            return []
        rows: dict[int, dict[str, Any]] = {}
        conn = self.conn()
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
        """Close every thread's connection (connections are opened with check_same_thread=False)."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


class ShardPart:
    """One part of a version: its ids and float16 vectors and its FAISS index (all memory-mapped: one page-cache
    copy per node, `ann.read_index`), its tuned search parameters, and the version's shared metadata. A
    search.query.shard.ShardSource.

    Checked on open: array types and shapes against the manifest, ids strictly ascending, the index's size and
    dimension, and (sharded versions) every id in the shard the rule (search.artifact.shards) gives it.
    """

    def __init__(self, version_dir: Path, manifest: Manifest, shard: int, snapshot: MetadataSnapshot,
                 owns_metadata: bool = False):
        self.path = Path(version_dir)
        self.manifest = manifest
        self.version = manifest.version
        self.shard = int(shard)
        self.shards = manifest.shard_count
        entry = manifest.shards[self.shard] if manifest.shards else None
        self.dir = self.path / entry.dir if entry is not None else self.path
        self.count = entry.vectors if entry is not None else manifest.counts["vectors"]
        self.index_info: IndexInfo = entry.index if entry is not None else manifest.index
        self._what = f"version {self.version}" + (f" shard {self.shard} ({entry.dir})" if entry is not None else "")
        self._snapshot = snapshot
        self._owns_metadata = owns_metadata
        self.ids, self.vectors = self._load_arrays()
        self.index = self._load_index()
        self._search_params: dict[tuple[tuple[str, Any], ...], Any] = {}  # `_prepared`'s

    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        n, dim, what = self.count, self.manifest.dim, self._what
        try:
            ids = np.load(self.dir / IDS_FILE, mmap_mode="r")
            vectors = np.load(self.dir / VECTORS_FILE, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise ArtifactError(f"{what}: cannot read arrays ({exc})") from exc
        if ids.dtype != np.int64 or ids.shape != (n,):
            raise ArtifactError(f"{what}: ids.npy is {ids.dtype}{ids.shape}, expected int64 ({n},)")
        if vectors.dtype != np.float16 or vectors.shape != (n, dim):
            raise ArtifactError(f"{what}: vectors are {vectors.dtype}{vectors.shape}, expected float16 ({n}, {dim})")
        if n > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            raise ArtifactError(f"{what}: ids.npy is not strictly ascending")
        if self.shards > 1:
            stray = np.flatnonzero(shard_of(ids, self.shards) != self.shard)
            if stray.size:
                raise ArtifactError(f"{what}: {stray.size} ids do not belong to shard {self.shard} of {self.shards} "
                                    f"under the shard rule (first: {int(ids[stray[0]])})")
        return ids, vectors

    def _load_index(self) -> Any:
        try:
            index = ann.read_index(self.dir / INDEX_FILE)
        except RuntimeError as exc:
            raise ArtifactError(f"{self._what}: FAISS cannot read the index ({exc})") from exc
        if index.d != self.manifest.dim or index.ntotal != self.count:
            raise ArtifactError(f"{self._what}: index holds {index.ntotal}x{index.d}, "
                                f"manifest says {self.count}x{self.manifest.dim}")
        return index

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def search_params(self) -> dict[str, Any]:
        """This part's tuned FAISS search parameters (a fresh dict; safe to modify)."""
        return dict(self.index_info.params)

    @property
    def rerank_candidates(self) -> int:
        return int(self.index_info.rerank_candidates)

    def ann_rows(self, queries: np.ndarray, k: int,
                 params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """ANN stage by row position of this part (-1 where fewer than k); `params` default: its tuned ones."""
        return ann.search_prepared(self.index, queries, k, self._prepared(params))

    def _prepared(self, params: Mapping[str, Any] | None) -> Any:
        """The faiss.SearchParameters for `params` (None: the tuned ones), built once per distinct set: a
        service passes one or two sets for its whole life. Read-only in a search, so threads share them."""
        key = tuple(sorted((self.index_info.params if params is None else params).items()))
        prepared = self._search_params.get(key, self)  # self: not built yet (None is a built "nothing to set")
        if prepared is self:
            if len(self._search_params) >= 16:  # callers with ever-new sets: no unbounded growth
                self._search_params.clear()
            prepared = self._search_params[key] = ann.search_parameters(self.index, dict(key))
        return prepared

    def ann_search(self, queries: np.ndarray, k: int,
                   params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.ann_rows(queries, k, params)
        return scores, _rows_to_ids(self.ids, rows)

    def ids_at(self, rows: np.ndarray) -> np.ndarray:
        """Image ids at row positions (all >= 0)."""
        return np.asarray(self.ids[np.asarray(rows, dtype=np.int64)], dtype=np.int64)

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """float32 copies of the stored vectors at row positions, in the given order (reading them in file order
        instead was 6-9% slower for 200 rows of a 1M store: benchmarks/rerank_path.py)."""
        return np.asarray(self.vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    def rows_for(self, ids: Iterable[int]) -> np.ndarray:
        """Row positions of image ids in this part; KeyError names any id it does not hold."""
        return _rows_for(self.ids, ids, self._what)

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over this part's float16 vectors. (scores, ids)."""
        scores, rows = ann.exact_search(self.vectors, queries, k)
        return scores, _rows_to_ids(self.ids, rows)

    def search(self, queries: np.ndarray, k: int, params: Mapping[str, Any] | None = None,
               candidates: int | None = None) -> SearchResult:
        """ANN over-fetch of `candidates` (default: the tuned count, at least k), then exact float16 rerank."""
        fetch = max(int(k), int(candidates if candidates is not None else self.rerank_candidates))
        ann_s, ann_rows = self.ann_rows(queries, fetch, params)
        exact_s, rows = ann.rerank(self.vectors, queries, ann_rows, k)
        ann_of = np.full(rows.shape, np.nan, dtype=np.float32)
        for q in range(rows.shape[0]):
            lookup = dict(zip(ann_rows[q].tolist(), ann_s[q].tolist(), strict=True))
            ann_of[q] = [lookup.get(r, np.nan) for r in rows[q].tolist()]
        return SearchResult(ids=_rows_to_ids(self.ids, rows), ann_scores=ann_of, exact_scores=exact_s)

    def metadata(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Rows of the version's shared snapshot (any id of the version, not only this part's)."""
        return self._snapshot.metadata(ids)

    def metadata_conn(self) -> sqlite3.Connection:
        return self._snapshot.conn()

    def close(self) -> None:
        """Close the metadata connections when this part opened them (open_shard); else the Artifact does."""
        if self._owns_metadata:
            self._snapshot.close()

    def __enter__(self) -> ShardPart:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardPart({self.version!r}, {self.shard}/{self.shards}, {self.index_info.factory!r}, n={self.count})"


class _VersionRows:
    """`Artifact.vectors` of a sharded version: the float16 rows in whole-version row order (the order of
    `Artifact.ids`), read from the parts that hold them. Supports what readers do with it: len, shape, dtype and
    indexing by a row, a slice or an array of rows."""

    def __init__(self, artifact: Artifact):
        self._artifact = artifact
        self.shape = (len(artifact.ids), artifact.dim)
        self.dtype = np.dtype(np.float16)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = np.arange(self.shape[0])[key]
        if np.ndim(rows) == 0:
            row: np.ndarray = self._artifact.rows16(np.asarray([rows]))[0]
            return row
        return self._artifact.rows16(np.asarray(rows))


class Artifact:
    """One opened version: its parts (`parts`, one ShardPart per shard) and whole-version reads across them.

    Vectors and ids are memory-mapped; the FAISS indexes are loaded into RAM. Thread-safe for searching: FAISS
    search is re-entrant with per-call parameters, and metadata reads use one read-only SQLite connection per
    thread. Whole-version row positions are positions in `ids` (every image id of the version, ascending).
    """

    def __init__(self, path: Path, manifest: Manifest, encoder_bundle: EncoderBundle | None = None):
        self.path = path
        self.manifest = manifest
        self.encoder_bundle = encoder_bundle  # verified encoder files; None when the version carries none
        self.version = manifest.version
        self._snapshot = MetadataSnapshot(path, manifest.version)
        try:
            self.parts: list[ShardPart] = [ShardPart(path, manifest, i, self._snapshot)
                                           for i in range(manifest.shard_count)]
        except BaseException:
            self._snapshot.close()
            raise
        self.index = self.parts[0].index  # every part has the same factory (search-parameter checks read it)
        self.vectors: Any
        if len(self.parts) == 1:
            self.ids, self.vectors = self.parts[0].ids, self.parts[0].vectors
        else:
            self.ids = np.sort(np.concatenate([p.ids for p in self.parts]))
            self.vectors = _VersionRows(self)

    @property
    def sharded(self) -> bool:
        return len(self.parts) > 1

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
        """ANN stage only: (scores, ids), id -1 where fewer than k results. `params` default: the tuned ones
        (each part's own, in a sharded version)."""
        if not self.sharded:
            return self.parts[0].ann_search(queries, k, params)
        return _merge_top([p.ann_search(queries, min(int(k), p.count), params) for p in self.parts], k)

    def ann_rows(self, queries: np.ndarray, k: int,
                 params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """ANN stage by whole-version row position (-1 where fewer than k): a caller that gathers the
        candidates' vectors next (the rerank) then needs no id -> row lookup (`ids_at` gives their ids)."""
        if not self.sharded:
            return self.parts[0].ann_rows(queries, k, params)
        scores, ids = self.ann_search(queries, k, params)
        return scores, self._ids_to_rows(ids)

    def ids_at(self, rows: np.ndarray) -> np.ndarray:
        """Image ids at row positions (all >= 0)."""
        return np.asarray(self.ids[np.asarray(rows, dtype=np.int64)], dtype=np.int64)

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the float16 vectors: the ground truth. (scores, ids)."""
        if not self.sharded:
            return self.parts[0].exact_search(queries, k)
        return _merge_top([p.exact_search(queries, k) for p in self.parts], k)

    def search(self, queries: np.ndarray, k: int, params: Mapping[str, Any] | None = None,
               candidates: int | None = None) -> SearchResult:
        """ANN over-fetch of `candidates` (default: the tuned count, at least k), then exact float16 rerank;
        a sharded version does this in every part and keeps the best k exact scores."""
        if not self.sharded:
            return self.parts[0].search(queries, k, params, candidates)
        found = [p.search(queries, k, params, candidates) for p in self.parts]
        exact, ids = _merge_top([(r.exact_scores, r.ids) for r in found], k)
        ann_all = np.concatenate([r.ann_scores for r in found], axis=1)
        ids_all = np.concatenate([r.ids for r in found], axis=1)
        ann_of = np.full(ids.shape, np.nan, dtype=np.float32)
        for q in range(ids.shape[0]):
            lookup = dict(zip(ids_all[q].tolist(), ann_all[q].tolist(), strict=True))
            ann_of[q] = [lookup.get(i, np.nan) if i >= 0 else np.nan for i in ids[q].tolist()]
        return SearchResult(ids=ids, ann_scores=ann_of, exact_scores=exact)

    def rows_for(self, ids: Iterable[int]) -> np.ndarray:
        """Whole-version row positions of image ids; KeyError names any id that is not in this version."""
        return _rows_for(self.ids, ids, f"version {self.version}")

    def holds(self, ids: Iterable[int]) -> np.ndarray:
        """Which of these image ids this version indexes (bool per id), by the lookup `rows_for` uses."""
        return _located(self.ids, ids)[2]

    def vectors_for(self, ids: Iterable[int]) -> np.ndarray:
        """float32 copies of the stored vectors of these image ids (in the given order)."""
        return self.vectors_at(self.rows_for(ids))

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """float32 copies of the stored vectors at whole-version row positions, in the given order (reading
        them in file order instead was 6-9% slower for 200 rows of a 1M store: benchmarks/rerank_path.py)."""
        if not self.sharded:
            return self.parts[0].vectors_at(rows)
        return np.asarray(self.rows16(np.asarray(rows, dtype=np.int64)), dtype=np.float32)

    def rows16(self, rows: np.ndarray) -> np.ndarray:
        """The stored float16 rows at whole-version row positions, each read from the part that holds it (the
        shard rule says which)."""
        ids = self.ids[np.asarray(rows, dtype=np.int64)]
        out = np.empty((len(ids), self.dim), dtype=np.float16)
        owner = shard_of(ids, len(self.parts))
        for part in self.parts:
            mask = owner == part.shard
            if mask.any():
                out[mask] = part.vectors[part.rows_for(ids[mask])]
        return out

    def _ids_to_rows(self, ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self.ids, np.clip(ids, 0, None) if len(self.ids) else ids)
        return np.where(ids >= 0, rows, -1)

    # -- metadata -------------------------------------------------------------------------------------
    def metadata_conn(self) -> sqlite3.Connection:
        """This thread's read-only connection to the snapshot, for reads `metadata` does not cover (whole-column
        passes such as search.query.examples)."""
        return self._snapshot.conn()

    def metadata(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Snapshot rows as stored (dicts) in the order of `ids`; KeyError for unknown ids."""
        return self._snapshot.metadata(ids)

    @property
    def _connections(self) -> list[sqlite3.Connection]:
        """The snapshot's open connections (tests check that a released version closed them)."""
        return self._snapshot._connections  # noqa: SLF001 - the snapshot is this artifact's own

    def close(self) -> None:
        """Close every thread's SQLite connection (connections are opened with check_same_thread=False)."""
        self._snapshot.close()

    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        shards = f", shards={len(self.parts)}" if self.sharded else ""
        return f"Artifact({self.version!r}, {self.manifest.index.factory!r}, n={len(self.ids)}{shards})"


def _located(ids_sorted: np.ndarray, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids as int64, their row positions in an ascending id array, which of them it holds): one binary search
    per id; a row is meaningful only where held."""
    wanted = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
    if len(ids_sorted) == 0:
        return wanted, wanted, np.zeros(wanted.shape, dtype=bool)
    rows = np.searchsorted(ids_sorted, wanted)
    held = (rows < len(ids_sorted)) & (ids_sorted[np.minimum(rows, len(ids_sorted) - 1)] == wanted)
    return wanted, rows, held


def _rows_for(ids_sorted: np.ndarray, ids: Iterable[int], what: str) -> np.ndarray:
    """Row positions of image ids in an ascending id array; KeyError names any id it does not hold."""
    wanted, rows, held = _located(ids_sorted, ids)
    if not held.all():
        raise KeyError(f"ids not in {what}: {wanted[~held][:10].tolist()}")
    return rows


def _rows_to_ids(ids_sorted: np.ndarray, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    return np.where(rows >= 0, ids_sorted[np.clip(rows, 0, None)], -1) if len(ids_sorted) else rows


def _merge_top(found: Iterable[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k (score, id) per query row across parts, descending (ties: the earlier part first);
    padded with (-inf, -1)."""
    scores_parts, ids_parts = zip(*found, strict=True)
    scores = np.concatenate([np.asarray(s, np.float32) for s in scores_parts], axis=1)
    ids = np.concatenate([np.asarray(i, np.int64) for i in ids_parts], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :int(k)]
    top_s, top_i = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    if top_s.shape[1] < int(k):
        pad = int(k) - top_s.shape[1]
        top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
    return top_s.astype(np.float32), np.where(np.isfinite(top_s), top_i, -1)
