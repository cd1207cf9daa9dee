"""Everything one running service holds (encoder, artifact holder, cache, batcher, metrics), built at
startup from settings. No FastAPI here: the app only wires these parts to routes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.artifact import current_path
from search.batcher import MicroBatcher
from search.encoder import ClipEncoder, EncoderIdentity, load_encoder
from search.images import ImageStore
from search.manifest import read_manifest
from search.metrics import ServiceMetrics
from search.pipeline import QueryEmbedder, Searcher
from search.query_log import QueryLog
from search.reload import ArtifactHolder, ReloadOutcome
from search.settings import Settings
from search.text_cache import QueryEmbeddingCache
from search.image_encoder import ImageEncoder, build_image_encoder
from search.text_encoder import TextEncoder, build_text_encoder
from search.runtime.pool import SessionPool  # noqa: I001 (serving core; kept last for a small merge)
from search.runtime.serving import build_fast_embedder, build_image_pool, build_text_batcher, configure_threads

log = logging.getLogger(__name__)

__all__ = ["ServiceState", "build_state", "configured_encoder"]


@dataclass
class ServiceState:
    settings: Settings
    encoder: ClipEncoder
    text: TextEncoder
    image: ImageEncoder
    holder: ArtifactHolder
    embedder: QueryEmbedder
    searcher: Searcher
    batcher: MicroBatcher
    images: ImageStore
    metrics: ServiceMetrics
    query_log: QueryLog | None = None
    fast_embedder: QueryEmbedder | None = None  # phase=fast (None: the full embedder)
    image_pool: SessionPool | None = None  # uploads' image session(s); None: encode_image in a thread

    @property
    def identity(self) -> EncoderIdentity:
        return self.encoder.identity

    def encode_image(self, image: Any) -> np.ndarray:
        """An uploaded RGB image -> its unit vector, through the configured image backend."""
        pixels = np.asarray(self.encoder.preprocess(image), dtype=np.float32)[None]
        return self.image.encode_pixels(pixels)[0]

    async def encode_upload(self, image: Any) -> np.ndarray:
        """An uploaded RGB image -> its unit vector: preprocess in a thread, encode through the image pool."""
        if self.image_pool is None:
            return await asyncio.to_thread(self.encode_image, image)
        pixels = await asyncio.to_thread(lambda: np.asarray(self.encoder.preprocess(image), dtype=np.float32))
        return await self.image_pool.submit(pixels, 1)

    def close(self) -> None:
        if self.image_pool is not None:
            self.image_pool.close()
        self.batcher.close()
        if self.fast_embedder is not None and self.fast_embedder.batcher is not self.batcher:
            self.fast_embedder.batcher.close()
        self.holder.close()
        if self.query_log is not None:
            self.query_log.close()


def configured_encoder(settings: Settings) -> ClipEncoder:
    """The encoder named in config, or (model: null) the one the current manifest names; either way its
    identity must equal the served artifact's, which the holder checks on every load."""
    cfg = settings.encoder
    model, pretrained = cfg.model, cfg.pretrained
    if model is None:
        manifest = read_manifest(current_path(Path(settings.store)))
        model = manifest.encoder.model
        weights = manifest.encoder.weights
        if pretrained is None and weights != "random-init" and not Path(weights).suffix:
            pretrained = weights  # an open_clip pretrained tag; a checkpoint file name means the model default
    return load_encoder(model, pretrained=pretrained, device=cfg.device)


def _record_reload(metrics: ServiceMetrics, holder_ref: list[ArtifactHolder]) -> callable:
    def on_change(outcome: ReloadOutcome) -> None:
        metrics.reloads.labels(result="ok" if outcome.loaded else "refused").inc()
        metrics.reload_failed.set(1 if outcome.error else 0)
        metrics.set_reload_error(outcome.error)
        if outcome.loaded and holder_ref:
            with holder_ref[0].lease() as artifact:
                metrics.set_version(artifact.version, len(artifact.ids))
    return on_change


def build_state(settings: Settings, encoder: ClipEncoder | None = None) -> ServiceState:
    """Heavy start-up work (model load, ONNX export/load, index open); call from a worker thread."""
    if settings.store is None:
        raise ValueError("settings.store is required (pass --store STORE)")
    metrics = ServiceMetrics()
    configure_threads(settings)
    encoder = encoder or configured_encoder(settings)
    text = build_text_encoder(encoder, settings.text.backend, settings.text.cache_dir(), settings.text.threads)
    image = build_image_encoder(encoder, settings.encoder.image_backend, settings.text.cache_dir(),
                                settings.text.threads)
    holder_ref: list[ArtifactHolder] = []
    holder = ArtifactHolder(Path(settings.store), encoder.identity, settings.reload.verify_checksums,
                            on_change=_record_reload(metrics, holder_ref), ann_params=settings.rank.ann_params)
    holder_ref.append(holder)
    holder.reload()
    batcher = build_text_batcher(text, settings, metrics)
    cache = QueryEmbeddingCache(settings.cache.maxsize, settings.cache.ttl_s)
    embedder = QueryEmbedder(encoder.identity.key, cache, batcher, metrics)
    return ServiceState(
        settings=settings, encoder=encoder, text=text, image=image, holder=holder, embedder=embedder,
        fast_embedder=build_fast_embedder(text, settings, metrics, embedder),
        image_pool=build_image_pool(image, _pixel_shape(encoder), settings, metrics),
        searcher=Searcher(holder, settings.rank), batcher=batcher,
        images=ImageStore(settings.images.thumbnail_px, settings.images.thumbnail_cache), metrics=metrics,
        query_log=QueryLog(settings.query_log) if settings.query_log is not None else None,
    )


def _pixel_shape(encoder: ClipEncoder) -> tuple[int, ...]:
    """(3, H, W) of the encoder's preprocessed images (for the image pool's cost calibration)."""
    from PIL import Image

    return tuple(np.asarray(encoder.preprocess(Image.new("RGB", (32, 32)))).shape)
