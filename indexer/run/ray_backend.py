"""`python -m indexer build --backend ray`: the decode/encode/write stage of a build as a Ray Data pipeline.

Only the middle of the run changes. Scan, the incremental plan (which inserts the rows, so ids are assigned
in the live SQLite store before any Ray work starts), the sidecar, the index build and the atomic publish are
the local backend's own code (`indexer.run.pipeline.run_build` with `encode_stage=`). Here the pending (id, path)
list becomes a Ray dataset: decode in CPU tasks (`indexer.run.ray_stages.decode_batch`) -> `map_batches` with
encoder actors (one per GPU where the cluster has GPUs, CPU actors otherwise) -> back on the driver, each
batch goes through `indexer.encoding.encode.write_batch` (shard file, then one SQLite transaction), as locally.
Batches are committed as they stream in, so a run that dies keeps what it committed and the next run resumes.

Ray is an optional extra and is imported only inside this backend.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from indexer.encoding.encode import EncodeStats, jpeg_draft_side, write_batch
from indexer.ingest.paths import display
from indexer.models.clip import ClipEncoder
from indexer.progress import StageTimer, progress_bar
from indexer.run.ray_stages import EncoderActor, decode_batch, row_path
from indexer.settings import IndexerSettings, SettingsError
from indexer.storage import shards
from indexer.storage.store import Decoded, MetadataStore

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "pip install 'photostock-search[distributed]' (in a checkout: .venv/bin/pip install -e '.[distributed]')"
)
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # decoded pixels stream through it; a bounded window, not the dataset
DECODE_TASK_RETRIES = 1  # a decode task whose worker process died is retried once, then the run stops


class RayUnavailableError(RuntimeError):
    """Ray is not installed: the message says how to install the `distributed` extra."""


class RayBackendError(RuntimeError):
    """The Ray pipeline failed; batches committed before the failure stay, the rest stay pending."""


@dataclass(frozen=True)
class RayOptions:
    """How to reach Ray and size the pipeline; `None` fields are derived from the cluster's resources."""

    address: str | None = None  # None: start a local Ray instance sized to this machine
    encoder_actors: int | None = None
    decode_rows_per_task: int = 16


@dataclass(frozen=True)
class ResourcePlan:
    """Encoder actor pool shape: `actors` copies of the model, each holding `cpus` CPUs and `gpus` GPUs."""

    actors: int
    cpus: int
    gpus: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"


