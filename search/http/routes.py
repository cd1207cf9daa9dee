"""HTTP endpoints. Thin: validate against config limits, call the pipeline, shape the response."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BeforeValidator

from search.artifact.images import ImageNotFound, served_row
from search.artifact.reload import NoIndexError
from search.artifact.takedown import UnknownImageError, apply_takedowns, resolve_refs
from search.http.guidance import is_weak, score_floor
from search.http.jsonbody import StrictJsonRoute
from search.http.request_id import current_request_id
from search.http.schemas import (
    ID_MAX,
    ErrorResponse,
    Hit,
    Ready,
    ReloadRequest,
    ReloadResult,
    SearchRequest,
    SearchResponse,
    TakedownRequest,
    TakedownResult,
)
from search.http.security import require_admin, require_search_access
from search.http.uploads import UploadGuard
from search.query.clean import clean_query
from search.query.pipeline import SearchOutcome, SearchSpec
from search.query.timing import StageTimer
from search.state import ServiceState

__all__ = ["router", "ImageId"]

_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 404, 413, 422, 503)}
_GUARDED: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (401, 429)}
router = APIRouter(responses=_ERRORS, route_class=StrictJsonRoute)
STATIC_DIR = FilePath(__file__).resolve().parent / "static"
_CANONICAL = re.compile(r"0|[1-9][0-9]{0,30}", re.ASCII)


def _canonical_id(value: object) -> object:
    """Only the canonical decimal form names an id: " 1", "+1", "1.0", "01" would all mean 1 to int()."""
    if isinstance(value, str) and not _CANONICAL.fullmatch(value):
        raise ValueError("an id is written in canonical decimal: digits only, no sign, spaces or leading zeros")
    return value


ImageId = Annotated[int, Path(ge=0, le=ID_MAX, description="an image id (0 .. 2**63-1), canonical decimal"),
                    BeforeValidator(_canonical_id)]
SearchGuard = [Depends(require_search_access)]
LANG_DOC = ("the query's language as a BCP-47 tag (de, ja-JP, zh-Hant) for models that take a source language "
            "(NLLB); default: the model's own (eng_Latn for NLLB); other models ignore it; 422 for a tag the "
            "model's languages do not cover")
PHASE_DOC = ("fast: the fast text tower (int8 when available) and the ANN order alone, for a first grid; "
             "full (default): exact rerank, business signals, dedup and MMR")


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


def _language(state: ServiceState, tag: str | None) -> str | None:
    """The model's source-language code for `lang` (None: its default, or a model that takes none); 422 else."""
    try:
        return state.query_language(tag)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


def _check_query(state: ServiceState, query: str, language: str | None = None) -> str:
    """The cleaned query; 422 when too long or when nothing searchable is left (zero-width, U+FFFD, NUL...)."""
    limit = state.settings.limits.max_query_chars
    if len(query) > limit:
        raise HTTPException(422, f"query is longer than {limit} characters")
    cleaned = clean_query(query)
    if not cleaned:
        raise HTTPException(422, "query is empty after removing control, zero-width and replacement characters")
    if not state.has_tokens(cleaned, language):
        raise HTTPException(422, "query has no searchable words (it tokenizes to nothing)")
    return cleaned


def _spec(state: ServiceState, k: int | None, offset: int, **extra: object) -> SearchSpec:
    limits = state.settings.limits
    k = limits.default_k if k is None else k
    if not 1 <= k <= limits.max_k:
        raise HTTPException(422, f"k must be between 1 and {limits.max_k}")
    if not 0 <= offset <= limits.max_offset:
        raise HTTPException(422, f"offset must be between 0 and {limits.max_offset}")
    return SearchSpec(k=k, offset=offset, **extra)  # type: ignore[arg-type]


