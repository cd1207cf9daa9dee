"""Write an index version aside and publish it atomically; prune old versions.

A version is assembled in a temporary directory under STORE/versions/, checked by opening it with the same
reader the service uses (full checksums), renamed to its final sortable name, and only then made current by
replacing the `current` symlink with os.replace. Any failure before that removes the temporary directory and
leaves `current` exactly as it was.

With `config.shards` S > 1 the version is sharded (search.artifact.manifest schema 2): the rows are split by
the shard rule (search.artifact.shards) into `shard-000/` ... folders, each with its own index.faiss (built and
tuned by the same selection over that part's vectors; every part takes part 0's factory), vectors.f16.npy and
ids.npy; metadata.sqlite and the takedown copy stay at the version's root, the encoder folder in the store.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer.index.build import BuiltIndex, build_index
from indexer.index.index_select import IndexConfig
from indexer.storage.shards import fsync_dir
from search.artifact.bundle import ENCODERS_DIR
from search.artifact.checksums import file_entry
from search.artifact.encoder import EncoderIdentity
from search.artifact.manifest import (
    IDS_FILE,
    INDEX_FILE,
    METADATA_FILE,
    SCHEMA_VERSION,
    SHARDED_SCHEMA_VERSION,
    VECTORS_FILE,
    ArtifactError,
    EncoderFiles,
    IndexInfo,
    Manifest,
    ShardEntry,
    read_manifest,
    shard_dir_name,
    write_manifest,
)
from search.artifact.shards import SHARD_RULE, shard_of
from search.artifact.version import CURRENT_LINK, current_version, open_version

__all__ = ["PublishedVersion", "publish_version", "new_version_name", "prune_versions", "list_versions",
           "flip_current"]

log = logging.getLogger(__name__)
VERSIONS_DIR = "versions"
_TMP_PREFIX = ".tmp-"
_NORM_TOLERANCE = 0.02  # float16 rounding on a unit vector stays far inside this


@dataclass(frozen=True)
class PublishedVersion:
    name: str
    path: Path
    manifest: Manifest
    pruned: tuple[str, ...] = ()


def new_version_name(now: datetime | None = None) -> str:
    """UTC timestamp to the microsecond plus a random suffix: sorts by time, unique across processes."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(3)