def import_ray() -> ModuleType:
    """`ray` with `ray.data`, or RayUnavailableError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] part of the extra
    except ImportError as exc:
        raise RayUnavailableError(
            f"--backend ray needs Ray Data, which is not installed ({exc}); install the distributed extra: "
            f"{INSTALL_HINT}"
        ) from exc
    return ray


def ray_encode_stage(options: RayOptions) -> functools.partial[EncodeStats]:
    """The `encode_stage` for `run_build`; checks that Ray imports now, before the run takes the store lock."""
    import_ray()
    return functools.partial(encode_pending_ray, options=options)


def stage_for_backend(backend: str, address: str | None) -> functools.partial[EncodeStats] | None:
    """`--backend/--ray-address` to an `encode_stage` for `run_build` (None: the local one)."""
    if backend == "ray":
        return ray_encode_stage(RayOptions(address=address))
    if backend != "local":
        raise SettingsError(f"unknown backend {backend!r}; expected 'local' or 'ray'")
    if address:
        raise SettingsError("--ray-address only applies with --backend ray")
    return None


def plan_resources(cluster: Mapping[str, float], actors: int | None = None, use_gpus: bool = True) -> ResourcePlan:
    """One encoder actor per GPU when there are GPUs. CPU-only: at most about a quarter of the CPUs hold
    encoder actors (at least one; 2 threads each from 8 CPUs up), the rest decode: decoding costs as much as
    the tiny model's encode at small sizes and far more for photos (docs/scaling.md); `actors` overrides."""
    gpus = int(cluster.get("GPU", 0)) if use_gpus else 0
    cpus = max(1, int(cluster.get("CPU", 1)))
    if gpus:
        return ResourcePlan(actors=actors or gpus, cpus=1, gpus=1)
    threads = 2 if cpus >= 8 else 1
    return ResourcePlan(actors=actors or max(1, cpus // (4 * threads)), cpus=threads, gpus=0)


def encode_pending_ray(
    pending: list[tuple[int, str]],
    image_root: Path,
    encoder: ClipEncoder,
    store: MetadataStore,
    shard_dir: Path,
    settings: IndexerSettings,
    timer: StageTimer,
    *,
    options: RayOptions,
) -> EncodeStats:
    """Same contract as `indexer.encoding.encode.encode_pending`, with decode and encode running on Ray."""
    stats = EncodeStats()
    if not pending:
        return stats
    ray = import_ray()
    with _session(ray, options, timer):
        plan = plan_resources(ray.cluster_resources(), options.encoder_actors, use_gpus=settings.device != "cpu")
        log.info("ray backend: %d pending images, encoder actors %s", len(pending), plan)
        dataset = _dataset(ray, pending, image_root, encoder, settings, options, plan)
        _consume(ray, dataset, len(pending), store, shard_dir, settings, stats, timer)
    return stats


@contextmanager
def _session(ray: ModuleType, options: RayOptions, timer: StageTimer) -> Iterator[None]:
    """Use a Ray the caller already started; else connect to `address` or start a local one, and stop it."""
    if ray.is_initialized():
        yield
        return
    with timer.stage("ray_init"):
        _init(ray, options)
    try:
        yield
    finally:
        ray.shutdown()


def _init(ray: ModuleType, options: RayOptions) -> None:
    if options.address:
        import indexer
        import search

        # the cluster's workers get this checkout's code (model config and tiny checkpoint included)
        ray.init(address=options.address, runtime_env={"py_modules": [indexer, search]},
                 logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 include_dashboard=False, logging_level=logging.WARNING)


def _portable(encoder: ClipEncoder) -> ClipEncoder:
    """The encoder as shipped to actors: on the CPU, so it unpickles on nodes without CUDA (actors move it)."""
    if encoder.device.type == "cpu":
        return encoder
    import copy

    import torch

    clone = copy.copy(encoder)
    clone.model = copy.deepcopy(encoder.model).to("cpu")
    clone.device = torch.device("cpu")
    return clone


def _pixel_shape(encoder: ClipEncoder) -> tuple[int, ...]:
    """What the encoder's preprocess produces, so failed rows can carry zeros of the same shape."""
    from PIL import Image

    return tuple(np.asarray(encoder.preprocess(Image.new("RGB", (32, 32)))).shape)


def _dataset(
    ray: ModuleType, pending: list[tuple[int, str]], image_root: Path, encoder: ClipEncoder,
    settings: IndexerSettings, options: RayOptions, plan: ResourcePlan,
) -> Any:
    """file list -> decode tasks (1 CPU each) -> encoder actor pool; lazily executed, streamed by the driver."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty()
    items = [{"id": int(i), "path": os.fsencode(p)} for i, p in pending]  # bytes: lossless for any name
    blocks = max(1, math.ceil(len(items) / options.decode_rows_per_task))
    decode_kwargs = {"image_root": str(image_root), "preprocess": encoder.preprocess,
                     "max_pixels": settings.max_image_pixels, "pixel_shape": _pixel_shape(encoder),
                     "timeout_s": settings.decode_timeout_s, "draft_side": jpeg_draft_side(encoder, settings),
                     "read_meta": settings.read_file_metadata, "worker_process": True}
    with warnings.catch_warnings():
        # Ray Data retries a task whose worker died forever by default (a decoder that crashes its process
        # would loop); Ray 2.60 has no named parameter for max_retries, only the deprecated remote args.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        decoded = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            decode_batch, batch_size=options.decode_rows_per_task, batch_format="numpy", fn_kwargs=decode_kwargs,
            num_cpus=1, max_retries=DECODE_TASK_RETRIES,
        )
    return decoded.map_batches(
        EncoderActor, batch_size=settings.batch_size, batch_format="numpy",
        fn_constructor_kwargs={"encoder": _portable(encoder), "device": plan.device, "threads": plan.cpus,
                               "settings": settings},
        compute=_actor_pool(ray, plan), num_cpus=plan.cpus, num_gpus=plan.gpus,
    )


def _actor_pool(ray: ModuleType, plan: ResourcePlan) -> Any:
    """GPU actors: a fixed pool, one per GPU. CPU actors: Ray Data grows the pool from 1 up to `plan.actors`
    only while decoded batches queue up, so with photo-sized images (decode-bound) CPUs stay with decoding."""
    if plan.gpus:
        return ray.data.ActorPoolStrategy(size=plan.actors)
    return ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors)


def _consume(
    ray: ModuleType, dataset: Any, total: int, store: MetadataStore, shard_dir: Path, settings: IndexerSettings,
    stats: EncodeStats, timer: StageTimer,
) -> None:
    """Commit each streamed batch through the local backend's `write_batch`; Ray failures get a clear error."""
    next_shard = store.next_shard_number()
    try:
        with progress_bar(total, "encode (ray)") as bar, timer.stage("ray_pipeline"):
            for batch in dataset.iter_batches(batch_size=settings.batch_size, batch_format="numpy"):
                _commit(batch, shards.shard_name(next_shard), store, shard_dir, stats, timer)
                next_shard += 1
                bar.update(len(batch["id"]))
    except ray.exceptions.RayError as exc:
        done = stats.encoded + stats.failed
        raise RayBackendError(
            f"Ray pipeline failed after {done} of {total} images were committed; the other {total - done} stay "
            f"pending and the next run resumes them ({type(exc).__name__}: {exc})"
        ) from exc


def _commit(
    batch: dict[str, np.ndarray], name: str, store: MetadataStore, shard_dir: Path, stats: EncodeStats,
    timer: StageTimer,
) -> None:
    """One streamed batch: successes with their vectors, failures with their reasons, in one commit."""
    ok = np.asarray(batch["ok"], bool)
    ids, paths = np.asarray(batch["id"], np.int64), batch["path"]
    metas = batch.get("file_meta")
    decoded = [Decoded(int(ids[r]), int(batch["width"][r]), int(batch["height"][r]),
                       (json.loads(metas[r]) or None) if metas is not None else None) for r in np.flatnonzero(ok)]
    failed = [(int(ids[r]), str(batch["reason"][r]) or "unknown decode failure") for r in np.flatnonzero(~ok)]
    stats.decode_worker_s += float(np.sum(batch["decode_s"]))
    shown = [display(row_path(p)) for p in paths]
    stats.warnings.extend({"path": p, "warning": w} for p, ws in zip(shown, batch["warnings"], strict=True)
                          for w in json.loads(ws))
    problems = batch.get("meta_problems")
    if problems is not None:
        found = [(p, json.loads(ws)) for p, ws in zip(shown, problems, strict=True)]
        stats.warnings.extend({"path": p, "warning": f"metadata not read: {w}"} for p, ws in found for w in ws)
        stats.metadata_errors += sum(1 for _, ws in found if ws)
    timer.add("encode", float(np.sum(batch["encode_s"])))  # encoder actors' busy time, summed over actors
    vectors = np.asarray(batch["vector"], np.float32)[ok] if decoded else None
    write_batch(name, decoded, vectors, failed, store, shard_dir, stats, timer)