def _respond(response: Response, outcome: SearchOutcome, spec: SearchSpec, query: str | None,
             state: ServiceState, kind: str = "text") -> SearchResponse:
    for stage, seconds in outcome.timer.seconds.items():
        state.metrics.stages.labels(stage=stage).observe(seconds)
    if state.query_log is not None:
        state.query_log.record(query=query, kind=kind, stages_ms=outcome.timer.milliseconds(),
                               cache_hit=outcome.cache_hit, results=len(outcome.hits), version=outcome.version,
                               request_id=current_request_id())
    response.headers["Server-Timing"] = outcome.timer.server_timing()
    cache: Literal["hit", "miss"] | None = None if outcome.cache_hit is None else (
        "hit" if outcome.cache_hit else "miss")
    floor = score_floor(state) if kind == "text" else None  # calibrated on text-to-image similarities only
    return SearchResponse(query=query, hits=[Hit(**h) for h in outcome.hits], total=outcome.total, k=spec.k,
                          offset=spec.offset, version=outcome.version, cache=cache,
                          timings_ms=outcome.timer.milliseconds(),
                          phase="fast" if spec.phase == "fast" else "full",
                          weak=is_weak(outcome.hits, floor), score_floor=floor)


async def _text_search(state: ServiceState, query: str, spec: SearchSpec, language: str | None = None
                       ) -> SearchOutcome:
    if state.holder.version is None:  # fail before encoding when there is nothing to search
        raise NoIndexError(state.holder.last_error or "no index version is loaded")
    timer = StageTimer()
    with timer.stage("total"):
        vector, hit = await state.embedder_for(spec.phase).embed(query, timer, language)
        outcome = await state.searcher.search(vector, spec, timer)
    outcome.cache_hit = hit
    return outcome


@router.get("/search", response_model=SearchResponse, summary="Text search (query string)",
            dependencies=SearchGuard, responses=_GUARDED)
async def search_get(request: Request, response: Response,
                     q: Annotated[str, Query(description="the query text")],
                     k: Annotated[int | None, Query(ge=1)] = None,
                     offset: Annotated[int, Query(ge=0)] = 0,
                     phase: Annotated[Literal["fast", "full"], Query(description=PHASE_DOC)] = "full",
                     lang: Annotated[str | None, Query(description=LANG_DOC, max_length=35)] = None
                     ) -> SearchResponse:
    state = _state(request)
    spec = _spec(state, k, offset, phase=phase)
    language = _language(state, lang)
    outcome = await _text_search(state, _check_query(state, q, language), spec, language)
    return _respond(response, outcome, spec, q, state)


@router.post("/search", response_model=SearchResponse, summary="Text search with filters and ranking options",
             dependencies=SearchGuard, responses=_GUARDED)
async def search_post(request: Request, response: Response, body: SearchRequest,
                      phase: Annotated[Literal["fast", "full"], Query(description=PHASE_DOC)] = "full"
                      ) -> SearchResponse:
    state = _state(request)
    spec = _spec(state, body.k, body.offset, filters=body.filters.to_filters(), min_score=body.min_score,
                 dedup=body.dedup, diversity=body.diversity, phase=phase)
    language = _language(state, body.lang)
    outcome = await _text_search(state, _check_query(state, body.query, language), spec, language)
    return _respond(response, outcome, spec, body.query, state)


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}}


@router.post("/search/image", response_model=SearchResponse, summary="Search by an uploaded image (multipart "
             "field `file`)", openapi_extra=_UPLOAD_BODY, dependencies=SearchGuard, responses=_GUARDED)
async def search_image(request: Request, response: Response,
                       k: Annotated[int | None, Query(ge=1)] = None,
                       offset: Annotated[int, Query(ge=0)] = 0) -> SearchResponse:
    state = _state(request)
    spec = _spec(state, k, offset)
    timer = StageTimer()
    with timer.stage("total"):
        guard: UploadGuard = request.app.state.uploads
        vector = await guard.embed(request, state.settings.limits, state.encoder.current.preprocess,
                                   state.encode_upload, timer)
        outcome = await state.searcher.search(vector, spec, timer)
    return _respond(response, outcome, spec, None, state, kind="image")


@router.get("/search/similar/{image_id}", response_model=SearchResponse, summary="Images similar to a stored one",
            dependencies=SearchGuard, responses=_GUARDED)
