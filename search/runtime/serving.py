"""Start-up wiring of the serving core from settings: the process thread budget and the text batcher/pool.

Kept out of state.py so the service state only calls two functions.
"""

from __future__ import annotations

from typing import Any

from search.batcher import MicroBatcher
from search.metrics import ServiceMetrics
from search.pipeline import QueryEmbedder
from search.runtime.costs import CostModel
from search.runtime.members import TOWER_PATHS, build_members
from search.runtime.pool import Member, PoolMetrics, SessionPool
from search.runtime.threads import ThreadBudget, configure_process, resolve_budget
from search.settings import PoolMemberSettings, Settings

__all__ = ["build_fast_embedder", "build_image_pool", "build_text_batcher", "configure_threads"]


def configure_threads(settings: Settings) -> ThreadBudget:
    """Resolve and apply the `threads` section (FAISS now; ONNX sessions created after this)."""
    t = settings.threads
    budget = resolve_budget(t.ort_intra_op, t.ort_inter_op, t.ort_spinning, t.faiss_omp, t.loop_workers)
    configure_process(budget)
    return budget


def build_text_batcher(text: Any, settings: Settings, metrics: ServiceMetrics) -> MicroBatcher:
    """The micro-batcher over a session pool: the configured members, or the text session alone."""
    batching, pool_cfg = settings.batching, settings.pool
    max_batch = batching.max_batch if batching.window_ms > 0 else 1
    members = build_members(text, list(pool_cfg.members), max_batch)
    pool = SessionPool(members, latency_budget_s=pool_cfg.latency_budget_ms / 1000.0,
                       timeout_s=pool_cfg.member_timeout_s, metrics=PoolMetrics(metrics.registry),
                       on_batch=metrics.batch_size.observe, batch_budget_s=batching.batch_cost_budget_ms / 1000.0)
    return MicroBatcher(text, batching.window_ms / 1000.0, batching.max_batch, pool=pool)


def build_fast_embedder(text: Any, settings: Settings, metrics: ServiceMetrics,
                        embedder: QueryEmbedder) -> QueryEmbedder:
    """The `phase=fast` query embedder: the int8 text tower when one is registered (its own batcher and cache
    key), else the full embedder itself (the same fp32 tower, so the same cache entries)."""
    if "int8" not in TOWER_PATHS or not hasattr(text, "path"):
        return embedder
    batching = settings.batching
    members = build_members(text, [PoolMemberSettings(precision="int8")], batching.max_batch)
    pool = SessionPool(members, latency_budget_s=settings.pool.latency_budget_ms / 1000.0,
                       timeout_s=settings.pool.member_timeout_s,
                       metrics=PoolMetrics(metrics.registry, prefix="photostock_fast_pool"),
                       batch_budget_s=batching.batch_cost_budget_ms / 1000.0)
    batcher = MicroBatcher(text, batching.window_ms / 1000.0, batching.max_batch, pool=pool)
    return QueryEmbedder(embedder.encoder_key + "#int8", embedder.cache, batcher, metrics)


def build_image_pool(image: Any, pixel_shape: tuple[int, ...], settings: Settings,
                     metrics: ServiceMetrics) -> SessionPool:
    """Uploads: the image session as a pool member (concurrent uploads share batches; faults as for text)."""
    import numpy as np

    cost = CostModel()
    cost.calibrate(image.encode_pixels, np.zeros((1, *pixel_shape), np.float32), rows=(1, 2), repeats=2)
    member = Member("image-0", "cpu", image.encode_pixels, cost, max_batch=settings.batching.max_batch)
    return SessionPool([member], latency_budget_s=settings.pool.latency_budget_ms / 1000.0,
                       timeout_s=settings.pool.member_timeout_s,
                       metrics=PoolMetrics(metrics.registry, prefix="photostock_image_pool"),
                       batch_budget_s=settings.batching.batch_cost_budget_ms / 1000.0)
