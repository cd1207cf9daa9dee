"""Start-up wiring of the serving core from settings: the process thread budget and the text batcher/pool.

Kept out of state.py so the service state only calls two functions.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from search.artifact.bundle import TEXT_INT8_FILE
from search.metrics import ServiceMetrics
from search.query.pipeline import QueryEmbedder
from search.runtime.batcher import MicroBatcher
from search.runtime.costs import CostModel
from search.runtime.members import build_members
from search.runtime.pool import Member, PoolMetrics, SessionPool
from search.runtime.threads import ThreadBudget, configure_process, resolve_budget
from search.settings import PoolMemberSettings, Settings

__all__ = ["build_fast_embedder", "build_image_pool", "build_text_batcher", "configure_threads",
           "freeze_startup_heap"]

log = logging.getLogger(__name__)


def configure_threads(settings: Settings) -> ThreadBudget:
    """Resolve and apply the `threads` section (FAISS now; ONNX sessions created after this)."""
    t = settings.threads
    budget = resolve_budget(t.ort_intra_op, t.ort_inter_op, t.ort_spinning, t.faiss_omp, t.loop_workers, t.cores)
    configure_process(budget)
    return budget


def build_text_batcher(text: Any, settings: Settings, metrics: ServiceMetrics) -> MicroBatcher:
    """The micro-batcher over a session pool: the configured members, or the text session alone. `text` is the
    service's encoder (its text tower comes from the artifact); configured members need it loaded at start."""
    batching, pool_cfg = settings.batching, settings.pool
    max_batch = batching.max_batch if batching.window_ms > 0 else 1
    configs = list(pool_cfg.members)
    if configs and getattr(text, "loaded", True) is None:
        log.warning("pool.members need an encoder at start and no index version has opened yet: serving with "
                    "the text session alone until the next start")
        configs = []
    members = build_members(text, configs, max_batch, calibrate_in_background=True,
                            solo_threads=solo_threads(settings))
    pool = SessionPool(members, latency_budget_s=pool_cfg.latency_budget_ms / 1000.0,
                       timeout_s=pool_cfg.member_timeout_s, metrics=PoolMetrics(metrics.registry),
                       on_batch=metrics.batch_size.observe, batch_budget_s=batching.batch_cost_budget_ms / 1000.0)
    return MicroBatcher(text, batching.window_ms / 1000.0, batching.max_batch, pool=pool)


def solo_threads(settings: Settings) -> int:
    """Intra-op threads of the lone-query session (1: none): `threads.solo_intra_op`, 0 = every core this process
    may use, and none when that is no more than the load-time sessions already have."""
    budget = resolve_budget(settings.threads.ort_intra_op, cores=settings.threads.cores)
    cores = resolve_budget(ort_intra_op=0, faiss_omp=0, cores=settings.threads.cores).faiss_omp
    solo = settings.threads.solo_intra_op or cores
    return solo if solo > budget.ort_intra_op else 1


def separate_fast_tower(text: Any, settings: Settings) -> bool:
    """Whether `phase=fast` runs its own text tower: the artifact's int8 one while the full answer runs fp32."""
    loaded = getattr(text, "loaded", None)
    return settings.runtime.text_precision == "fp32" and loaded is not None and \
        TEXT_INT8_FILE in loaded.bundle.files


def build_fast_embedder(text: Any, settings: Settings, metrics: ServiceMetrics,
                        embedder: QueryEmbedder) -> QueryEmbedder:
    """The `phase=fast` query embedder: the artifact's int8 text tower when the full answer runs fp32 (its own
    batcher and cache key); else the full embedder itself (the same tower, so the same cache entries; the fast
    phase then differs by skipping rerank, business signals, dedup and MMR)."""
    if not separate_fast_tower(text, settings):
        return embedder
    batching = settings.batching
    members = build_members(text, [PoolMemberSettings(precision="int8")], batching.max_batch,
                            calibrate_in_background=True)
    pool = SessionPool(members, latency_budget_s=settings.pool.latency_budget_ms / 1000.0,
                       timeout_s=settings.pool.member_timeout_s,
                       metrics=PoolMetrics(metrics.registry, prefix="photostock_fast_pool"),
                       batch_budget_s=batching.batch_cost_budget_ms / 1000.0)
    batcher = MicroBatcher(text, batching.window_ms / 1000.0, batching.max_batch, pool=pool)
    return QueryEmbedder(embedder.encoder_key + "#int8", embedder.cache, batcher, metrics, embedder.normalize)


def build_image_pool(encoder: Any, settings: Settings, metrics: ServiceMetrics) -> SessionPool:
    """Uploads: the artifact's image session as a pool member (concurrent uploads share batches; faults as for
    text). Its cost is learnt from the first uploads: measuring it at start would load the image session,
    which the service defers so that text queries are ready first."""
    def encode_pixels(pixels: Any) -> Any:
        return encoder.current.image.encode_pixels(pixels)

    member = Member("image-0", "cpu", encode_pixels, CostModel(), max_batch=settings.batching.max_batch)
    return SessionPool([member], latency_budget_s=settings.pool.latency_budget_ms / 1000.0,
                       timeout_s=settings.pool.member_timeout_s,
                       metrics=PoolMetrics(metrics.registry, prefix="photostock_image_pool"),
                       batch_budget_s=settings.batching.batch_cost_budget_ms / 1000.0)


def freeze_startup_heap() -> int:
    """Move everything start-up loaded (libraries, settings, the encoder's Python side, FastAPI's routes and
    models) out of the cyclic garbage collector's reach: a full collection on the event loop then walks only
    what requests created since (a profile of 16-connection misses had 12.5% of the loop's samples in the
    collector). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