def list_versions(store: Path) -> list[str]:
    """Published version names, oldest first (temporary directories excluded)."""
    root = Path(store) / VERSIONS_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _validate_inputs(ids: np.ndarray, vectors: np.ndarray, encoder: EncoderIdentity,
                     metadata_db: Path) -> tuple[np.ndarray, np.ndarray]:
    """Clear errors for bad input, before anything is written. Returns ids ascending and vectors in step."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype}{ids.shape}")
    if vectors.ndim != 2 or vectors.shape[0] != ids.shape[0]:
        raise ValueError(f"vectors {vectors.shape} must be (len(ids)={ids.shape[0]}, dim)")
    if ids.shape[0] == 0:
        raise ValueError("nothing to publish: no vectors")
    if vectors.shape[1] != encoder.dim:
        raise ValueError(f"vectors have dimension {vectors.shape[1]}, encoder {encoder.model} has {encoder.dim}")
    ids = ids.astype(np.int64, copy=False)
    order = None
    if ids.shape[0] > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        dup = ids[1:][ids[1:] == ids[:-1]]
        if dup.size:
            raise ValueError(f"duplicate ids: {np.unique(dup)[:10].tolist()}")
    vectors16 = np.asarray(vectors[order] if order is not None else vectors, dtype=np.float16)
    for start in range(0, vectors16.shape[0], 65536):
        block = np.asarray(vectors16[start:start + 65536], dtype=np.float32)
        if not np.isfinite(block).all():
            raise ValueError("vectors contain NaN or infinity")
        norms = np.linalg.norm(block, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > _NORM_TOLERANCE)
        if bad.size:
            raise ValueError(f"vectors must be L2-normalised; id {int(ids[start + bad[0]])} has norm "
                             f"{norms[bad[0]]:.4f}")
    if not Path(metadata_db).is_file():
        raise ValueError(f"metadata database {metadata_db} does not exist")
    return ids, vectors16


def snapshot_metadata(source: Path, target: Path) -> None:
    """Consistent copy of the live SQLite database with the backup API, left in rollback-journal mode so a
    read-only (mode=ro / immutable) open never needs a -wal or -shm file beside it."""
    src = sqlite3.connect(f"{Path(source).resolve().as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        dst.commit()
    finally:
        dst.close()
        src.close()


def _write_arrays(tmp: Path, ids: np.ndarray, vectors16: np.ndarray) -> None:
    np.save(tmp / IDS_FILE, ids)
    out = np.lib.format.open_memmap(tmp / VECTORS_FILE, mode="w+", dtype=np.float16, shape=vectors16.shape)
    for start in range(0, vectors16.shape[0], 65536):
        out[start:start + 65536] = vectors16[start:start + 65536]
    out.flush()
    del out


def _make_read_only(directory: Path) -> None:
    """fsync and make read-only every file of a version, shard folders included."""
    for file in directory.iterdir():
        if file.is_dir():
            _make_read_only(file)
            continue
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())
        file.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    fsync_dir(directory)


def flip_current(store: Path, version_dir: Path) -> None:
    """Point STORE/current at version_dir atomically: a new relative symlink renamed over the old one."""
    store = Path(store)
    target = os.path.relpath(version_dir, store)
    tmp_link = store / f".{CURRENT_LINK}.{secrets.token_hex(4)}"
    os.symlink(target, tmp_link)
    try:
        os.replace(tmp_link, store / CURRENT_LINK)
    except OSError:
        tmp_link.unlink(missing_ok=True)
        raise
    fsync_dir(store)


def prune_versions(store: Path, keep: int) -> list[str]:
    """Delete the oldest versions beyond `keep`, never the one `current` points to; returns deleted names."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    store = Path(store)
    current = current_version(store)
    names = list_versions(store)
    survivors = set(names[-keep:]) | ({current} if current else set())
    removed = []
    for name in names:
        if name in survivors:
            continue
        path = store / VERSIONS_DIR / name
        _remove_tree(path)
        removed.append(name)
    return removed


def prune_encoders(store: Path) -> list[str]:
    """Delete encoder folders no remaining version lists (an unchanged encoder stays shared); returns names."""
    root = Path(store) / ENCODERS_DIR
    if not root.is_dir():
        return []
    used: set[str] = set()
    for name in list_versions(store):
        try:
            files = read_manifest(Path(store) / VERSIONS_DIR / name).encoder_files
        except ArtifactError:
            return []  # an unreadable manifest: keep everything rather than guess what it uses
        if files is not None:
            used.add(Path(files.dir).name)
    removed = []
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in used:
            _remove_tree(folder)
            removed.append(folder.name)
    return removed


def remove_temporaries(store: Path) -> list[str]:
    """Remove what a killed publish left: `versions/.tmp-*` folders and `.current.*` links. Returns their names.

    Call only while holding the store's build lock (no publish can be running then)."""
    store = Path(store)
    removed = []
    versions = store / VERSIONS_DIR
    for path in sorted(versions.glob(_TMP_PREFIX + "*")) if versions.is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            _remove_tree(path)
        else:
            path.unlink()
        removed.append(f"{VERSIONS_DIR}/{path.name}")
    for link in sorted(store.glob(f".{CURRENT_LINK}.*")):
        if link.is_symlink():
            link.unlink()
            removed.append(link.name)
    return removed


def _remove_tree(path: Path) -> None:
    """Versions are read-only files; restore write permission on the directories so rmtree can unlink them."""
    path.chmod(stat.S_IRWXU)
    for sub in (p for p in path.rglob("*") if p.is_dir() and not p.is_symlink()):
        sub.chmod(stat.S_IRWXU)
    shutil.rmtree(path)


def _index_info(built: BuiltIndex) -> IndexInfo:
    selection = built.choice.to_dict()
    selection["target_met"] = built.target_met
    return IndexInfo(
        factory=built.choice.factory, metric="ip", params=dict(built.params),
        rerank_candidates=built.rerank_candidates, selection=selection, tuning=built.tuning,
        recall_at_10=built.recall_at_10, recall_at_10_raw=built.recall_at_10_raw,
        recall_queries=built.recall_queries, latency_ms=built.latency_ms, bytes_per_vector=built.bytes_per_vector,
    )


