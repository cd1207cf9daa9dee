"""One indexing run: scan -> plan (incremental diff) -> decode/encode in committed batches -> sidecar ->
publish a new index version -> run report.

The plan is committed in one transaction before any encoding and each batch after it, so a run killed at
any point leaves the database consistent; the next run simply finds the rows still 'pending'.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from indexer.encoding.encode import EncodeStats, encode_pending
from indexer.ingest.paths import display
from indexer.ingest.scan import Candidate, scan
from indexer.ingest.sidecar import read_sidecar
from indexer.models.clip import ClipEncoder
from indexer.progress import StageTimer
from indexer.settings import IndexerSettings
from indexer.storage import shards
from indexer.storage.store import DB_NAME, ImageRow, MetadataStore, RowChange
from search.artifact.encoder import file_sha256
from search.artifact.version import current_version

SHARDS_DIR = "shards"
RUNS_DIR = "runs"


class StoreBusyError(RuntimeError):
    """Another build holds the store's lock."""


class StoreReadOnlyError(RuntimeError):
    """The store cannot be written (read-only mount, permissions): a build cannot run there."""


@dataclass
class Plan:
    changes: list[RowChange] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishRequest:
    """Everything the publish step needs; built after the last batch is committed."""

    store: Path
    store_db: MetadataStore
    encoder: ClipEncoder
    image_root: Path
    settings: IndexerSettings
    counts: dict[str, int]
    timings: dict[str, float]


Publisher = Callable[[PublishRequest], str]
# encode_pending's signature: the Ray backend (indexer.run.ray_backend) passes its own stage here.
EncodeStage = Callable[
    [list[tuple[int, str]], Path, ClipEncoder, MetadataStore, Path, IndexerSettings, StageTimer], EncodeStats
]


def run_build(
    images: Path, store: Path, settings: IndexerSettings, encoder: ClipEncoder, publisher: Publisher | None = None,
    encode_stage: EncodeStage | None = None,
) -> dict[str, Any]:
    """Index `images` into `store` and publish; returns (and saves) the run report.

    `encode_stage` replaces only the decode/encode/write of pending rows (default: local worker processes).
    """
    images, store = Path(images).resolve(), Path(store).resolve()
    if not images.is_dir():
        raise NotADirectoryError(f"image folder does not exist or is not a directory: {images}")
    try:
        str(images).encode("utf-8")  # names *inside* the root may be anything; the root goes into manifests
    except UnicodeEncodeError:
        raise NotADirectoryError(f"the image root's own path is not valid UTF-8 ({display(str(images))}): "
                                 "use a symlink with a UTF-8 name") from None
    _check_writable(store)
    try:
        with FileLock(store / ".lock", timeout=0):
            return _run_locked(images, store, settings, encoder, publisher or publish_step,
                               encode_stage or encode_pending)
    except Timeout as exc:
        raise StoreBusyError(f"another indexer run holds {store / '.lock'}") from exc


def _check_writable(store: Path) -> None:
    """Fail before any work, with one clear line, when the store (or its database) cannot be written."""
    try:
        store.mkdir(parents=True, exist_ok=True)
        with open(store / ".lock", "a"):
            pass
        db = store / DB_NAME
        if db.exists():
            with open(db, "r+b"):
                pass
    except OSError as exc:
        raise StoreReadOnlyError(f"store {store} is not writable ({exc.strerror or exc}); "
                                 "`python -m indexer status` reads it") from exc


