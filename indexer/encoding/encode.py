"""Encode the store's pending images in batches; each batch is committed (shard + rows) before the next.

Decoding runs ahead in worker processes (a bounded window of scheduled files) while the main process
encodes the previous batch, so CPU workers and the CPU/GPU encoder overlap. A file that fails to decode is
committed as 'failed' in the same batch as its neighbours; it never holds the batch back.

The image encoders form a small device pool (indexer.encoding.device_pool): on a GPU machine CPU ONNX sessions take a
batch when the GPU already holds `overflow_queue_depth` of them; batches are still committed in order. On a
CPU-only machine (no overflow workers) the pool encodes inline, exactly as a single encoder did.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.encoding.device_pool import DevicePool, overflow_threads, overflow_workers
from indexer.ingest.decode import DecodeOutcome, DecodePool, start_decode_server
from indexer.ingest.paths import display
from indexer.models.clip import ClipEncoder
from indexer.models.export import default_cache_dir
from indexer.models.towers import build_image_encoder, onnx_image_encoder
from indexer.progress import StageTimer, progress_bar
from indexer.settings import IndexerSettings
from indexer.storage import shards
from indexer.storage.store import Decoded, MetadataStore
from search.runtime.towers import ImageEncoder


@dataclass
class EncodeStats:
    encoded: int = 0
    failed: int = 0
    batches: int = 0
    decode_worker_s: float = 0.0
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"path", "warning"}: indexed anyway
    metadata_errors: int = 0  # images indexed without a corrupt EXIF/IPTC/XMP block's fields
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # member -> batches/images/encode_s (pool)


PoolFactory = Callable[[ClipEncoder, IndexerSettings], DevicePool]


def encode_pending(
    pending: list[tuple[int, str]],
    image_root: Path,
    encoder: ClipEncoder,
    store: MetadataStore,
    shard_dir: Path,
    settings: IndexerSettings,
    timer: StageTimer,
    make_pool: PoolFactory | None = None,
) -> EncodeStats:
    """Decode, encode and commit every pending (id, relative path); returns what happened.

    `make_pool` builds the image encoders (default `device_pool_for`: the settings' backend, plus CPU overflow
    workers on a GPU machine).
    """
    stats = EncodeStats()
    if not pending:
        return stats
    start_decode_server()  # its imports overlap the encoder's loading (a lazy encoder loads on first use below)
    next_shard = store.next_shard_number()
    pool = DecodePool(encoder.preprocess, settings.workers, settings.decode_timeout_s, settings.max_image_pixels,
                      draft_side=jpeg_draft_side(encoder, settings), read_meta=settings.read_file_metadata)
    with ExitStack() as stack:
        stack.enter_context(pool)
        bar = stack.enter_context(progress_bar(len(pending), "encode"))
        setup = stack.enter_context(ThreadPoolExecutor(1))
        # the ONNX export (first use of an encoder) and session creation run while the decode workers start
        prepared = setup.submit(_prepare, encoder, settings, timer, make_pool or device_pool_for)
        decoded = DecodeAhead(pool, pending, image_root, settings.batch_size + 4 * settings.workers, timer)
        with timer.stage("encoder_setup_wait"):
            devices = stack.enter_context(prepared.result())
        commits = OrderedCommits(devices, store, shard_dir, stats, timer)
        batch: list[tuple[int, str, DecodeOutcome]] = []
        for row_id, path, outcome in decoded:
            batch.append((row_id, path, outcome))
            if len(batch) >= settings.batch_size:
                commits.add(batch, shards.shard_name(next_shard))
                next_shard, batch = next_shard + 1, []
            bar.update(1)
        if batch:
            commits.add(batch, shards.shard_name(next_shard))
        commits.finish()
        stats.devices = devices.report()
    return stats


def onnx_cache_dir(settings: IndexerSettings) -> Path:
    return Path(settings.onnx_cache_dir) if settings.onnx_cache_dir else default_cache_dir()


def image_encoder_for(encoder: ClipEncoder, settings: IndexerSettings, threads: int = 0) -> ImageEncoder:
    """The image backend the settings ask for (auto: ONNX Runtime on CPU, torch on CUDA)."""
    return build_image_encoder(encoder, settings.image_backend, onnx_cache_dir(settings), threads,
                               settings.onnx_micro_batch, settings.image_precision)


def device_pool_for(encoder: ClipEncoder, settings: IndexerSettings) -> DevicePool:
    """The settings' image backend as the primary, plus `overflow_workers` CPU ONNX sessions (default: one when
    the primary runs on CUDA, none on a CPU-only machine, which then encodes inline exactly as before)."""
    device = str(encoder.device)
    primary = image_encoder_for(encoder, settings)
    backend = type(primary).__name__.removesuffix("ImageEncoder").lower()
    count = overflow_workers(settings.overflow_workers, device)
    threads = overflow_threads(settings.overflow_threads, count, settings.workers)
    overflow = [(f"cpu-overflow-{i}", onnx_image_encoder(encoder, onnx_cache_dir(settings), threads,
                                                         settings.onnx_micro_batch, settings.image_precision))
                for i in range(1, count + 1)]
    return DevicePool((f"{device}:{backend}", primary), overflow, settings.overflow_queue_depth,
                      settings.encode_batch_timeout_s)


def _prepare(encoder: ClipEncoder, settings: IndexerSettings, timer: StageTimer, make_pool: PoolFactory
             ) -> DevicePool:
    with timer.stage("encoder_setup"):
        return make_pool(encoder, settings)


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


@dataclass
class _Pending:
    name: str
    decoded: list[Decoded]
    failed: list[tuple[int, str]]
    vectors: Future[np.ndarray] | None


class OrderedCommits:
    """Batches go to the device pool as they fill and are committed in submission order (shard numbering and
    commit order as with one encoder). Only vectors wait here, never pixels: a batch encoded out of order holds
    ~dim x 4 bytes per image until the batches before it are committed (at most REORDER_WINDOW batches)."""

    REORDER_WINDOW = 64

    def __init__(self, devices: DevicePool, store: MetadataStore, shard_dir: Path, stats: EncodeStats,
                 timer: StageTimer):
        self.devices, self.store, self.shard_dir, self.stats, self.timer = devices, store, shard_dir, stats, timer
        self.waiting: deque[_Pending] = deque()

    def add(self, batch: list[tuple[int, str, DecodeOutcome]], name: str) -> None:
        """Record the batch's decode results, send its decoded images to a device, commit what is ready."""
        good = [(row_id, o) for row_id, _, o in batch if o.ok]
        failed = [(row_id, o.reason or "unknown decode failure") for row_id, _, o in batch if not o.ok]
        _count_decode(batch, self.stats)
        vectors: Future[np.ndarray] | None = None
        if good:
            stage = "encode" if not self.devices.pipelined else "encode_wait"  # inline: the encode itself
            with self.timer.stage(stage):
                vectors = self.devices.submit(np.stack([o.pixels for _, o in good if o.pixels is not None]))
        decoded = [Decoded(r, o.width, o.height, o.file_meta or None) for r, o in good]
        self.waiting.append(_Pending(name, decoded, failed, vectors))
        while self.waiting and (len(self.waiting) > self.REORDER_WINDOW or _ready(self.waiting[0])):
            self._commit_first()

    def finish(self) -> None:
        while self.waiting:
            self._commit_first()

    def _commit_first(self) -> None:
        item = self.waiting.popleft()
        vectors = None
        if item.vectors is not None:
            with self.timer.stage("encode_wait"):
                vectors = item.vectors.result()  # a batch that failed on every member it was tried on raises here
        write_batch(item.name, item.decoded, vectors, item.failed, self.store, self.shard_dir, self.stats,
                    self.timer)


def _ready(item: _Pending) -> bool:
    return item.vectors is None or item.vectors.done()


def _count_decode(batch: list[tuple[int, str, DecodeOutcome]], stats: EncodeStats) -> None:
    stats.decode_worker_s += sum(o.seconds for _, _, o in batch)
    stats.warnings.extend({"path": display(p), "warning": w} for _, p, o in batch for w in o.warnings)
    stats.warnings.extend({"path": display(p), "warning": f"metadata not read: {w}"}
                          for _, p, o in batch for w in o.meta_problems)
    stats.metadata_errors += sum(1 for _, _, o in batch if o.meta_problems)


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