def _manifest(name: str, tmp: Path, encoder: EncoderIdentity, image_root: Path, built: BuiltIndex,
              counts: Mapping[str, int], timings: Mapping[str, float], n: int,
              encoder_files: EncoderFiles | None = None) -> Manifest:
    files = {f: file_entry(tmp / f) for f in (INDEX_FILE, VECTORS_FILE, IDS_FILE, METADATA_FILE)}
    index = _index_info(built)
    all_timings = {**{k: float(v) for k, v in timings.items()},
                   **{f"index_{k}": float(v) for k, v in built.timings.items()}}
    return Manifest(
        schema_version=SCHEMA_VERSION, version=name, created_at=datetime.now(UTC).isoformat(),
        encoder=encoder, image_root=str(Path(image_root).resolve()), index=index,
        counts={**{k: int(v) for k, v in counts.items()}, "vectors": n}, timings=all_timings, files=files,
        encoder_files=encoder_files,
    )


def publish_version(store: Path, ids: np.ndarray, vectors: np.ndarray, metadata_db: Path,
                    encoder: EncoderIdentity, image_root: Path, config: IndexConfig,
                    counts: Mapping[str, int], timings: Mapping[str, float],
                    encoder_files: EncoderFiles | None = None) -> PublishedVersion:
    """Build, write aside, verify and publish one version; then prune beyond config.keep_versions.

    `ids` are the image ids (SQLite row ids) of `vectors` (N x D, L2-normalised; float16 or float32, may be a
    memmap); `counts` e.g. {indexed, failed, deleted}; `timings` the pipeline's stage seconds. Raises
    ValueError for bad input before writing anything; on any failure `current` is unchanged.
    `encoder_files`: the store's encoder folder for `encoder` (indexer.models.export.export_bundle); without
    it the version carries no encoder and the service refuses it.
    """
    store = Path(store)
    ids, vectors16 = _validate_inputs(ids, vectors, encoder, Path(metadata_db))
    if config.shards > 1:
        _check_shard_sizes(ids, config.shards)
    versions = store / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    name = new_version_name()
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + name + "-", dir=versions))
    try:
        start = time.perf_counter()
        snapshot_metadata(Path(metadata_db), tmp / METADATA_FILE)
        if config.shards > 1:
            manifest = _write_shards(name, tmp, ids, vectors16, config, encoder, image_root, counts, timings,
                                     start, encoder_files)
            factory, recall = manifest.index.factory, manifest.index.recall_at_10
        else:
            _write_arrays(tmp, ids, vectors16)
            built = _build_into(tmp, config)
            manifest = _manifest(name, tmp, encoder, image_root, built, counts,
                                 {**timings, "publish_s": time.perf_counter() - start}, len(ids), encoder_files)
            factory, recall = built.choice.factory, built.recall_at_10
        write_manifest(tmp, manifest)
        _copy_takedowns(store, tmp)
        _make_read_only(tmp)
        open_version(tmp, checks="full", expect_encoder=encoder).close()
        final = versions / name
        os.rename(tmp, final)
        fsync_dir(versions)
    except BaseException:
        if tmp.exists():
            _remove_tree(tmp)
        raise
    manifest = read_manifest(final)
    flip_current(store, final)
    pruned = prune_versions(store, config.keep_versions)
    prune_encoders(store)
    shards = f", {config.shards} shards" if config.shards > 1 else ""
    log.info("published %s (%s%s, recall@10 %.4f) and pruned %s", name, factory, shards, recall, pruned)
    return PublishedVersion(name=name, path=final, manifest=manifest, pruned=tuple(pruned))


def _build_into(folder: Path, config: IndexConfig) -> BuiltIndex:
    """Build the index over the float16 vectors written in `folder` and write it there."""
    stored = np.load(folder / VECTORS_FILE, mmap_mode="r")
    built = build_index(stored, config)
    del stored
    _write_index(built.index, folder / INDEX_FILE)
    return built


def _check_shard_sizes(ids: np.ndarray, shards: int) -> None:
    """Every part must hold vectors (an empty part has no index to build): say so before writing anything."""
    sizes = np.bincount(shard_of(ids, shards), minlength=shards)
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        raise ValueError(f"{shards} shards for {len(ids)} vectors leaves shard(s) {empty.tolist()} empty: "
                         "use fewer shards")


