"""Encode the store's pending images in batches; each batch is committed (shard + rows) before the next.

Decoding runs ahead in worker processes (a bounded window of scheduled files) while the main process
encodes the previous batch, so CPU workers and the CPU/GPU encoder overlap. A file that fails to decode is
committed as 'failed' in the same batch as its neighbours; it never holds the batch back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer import shards
from indexer.decode import DecodeOutcome, DecodePool, start_decode_server
from indexer.models.clip import ClipEncoder
from indexer.models.export import default_cache_dir
from indexer.models.towers import build_image_encoder
from indexer.paths import display
from indexer.progress import StageTimer, progress_bar
from indexer.settings import IndexerSettings
from indexer.store import Decoded, MetadataStore
from search.runtime.towers import ImageEncoder


@dataclass
class EncodeStats:
    encoded: int = 0
    failed: int = 0
    batches: int = 0
    decode_worker_s: float = 0.0
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"path", "warning"}: indexed anyway
    metadata_errors: int = 0  # images indexed without a corrupt EXIF/IPTC/XMP block's fields


def encode_pending(
    pending: list[tuple[int, str]],
    image_root: Path,
    encoder: ClipEncoder,
    store: MetadataStore,
    shard_dir: Path,
    settings: IndexerSettings,
    timer: StageTimer,
) -> EncodeStats:
    """Decode, encode and commit every pending (id, relative path); returns what happened."""
    stats = EncodeStats()
    if not pending:
        return stats
    start_decode_server()  # its imports overlap the encoder's loading (a lazy encoder loads on first use below)
    next_shard = store.next_shard_number()
    pool = DecodePool(encoder.preprocess, settings.workers, settings.decode_timeout_s, settings.max_image_pixels,
                      draft_side=jpeg_draft_side(encoder, settings), read_meta=settings.read_file_metadata)
    with pool, progress_bar(len(pending), "encode") as bar, ThreadPoolExecutor(1) as setup:
        # the ONNX export (first use of an encoder) and session creation run while the decode workers start
        prepared = setup.submit(_prepare, encoder, settings, timer)
        decoded = DecodeAhead(pool, pending, image_root, settings.batch_size + 4 * settings.workers, timer)
        with timer.stage("encoder_setup_wait"):
            image_encoder = prepared.result()
        batch: list[tuple[int, str, DecodeOutcome]] = []
        for row_id, path, outcome in decoded:
            batch.append((row_id, path, outcome))
            if len(batch) >= settings.batch_size:
                _commit(batch, shards.shard_name(next_shard), image_encoder, store, shard_dir, stats, timer)
                next_shard, batch = next_shard + 1, []
            bar.update(1)
        if batch:
            _commit(batch, shards.shard_name(next_shard), image_encoder, store, shard_dir, stats, timer)
    return stats


def onnx_cache_dir(settings: IndexerSettings) -> Path:
    return Path(settings.onnx_cache_dir) if settings.onnx_cache_dir else default_cache_dir()


def image_encoder_for(encoder: ClipEncoder, settings: IndexerSettings, threads: int = 0) -> ImageEncoder:
    """The image backend the settings ask for (auto: ONNX Runtime on CPU, torch on CUDA)."""
    return build_image_encoder(encoder, settings.image_backend, onnx_cache_dir(settings), threads,
                               settings.onnx_micro_batch, settings.image_precision)


def _prepare(encoder: ClipEncoder, settings: IndexerSettings, timer: StageTimer) -> ImageEncoder:
    with timer.stage("encoder_setup"):
        return image_encoder_for(encoder, settings)


def jpeg_draft_side(encoder: ClipEncoder, settings: IndexerSettings) -> int | None:
    """The side JPEGs may be decoded down to (DCT scaling) before the encoder's resize; None when disabled."""
    if not settings.jpeg_draft:
        return None
    size = getattr(encoder.model.visual, "image_size", None)
    if size is None:
        return None
    return int(size) if isinstance(size, int) else int(max(size))


class DecodeAhead:
    """Files scheduled `ahead` in the decode pool; iterating yields outcomes in submission order.

    Constructing it submits the first window, which starts the worker processes, so the caller can prepare
    the encoder while they import and decode.
    """

    def __init__(self, pool: DecodePool, pending: list[tuple[int, str]], image_root: Path, ahead: int,
                 timer: StageTimer):
        self.pool, self.image_root, self.timer = pool, image_root, timer
        self.todo = iter(pending)
        self.window: deque[tuple[int, str, Future[DecodeOutcome]]] = deque()
        with timer.stage("decode_start"):  # the first submit starts the worker processes
            for row_id, path in self.todo:
                self._submit(row_id, path)
                if len(self.window) >= ahead:
                    break

    def _submit(self, row_id: int, path: str) -> None:
        self.window.append((row_id, path, self.pool.submit(str(self.image_root / path))))

    def __iter__(self) -> Iterator[tuple[int, str, DecodeOutcome]]:
        while self.window:
            row_id, path, future = self.window.popleft()
            with self.timer.stage("decode"):
                outcome = self.pool.outcome(future)
            nxt = next(self.todo, None)
            if nxt is not None:
                self._submit(*nxt)
            yield row_id, path, outcome


def _commit(
    batch: list[tuple[int, str, DecodeOutcome]],
    name: str,
    encoder: ImageEncoder,
    store: MetadataStore,
    shard_dir: Path,
    stats: EncodeStats,
    timer: StageTimer,
) -> None:
    """Encode the batch's decoded images, write their shard, then commit shard + successes + failures."""
    good = [(row_id, o) for row_id, _, o in batch if o.ok]
    failed = [(row_id, o.reason or "unknown decode failure") for row_id, _, o in batch if not o.ok]
    stats.decode_worker_s += sum(o.seconds for _, _, o in batch)
    stats.warnings.extend({"path": display(p), "warning": w} for _, p, o in batch for w in o.warnings)
    stats.warnings.extend({"path": display(p), "warning": f"metadata not read: {w}"}
                          for _, p, o in batch for w in o.meta_problems)
    stats.metadata_errors += sum(1 for _, _, o in batch if o.meta_problems)
    vectors: np.ndarray | None = None
    if good:
        with timer.stage("encode"):
            vectors = encoder.encode_pixels(np.stack([o.pixels for _, o in good if o.pixels is not None]))
    decoded = [Decoded(r, o.width, o.height, o.file_meta or None) for r, o in good]
    write_batch(name, decoded, vectors, failed, store, shard_dir, stats, timer)


def write_batch(
    name: str,
    decoded: list[Decoded],
    vectors: np.ndarray | None,
    failed: list[tuple[int, str]],
    store: MetadataStore,
    shard_dir: Path,
    stats: EncodeStats,
    timer: StageTimer,
) -> None:
    """Shard file first (durable), then one transaction for shard + successes + failures; shared by backends.

    `vectors[i]` is the embedding of `decoded[i]`.
    """
    shard: str | None = None
    if decoded:
        if vectors is None:
            raise ValueError("decoded images need their vectors")
        with timer.stage("write"):
            shards.write_shard(shard_dir, name, np.array([d.id for d in decoded], np.int64), vectors)
        shard = name
    with timer.stage("write"):
        store.commit_batch(shard, decoded, failed)
    stats.encoded += len(decoded)
    stats.failed += len(failed)
    stats.batches += 1