def _run_locked(
    images: Path, store: Path, settings: IndexerSettings, encoder: ClipEncoder, publisher: Publisher,
    encode_stage: EncodeStage,
) -> dict[str, Any]:
    started = datetime.now(UTC)
    timer = StageTimer()
    db = MetadataStore.open(store / DB_NAME)
    try:
        shard_dir = store / SHARDS_DIR
        debris = shards.remove_debris(shard_dir, set(db.shard_names())) + remove_publish_debris(store)
        _check_encoder(db, encoder)
        with timer.stage("scan"):
            scanned = scan(images, settings.extensions, exclude=(store,))
        with timer.stage("plan"):
            plan = plan_changes(scanned.candidates, db.rows(), settings.hash_threads)
            db.apply_plan(plan.changes, plan.deleted, {"image_root": str(images)})
        pending = db.pending()
        stats = encode_stage(pending, images, encoder, db, shard_dir, settings, timer)
        with timer.stage("sidecar"):
            sidecar = read_sidecar(images / settings.sidecar)
            sidecar_updates, sidecar_unmatched = db.apply_sidecar(sidecar.records)
        shards.delete_shards(shard_dir, db.drop_unreferenced_shards())
        counts = {
            "candidates": len(scanned.candidates), **plan.counts, "resumed": len(pending) - plan.counts["to_encode"],
            "encoded": stats.encoded, "failed_this_run": stats.failed, "sidecar_updates": sidecar_updates,
            "sidecar_unmatched": sidecar_unmatched, "sidecar_errors": len(sidecar.errors),
            "metadata_errors": stats.metadata_errors, "skipped": len(scanned.skipped),
            **db.counts(),
        }
        version, published = _maybe_publish(db, store, encoder, images, settings, counts, timer, publisher)
        report = {
            **_run_header(started, images, store, encoder, settings),
            "version": version, "published": published, "counts": counts,
            "timings": {**timer.as_dict(), "decode_worker_cpu": round(stats.decode_worker_s, 4),
                        "total": round((datetime.now(UTC) - started).total_seconds(), 4)},
            "encode_devices": stats.devices,
            "skipped": scanned.skipped, "warnings": stats.warnings, "sidecar_errors": sidecar.errors,
            "debris_removed": debris,
        }
        _save_report(store, report)
        return report
    finally:
        db.close()


def _run_header(
    started: datetime, images: Path, store: Path, encoder: ClipEncoder, settings: IndexerSettings
) -> dict[str, Any]:
    """What ran, where, with which encoder and settings: enough to reproduce the run."""
    return {
        "run_id": started.strftime("%Y%m%dT%H%M%S.%fZ"), "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(), "image_root": str(images), "store": str(store),
        "encoder": encoder.identity.to_dict(), "settings": settings.model_dump(mode="json"),
    }


def _check_encoder(db: MetadataStore, encoder: ClipEncoder) -> None:
    """Switching encoders invalidates every stored embedding: mark them for re-encoding."""
    key = encoder.identity.key
    found = db.get_meta("encoder_key")
    meta = {"encoder_key": key, "encoder": json.dumps(encoder.identity.to_dict(), sort_keys=True)}
    if found is None:
        db.update_meta(meta)
    elif found != key:
        db.reset_embeddings(meta)


def plan_changes(candidates: list[Candidate], rows: dict[str, ImageRow], hash_threads: int) -> Plan:
    """Diff the scanned tree against the store: new, changed, renamed, reappeared, deleted, unchanged."""
    seen = {c.path for c in candidates}
    missing = [r for path, r in rows.items() if path not in seen and r.status != "deleted"]
    suspects = [c for c in candidates if _needs_hash(c, rows.get(c.path))]
    hashes = _hash_all(suspects, hash_threads)
    embedded = {r.content_hash: r for r in rows.values() if r.shard is not None and r.content_hash}
    gone: dict[str, list[ImageRow]] = {}
    for row in missing:
        gone.setdefault(row.content_hash or "", []).append(row)
    plan = Plan(counts=dict.fromkeys(("new", "changed", "touched", "restored", "renamed", "reused", "unreadable"), 0))
    for cand in suspects:
        digest = hashes[cand.path]
        change, kind = _decide(cand, digest, rows.get(cand.path), gone, embedded)
        plan.changes.append(change)
        plan.counts[kind] += 1
    claimed = {c.id for c in plan.changes if c.id is not None}
    plan.deleted = [r.id for r in missing if r.id not in claimed]
    plan.counts["deleted_this_run"] = len(plan.deleted)
    plan.counts["unchanged"] = len(candidates) - len(suspects)
    plan.counts["to_encode"] = sum(c.status == "pending" for c in plan.changes)
    return plan


def _needs_hash(cand: Candidate, row: ImageRow | None) -> bool:
    """Stat equality is trusted; anything else (new, touched, reappeared) is confirmed by content hash."""
    return row is None or row.status == "deleted" or row.size != cand.size or row.mtime_ns != cand.mtime_ns


def _hash_all(cands: list[Candidate], threads: int) -> dict[str, str | OSError]:
    def one(c: Candidate) -> str | OSError:
        try:
            return file_sha256(c.abs_path)
        except OSError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=threads) as pool:  # hashlib releases the GIL on large buffers
        return {c.path: h for c, h in zip(cands, pool.map(one, cands), strict=True)}


