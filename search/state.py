"""Everything one running service holds (encoder, artifact holder, cache, batcher, metrics), built at
startup from settings. No FastAPI here: the app only wires these parts to routes.

The encoder comes from the artifact: the first version that opens brings its verified encoder files, and the
service runs those ONNX towers for the rest of its life. A later version built with another encoder is refused
(the reason in /readyz and /metrics) while the old one keeps serving: vectors of two encoders are never
comparable, and a process switching encoders would need two sets of sessions and a cache flush at one
instant. Replicas switch encoders by a restart (a fresh process takes whatever `current` carries).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.artifact.bundle import EncoderBundle, verify_encoder_files
from search.artifact.checksums import CheckLevel
from search.artifact.encoder import EncoderIdentity, encoder_mismatch, weights_label
from search.artifact.images import ImageStore
from search.artifact.manifest import ArtifactError, read_manifest
from search.artifact.reload import ArtifactHolder, NoIndexError, ReloadOutcome
from search.artifact.specs import TokenizerSpec
from search.artifact.takedown import TakedownList
from search.artifact.version import Artifact, current_path
from search.metrics import ServiceMetrics
from search.query.log import QueryLog
from search.query.pipeline import FanoutFor, QueryEmbedder, Searcher, TextBatcher
from search.query.result_cache import ResultCache
from search.query.text_cache import QueryEmbeddingCache, exact_query, normalize_query
from search.runtime.languages import resolve_language
from search.runtime.pool import SessionPool
from search.runtime.towers import RuntimeEncoder, RuntimeOptions
from search.runtime.uploads import UploadRejected
from search.serving import (
    build_fast_embedder,
    build_image_pool,
    build_text_batcher,
    configure_threads,
    separate_fast_tower,
)
from search.settings import EncoderSettings, Settings

log = logging.getLogger(__name__)

__all__ = ["EncoderUnavailable", "RemoteParts", "ServiceEncoder", "ServiceState", "build_state", "pin_mismatch",
           "runtime_options"]


def runtime_options(settings: Settings) -> RuntimeOptions:
    cfg = settings.runtime
    return RuntimeOptions(threads=cfg.threads, providers=tuple(cfg.providers), text_precision=cfg.text_precision)


def pin_mismatch(pins: EncoderSettings, identity: EncoderIdentity, what: str) -> str | None:
    """The configured pins (model, weights, identity key) against an artifact's encoder; None when they hold."""
    wrong = []
    if pins.model is not None and pins.model != identity.model:
        wrong.append(f"model {identity.model!r} (configured: {pins.model!r})")
    if pins.pretrained is not None and weights_label(pins.pretrained) != identity.weights:
        wrong.append(f"weights {identity.weights!r} (configured: {weights_label(pins.pretrained)!r})")
    if pins.key is not None and pins.key != identity.key:
        wrong.append(f"encoder key {identity.key!r} (configured: {pins.key!r})")
    return f"{what} does not have the configured encoder: {'; '.join(wrong)}" if wrong else None