def _write_shards(name: str, tmp: Path, ids: np.ndarray, vectors16: np.ndarray, config: IndexConfig,
                  encoder: EncoderIdentity, image_root: Path, counts: Mapping[str, int],
                  timings: Mapping[str, float], start: float, encoder_files: EncoderFiles | None) -> Manifest:
    """Write every part (its rows by the shard rule, ascending ids kept) and return the sharded manifest."""
    owner = shard_of(ids, config.shards)
    entries: list[ShardEntry] = []
    built_all: list[BuiltIndex] = []
    part_config = config
    for shard in range(config.shards):
        folder = tmp / shard_dir_name(shard)
        folder.mkdir()
        mask = owner == shard
        _write_arrays(folder, ids[mask], vectors16[mask])
        built = _build_into(folder, part_config)
        if shard == 0 and config.factory is None:  # one factory for every part: part 0's choice
            part_config = replace(config, factory=built.choice.factory)
        info = _index_info(built)
        if shard > 0 and config.factory is None:
            info.selection["reason"] = f"part 0's choice ({built_all[0].choice.reason})"
        entries.append(ShardEntry(dir=folder.name, vectors=int(mask.sum()), index=info,
                                  files={f: file_entry(folder / f) for f in (INDEX_FILE, VECTORS_FILE, IDS_FILE)}))
        built_all.append(built)
    index = _whole_index_info(entries, config.shards)
    index_timings: dict[str, float] = {}
    for built in built_all:
        for key, value in built.timings.items():
            index_timings[f"index_{key}"] = index_timings.get(f"index_{key}", 0.0) + float(value)
    return Manifest(
        schema_version=SHARDED_SCHEMA_VERSION, version=name, created_at=datetime.now(UTC).isoformat(),
        encoder=encoder, image_root=str(Path(image_root).resolve()), index=index,
        counts={**{k: int(v) for k, v in counts.items()}, "vectors": len(ids)},
        timings={**{k: float(v) for k, v in timings.items()}, "publish_s": time.perf_counter() - start,
                 **index_timings},
        files={METADATA_FILE: file_entry(tmp / METADATA_FILE)}, encoder_files=encoder_files,
        sharding={"rule": SHARD_RULE, "shards": config.shards}, shards=tuple(entries),
    )


def _whole_index_info(entries: list[ShardEntry], shards: int) -> IndexInfo:
    """The version's index summary over its parts: the common factory, the largest tuned search parameters and
    rerank depth (what a whole-version search asks), the worst recall and latency, the mean bytes per vector."""
    infos = [e.index for e in entries]
    params: dict[str, Any] = {}
    for info in infos:
        for key, value in info.params.items():
            params[key] = max(int(value), int(params.get(key, value)))
    latency = {key: max(float(i.latency_ms.get(key, 0.0)) for i in infos) for key in infos[0].latency_ms}
    total = sum(e.vectors for e in entries)
    return IndexInfo(
        factory=infos[0].factory, metric="ip", params=params,
        rerank_candidates=max(i.rerank_candidates for i in infos),
        selection={**infos[0].selection, "shards": shards, "target_met": all(i.selection.get("target_met", True)
                                                                             for i in infos)},
        tuning=[], recall_at_10=min(i.recall_at_10 for i in infos),
        recall_at_10_raw=min(i.recall_at_10_raw for i in infos),
        recall_queries=sum(i.recall_queries for i in infos), latency_ms=latency,
        bytes_per_vector=sum(i.bytes_per_vector * e.vectors for i, e in zip(infos, entries, strict=True)) / total,
    )


def _copy_takedowns(store: Path, version_dir: Path) -> None:
    """Carry the store's takedown list into the version (outside the manifest's checked files), so a version
    served from elsewhere still hides what was taken down when it was published."""
    from search.artifact.takedown import TAKEDOWN_FILE

    source = Path(store) / TAKEDOWN_FILE
    if source.is_file():
        shutil.copyfile(source, version_dir / TAKEDOWN_FILE)


def _write_index(index: Any, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))