def _decide(
    cand: Candidate,
    digest: str | OSError,
    row: ImageRow | None,
    gone: dict[str, list[ImageRow]],
    embedded: dict[str, ImageRow],
) -> tuple[RowChange, str]:
    """The row change for one new or touched file, and what kind of change it is."""
    row_id = row.id if row is not None else None
    base: dict[str, Any] = dict(path=cand.path, size=cand.size, mtime_ns=cand.mtime_ns, id=row_id)
    if isinstance(digest, OSError):
        reason = f"cannot read file: {digest.strerror or digest}"
        return RowChange(content_hash=None, status="failed", reason=reason, **base), "unreadable"
    if row is None and gone.get(digest):
        old = gone[digest].pop(0)  # a rename: the row (id, embedding, failure) moves to the new path
        return RowChange(**{**base, "id": old.id}, content_hash=digest, **_carried(old)), "renamed"
    if row is not None and digest == row.content_hash:
        kind = "restored" if row.status == "deleted" else "touched"
        return RowChange(content_hash=digest, **_carried(row), **base), kind
    donor = embedded.get(digest)
    if donor is not None:  # same content already encoded under another path: reuse its embedding
        change = RowChange(content_hash=digest, status="indexed", shard=donor.shard, shard_row=donor.shard_row,
                           copy_from=donor.id, **base)
        return change, "reused"
    return RowChange(content_hash=digest, status="pending", **base), ("new" if row is None else "changed")


def _carried(row: ImageRow) -> dict[str, Any]:
    """Status implied by what the row already holds: an embedding, a failure reason, or neither."""
    if row.shard is not None:
        return {"status": "indexed", "reason": None, "shard": row.shard, "shard_row": row.shard_row}
    if row.status in ("failed", "deleted") and row.reason:
        return {"status": "failed", "reason": row.reason}
    return {"status": "pending"}


def _maybe_publish(
    db: MetadataStore, store: Path, encoder: ClipEncoder, images: Path, settings: IndexerSettings,
    counts: dict[str, int], timer: StageTimer, publisher: Publisher,
) -> tuple[str | None, bool]:
    """Publish when the rows changed since the last version (or none exists); else keep the current one.

    Returns the version now current and whether this run published it.
    """
    current = current_version(store)
    if (current is not None and not db.dirty and db.get_meta("published") == current
            and _current_fits(store, _configured_shards(settings))):
        return current, False
    if counts["indexed"] == 0:
        return current, False  # nothing to put in an index; the report's counts say so
    request = PublishRequest(store, db, encoder, images, settings, counts, timer.as_dict())
    with timer.stage("index_build"):
        version = publisher(request)
    db.mark_published(version)
    return version, True


def _configured_shards(settings: IndexerSettings) -> int:
    from indexer.index.index_select import IndexConfig

    return IndexConfig.from_dict(settings.index_options()).shards


def _current_fits(store: Path, shards: int) -> bool:
    """Whether the current version lists its encoder files and has the configured shard count. One published
    before versions carried their encoder is republished once, so the service (which refuses it) can serve the
    store; one with another shard count is republished from the stored embeddings (re-sharding: no encode)."""
    from search.artifact.manifest import ArtifactError, read_manifest
    from search.artifact.version import current_path

    try:
        manifest = read_manifest(current_path(store))
    except ArtifactError:
        return False
    return manifest.encoder_files is not None and manifest.shard_count == shards


def publish_step(req: PublishRequest) -> str:
    """The final step: gather indexed embeddings (ascending id) and hand them to indexer.index.publish."""
    from indexer.encoding.encode import onnx_cache_dir
    from indexer.index.index_select import IndexConfig
    from indexer.index.publish import publish_version
    from indexer.models.export import export_bundle

    encoder_files = export_bundle(req.encoder, req.store, onnx_cache_dir(req.settings))
    ids, vectors = shards.gather(req.store / SHARDS_DIR, req.store_db.embedding_refs(), req.encoder.dim)
    summary = {k: req.counts[k] for k in ("indexed", "failed", "deleted")}
    published = publish_version(
        req.store, ids, vectors, req.store / DB_NAME, req.encoder.identity, req.image_root,
        IndexConfig.from_dict(req.settings.index_options()), summary, req.timings, encoder_files=encoder_files,
    )
    return published.name


def remove_publish_debris(store: Path) -> list[str]:
    """A publish killed mid-way leaves `versions/.tmp-*` (and maybe a `.current.*` link): only a run holding the
    store lock calls this, so nothing else can be writing them."""
    from indexer.index.publish import remove_temporaries

    return remove_temporaries(store)


def _save_report(store: Path, report: dict[str, Any]) -> Path:
    runs = store / RUNS_DIR
    runs.mkdir(exist_ok=True)
    path = runs / f"{report['run_id']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