class ServiceEncoder:
    """The service's runtime encoder, taken from the first version admitted; later versions must match it.

    Also the batcher's text encoder (it forwards to the loaded text tower), so the batcher can exist before
    any version has been loaded.
    """

    def __init__(self, pins: EncoderSettings, options: RuntimeOptions, encoder: RuntimeEncoder | None = None,
                 on_load: Callable[[RuntimeEncoder], None] | None = None):
        self.pins = pins
        self.options = options
        self._current = encoder
        self._lock = threading.Lock()
        self._on_load = on_load or (lambda encoder: None)
        self._prefetched: tuple[EncoderBundle, Future[RuntimeEncoder]] | None = None
        if encoder is not None:
            self._on_load(encoder)

    def prefetch(self, store: Path) -> None:
        """Start loading the encoder of the version `current` names, so its ONNX session is created while the
        holder reads the index (cold start). Only a hint: admit() still decides, and loads it itself when the
        hint is missing or failed (its error then reaches /readyz)."""
        if self._current is not None:
            return
        try:
            version_dir = current_path(store)
            bundle = verify_encoder_files(version_dir, read_manifest(version_dir), "size")
        except (ArtifactError, OSError):
            return  # the holder's own open reports what is wrong with this version
        if bundle is None or pin_mismatch(self.pins, bundle.identity, "") is not None:
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="encoder-prefetch")
        self._prefetched = (bundle, pool.submit(RuntimeEncoder.load, bundle, self.options))
        pool.shutdown(wait=False)

    def _load(self, bundle: EncoderBundle) -> RuntimeEncoder:
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] == bundle:
            try:
                return prefetched[1].result()
            except Exception:  # loaded again below, where the failure becomes the version's refusal reason
                log.warning("encoder prefetch of %s failed; loading it again", bundle.directory, exc_info=True)
        return RuntimeEncoder.load(bundle, self.options)

    @property
    def loaded(self) -> RuntimeEncoder | None:
        return self._current

    @property
    def current(self) -> RuntimeEncoder:
        encoder = self._current
        if encoder is None:
            raise NoIndexError("no encoder is loaded (no index version has opened yet)")
        return encoder

    def admit(self, artifact: Artifact) -> None:
        """Refuse `artifact` (ArtifactError) unless its encoder files are the service's encoder (or, first, load
        them and make them the service's encoder)."""
        what = f"version {artifact.version}"
        bundle = artifact.encoder_bundle
        if bundle is None:
            raise ArtifactError(f"{what} carries no encoder files: publish it with `python -m indexer build`")
        reason = pin_mismatch(self.pins, bundle.identity, what)
        if reason is not None:
            raise ArtifactError(reason)
        with self._lock:
            if self._current is None:
                try:
                    self._current = self._load(bundle)
                except Exception as exc:  # ONNX Runtime refusing a graph, an unreadable tokenizer: refuse it
                    raise ArtifactError(f"{what}: its encoder cannot be loaded ({type(exc).__name__}: {exc})") \
                        from exc
                log.info("encoder %s (%s, %s) loaded from %s", bundle.identity.key, bundle.identity.model,
                         bundle.identity.weights, bundle.directory)
                self._on_load(self._current)
                return
            reason = encoder_mismatch(self._current.identity, bundle.identity, what)
        if reason is not None:
            raise ArtifactError(f"{reason}. This service keeps its encoder; restart it to serve the new one")

    # TextEncoder protocol (search.runtime.towers), forwarded to the loaded text tower
    @property
    def context_length(self) -> int:
        return self.current.text.context_length

    @property
    def dim(self) -> int:
        return self.current.dim

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return self.current.text.tokenize(texts)

    def lengths(self, tokens: np.ndarray) -> np.ndarray:
        return self.current.text.lengths(tokens)

    def encode_token_ids(self, tokens: np.ndarray) -> np.ndarray:
        return self.current.text.encode_token_ids(tokens)

    @property
    def trim(self) -> bool:
        """Whether cutting a batch after its longest real sequence is exact for this text tower."""
        return bool(self.current.text.trim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.current.text.encode(texts)


@dataclass(frozen=True)
class RemoteParts:
    """The parts a fleet's ingress runs elsewhere (search/fleet/): the same app and routes, with the query
    encoder and the shards' search replaced by calls. No Ray here: the fleet builds these from its handles."""

    # (normalised text, phase "full" | "fast", source language or None: the model's default) -> unit vector
    text: Callable[[str, str, str | None], Awaitable[np.ndarray]]
    pixels: Callable[[np.ndarray], Awaitable[np.ndarray]]  # preprocessed upload (3, H, W) -> unit vector
    fanout_for: FanoutFor  # the shards of a batch's version (search.query.pipeline.FanoutFor)
    # (opened version, version serving or None) -> None, or ArtifactError: the version is not admitted (the
    # fleet's shards must all have it ready first; search/fleet/switch.py)
    admit: Callable[[Artifact, str | None], None] | None = None


class EncoderUnavailable(RuntimeError):
    """The fleet's query encoder answered nothing in time (its call and one retry failed or passed their
    deadline): the request answers 503 naming it, with Retry-After, rather than waiting without end."""

    def __init__(self, encoder: str, reason: str, retry_after_s: float = 1.0):
        super().__init__(f"query encoder {encoder} is unavailable: {reason}")
        self.encoder = encoder
        self.retry_after_s = retry_after_s


class RemoteText:
    """A query embedder's batcher whose encodes run in the fleet's query-encoder deployment (which batches)."""

    def __init__(self, encode: Callable[[str, str, str | None], Awaitable[np.ndarray]], phase: str):
        self._encode = encode
        self.phase = phase

    @property
    def ready(self) -> bool:
        return True  # the encoder deployment's own replicas answer for their sessions

    async def encode(self, text: str, language: str | None = None) -> np.ndarray:
        return np.asarray(await self._encode(text, self.phase, language), dtype=np.float32)

    def close(self) -> None:
        return None


@dataclass
class ServiceState:
    settings: Settings
    encoder: ServiceEncoder
    holder: ArtifactHolder
    embedder: QueryEmbedder
    searcher: Searcher
    batcher: TextBatcher
    images: ImageStore
    metrics: ServiceMetrics
    query_log: QueryLog | None = None
    takedowns: TakedownList | None = None
    fast_embedder: QueryEmbedder | None = None  # phase=fast (None: the full embedder)
    image_pool: SessionPool | None = None  # uploads' image session(s); None: encode_image in a thread
    remote_pixels: Callable[[np.ndarray], Awaitable[np.ndarray]] | None = None  # a fleet's encoder deployment

    @property
    def identity(self) -> EncoderIdentity:
        return self.encoder.current.identity

    def has_tokens(self, text: str, language: str | None = None) -> bool:
        """False when the query tokenizes to nothing (answered 422); True while no encoder is loaded yet
        (the search itself then answers 503). A query whose vector is cached had tokens: a cache hit skips the
        tokenizer (ftfy + BPE on the event loop)."""
        if self.embedder.cached(text, language) or (self.fast_embedder is not None
                                                    and self.fast_embedder.cached(text, language)):
            return True
        loaded = self.encoder.loaded
        return True if loaded is None else loaded.has_tokens(text)

    def query_language(self, tag: str | None) -> str | None:
        """The source-language code for a query's `lang` (BCP-47) when the model takes one (NLLB); None for the
        model's default (no `lang`, or `lang` naming the default) and for models that take none (they ignore
        it). ValueError (422) for a tag the model's languages do not cover."""
        loaded = self.encoder.loaded
        if tag is None or loaded is None or not loaded.languages:
            return None
        code = resolve_language(tag, loaded.languages)
        return None if code == loaded.default_language else code

    def embedder_for(self, phase: str) -> QueryEmbedder:
        """`phase=fast` has its own embedder when the full answer runs another tower; else the full one."""
        return self.fast_embedder if phase == "fast" and self.fast_embedder is not None else self.embedder

    def encode_image(self, image: Any) -> np.ndarray:
        """An uploaded image -> its unit vector; 400 when the preprocess cannot read it."""
        encoder = self.encoder.current
        try:
            pixels = encoder.preprocess(image)[None]
        except (OSError, ValueError, TypeError, ArithmeticError) as exc:
            raise UploadRejected(400, f"image cannot be preprocessed ({type(exc).__name__}: {exc})") from exc
        return np.asarray(encoder.image.encode_pixels(pixels)[0], dtype=np.float32)

    async def encode_upload(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed upload pixels (3, H, W) -> unit vector, through the image pool (concurrent uploads share
        batches; a failing session is retried elsewhere), a fleet's encoder deployment or, without either, the
        image tower in a thread."""
        if self.remote_pixels is not None:
            return np.asarray(await self.remote_pixels(pixels), dtype=np.float32)
        if self.image_pool is None:
            vectors = await asyncio.to_thread(self.encoder.current.image.encode_pixels, pixels[None])
            return np.asarray(vectors[0], dtype=np.float32)
        return await self.image_pool.submit(pixels, 1)

    def close(self) -> None:
        if self.image_pool is not None:
            self.image_pool.close()
        self.batcher.close()
        self.searcher.close()
        if self.fast_embedder is not None and self.fast_embedder.batcher is not self.batcher:
            self.fast_embedder.batcher.close()
        self.holder.close()
        if self.query_log is not None:
            self.query_log.close()


def _record_reload(metrics: ServiceMetrics, holder_ref: list[ArtifactHolder]) -> Callable[[ReloadOutcome], None]:
    def on_change(outcome: ReloadOutcome) -> None:
        metrics.reloads.labels(result="ok" if outcome.loaded else "refused").inc()
        metrics.reload_failed.set(1 if outcome.error else 0)
        metrics.set_reload_error(outcome.error)
        if outcome.loaded and holder_ref:
            with holder_ref[0].lease() as artifact:
                metrics.set_version(artifact.version, len(artifact.ids))
    return on_change


def _record_encoder(metrics: ServiceMetrics, load_image: bool) -> Callable[[RuntimeEncoder], None]:
    def on_load(encoder: RuntimeEncoder) -> None:
        identity = encoder.identity
        metrics.encoder.labels(model=identity.model, weights=identity.weights, key=identity.key,
                               precision=encoder.precision).set(1)
        if load_image:  # in the background: text queries are ready without waiting for the image session
            threading.Thread(target=lambda: encoder.image, name="image-session", daemon=True).start()
    return on_load


def _admit(service_encoder: ServiceEncoder, remote: RemoteParts | None,
           holder_ref: list[ArtifactHolder]) -> Callable[[Artifact], None]:
    """The holder's admit hook: the encoder's check, then (a fleet) the remote parts' own."""
    if remote is None or remote.admit is None:
        return service_encoder.admit
    remote_admit = remote.admit

    def admit(artifact: Artifact) -> None:
        service_encoder.admit(artifact)
        remote_admit(artifact, holder_ref[0].version if holder_ref else None)
    return admit


def query_normalizer(encoder: RuntimeEncoder | None) -> Callable[[str], str]:
    """The query cache's key text for this encoder, which is also what it encodes: NFKC and case folded for
    CLIP's tokenizer (it lowercases what it reads), the text itself for a cased HF tokenizer and before any
    encoder is loaded (two spellings cost two encodes, never the wrong vector)."""
    if encoder is not None and isinstance(encoder.bundle.tokenizer, TokenizerSpec):
        return normalize_query
    return exact_query



def build_state(settings: Settings, encoder: RuntimeEncoder | None = None,
                remote: RemoteParts | None = None) -> ServiceState:
    """Heavy start-up work (index open, ONNX sessions); call from a worker thread. `encoder` lets a caller
    that already holds the artifact's runtime encoder share it (tests). `remote`: a fleet's ingress, whose
    query encodes and shard searches run in other deployments (this process keeps the encoder for tokenizing
    and upload preprocessing, the artifact for metadata, similar-by-id vectors and images)."""
    if settings.store is None:
        raise ValueError("settings.store is required (pass --store STORE)")
    metrics = ServiceMetrics()
    configure_threads(settings)
    options = runtime_options(settings)
    service_encoder = ServiceEncoder(settings.encoder, options, encoder,
                                     on_load=_record_encoder(metrics, load_image=remote is None))
    holder_ref: list[ArtifactHolder] = []
    checks: CheckLevel = "full" if settings.reload.verify_checksums else "size"
    holder = ArtifactHolder(Path(settings.store), None, checks, on_change=_record_reload(metrics, holder_ref),
                            ann_params=settings.rank.ann_params, admit=_admit(service_encoder, remote, holder_ref),
                            start_checks=settings.reload.start_checks if checks == "full" else "size")
    holder_ref.append(holder)
    service_encoder.prefetch(Path(settings.store))
    holder.reload()
    batcher: TextBatcher = build_text_batcher(service_encoder, settings, metrics) if remote is None else \
        RemoteText(remote.text, "full")
    cache = QueryEmbeddingCache(settings.cache.maxsize, settings.cache.ttl_s)
    # one encoder per process (see the module docstring): a constant cache namespace is exact
    loaded = service_encoder.loaded
    cache_namespace = loaded.identity.key if loaded is not None else "first-encoder"
    takedowns = TakedownList(Path(settings.store), settings.reload.takedown_check_s)
    embedder = QueryEmbedder(cache_namespace, cache, batcher, metrics, query_normalizer(loaded))
    if remote is None:
        fast_embedder = build_fast_embedder(service_encoder, settings, metrics, embedder)
    elif separate_fast_tower(service_encoder, settings):  # the same cache keys as build_fast_embedder's
        fast_embedder = QueryEmbedder(cache_namespace + "#int8", cache, RemoteText(remote.text, "fast"), metrics,
                                      embedder.normalize)
    else:
        fast_embedder = embedder
    return ServiceState(
        settings=settings, encoder=service_encoder, holder=holder, embedder=embedder,
        fast_embedder=fast_embedder,
        image_pool=build_image_pool(service_encoder, settings, metrics) if remote is None else None,
        remote_pixels=remote.pixels if remote is not None else None,
        searcher=Searcher(holder, settings.rank, takedowns,
                          ResultCache.for_rank(settings.cache.results_max_mb, settings.rank.freshness_weight),
                          lambda hit: metrics.page_cache.labels(result="hit" if hit else "miss").inc(),
                          max_batch=2 * settings.batching.max_batch, on_batch=metrics.search_batch_size.observe,
                          fanout_for=remote.fanout_for if remote is not None else None),
        batcher=batcher,
        images=ImageStore(settings.images.thumbnail_px, settings.images.thumbnail_cache, takedowns),
        metrics=metrics, takedowns=takedowns,
        query_log=QueryLog(settings.query_log) if settings.query_log is not None else None,
    )