async def search_similar(request: Request, response: Response, image_id: ImageId,
                         k: Annotated[int | None, Query(ge=1)] = None,
                         offset: Annotated[int, Query(ge=0)] = 0) -> SearchResponse:
    state = _state(request)
    spec = _spec(state, k, offset, exclude_id=image_id)
    timer = StageTimer()
    with timer.stage("total"):
        with state.holder.lease() as artifact:
            try:
                row = served_row(artifact, state.searcher.hidden(artifact), image_id)
            except ImageNotFound as exc:
                raise HTTPException(404, str(exc)) from None
            vector = artifact.vectors_at(np.asarray([row], dtype=np.int64))[0]
        outcome = await state.searcher.search(vector, spec, timer)
    return _respond(response, outcome, spec, None, state, kind="similar")


@router.get("/images/{image_id}", summary="The stored image, or its thumbnail with ?thumb=1",
            response_class=Response)
async def get_image(request: Request, image_id: ImageId, thumb: bool = False) -> Response:
    state = _state(request)
    with state.holder.lease() as artifact:
        try:
            if thumb:
                data = await asyncio.to_thread(state.images.thumbnail, artifact, image_id)
                return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
            path = await asyncio.to_thread(state.images.path_of, artifact, image_id)
        except ImageNotFound as exc:
            raise HTTPException(404, str(exc)) from None
    return FileResponse(path)


@router.get("/healthz", summary="Liveness (pid: the worker process that answered, with server.workers > 1)")
async def healthz() -> dict[str, str | int]:
    return {"status": "ok", "pid": os.getpid()}


@router.get("/readyz", response_model=Ready, summary="Readiness: index loaded, version, last reload error")
async def readyz(request: Request, response: Response) -> Ready:
    holder = _state(request).holder
    try:
        with holder.lease() as artifact:
            ready = Ready(ready=True, version=artifact.version, vectors=len(artifact.ids),
                          last_reload_error=holder.last_error, background_check=holder.background_check)
        if not _state(request).batcher.ready:  # every encode session was taken out of the pool
            ready = ready.model_copy(update={"ready": False})
            response.status_code = 503
    except NoIndexError:
        ready = Ready(ready=False, version=None, vectors=None, last_reload_error=holder.last_error,
                      background_check=holder.background_check)
        response.status_code = 503
    return ready


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/admin/reload", response_model=ReloadResult, summary="Load the version `current` points to",
             dependencies=[Depends(require_admin)],
             responses={s: {"model": ErrorResponse} for s in (403, 409, 415)})
async def admin_reload(request: Request, body: ReloadRequest) -> ReloadResult:
    """Admin: a JSON request (`{}`) with the admin token, or from localhost when the service is bound there."""
    state = _state(request)
    outcome = await asyncio.to_thread(state.holder.reload, True)
    if outcome.error:
        raise HTTPException(409, f"reload refused, still serving {outcome.version}: {outcome.error}")
    return ReloadResult(loaded=outcome.loaded, version=outcome.version)


@router.post("/admin/takedown", response_model=TakedownResult,
             summary="Hide images from every endpoint now (restore=true shows them again)",
             dependencies=[Depends(require_admin)],
             responses={s: {"model": ErrorResponse} for s in (403, 409, 415)})
async def admin_takedown(request: Request, body: TakedownRequest) -> TakedownResult:
    state = _state(request)
    with state.holder.lease() as artifact:
        try:
            entries = await asyncio.to_thread(resolve_refs, artifact, body.ids, body.paths)
        except UnknownImageError as exc:
            raise HTTPException(404, str(exc)) from None
    if not entries:
        raise HTTPException(422, "give at least one id or path")
    try:
        data = await asyncio.to_thread(apply_takedowns, FilePath(state.settings.store or "."), entries, body.reason,
                                       body.restore)
    except OSError as exc:  # e.g. a replica whose store is mounted read-only
        raise HTTPException(409, f"cannot write the takedown list: {exc.strerror or exc}") from None
    if state.takedowns is not None:
        state.takedowns.invalidate()  # this replica applies it on the very next request
    return TakedownResult(ids=[i for i, _ in entries], restore=body.restore, generation=data["generation"],
                          active=len(data["active"]))


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")
