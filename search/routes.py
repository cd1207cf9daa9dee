"""HTTP endpoints. Thin: validate against config limits, call the pipeline, shape the response."""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile as StarletteUploadFile

from search.images import ImageNotFound
from search.pipeline import SearchOutcome, SearchSpec
from search.reload import NoIndexError
from search.schemas import ErrorResponse, Ready, ReloadResult, SearchRequest, SearchResponse
from search.state import ServiceState
from search.text_cache import normalize_query
from search.timing import StageTimer
from search.uploads import UploadRejected, decode_image, read_limited

__all__ = ["router"]

_ERRORS = {s: {"model": ErrorResponse} for s in (400, 404, 413, 422, 503)}
router = APIRouter(responses=_ERRORS)
LOCALHOSTS = {"127.0.0.1", "::1", "localhost"}
STATIC_DIR = Path(__file__).resolve().parent / "static"
PHASE_DOC = ("fast: the fast text tower (int8 when available) and the ANN order alone, for a first grid; "
             "full (default): exact rerank, business signals, dedup and MMR")


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _check_query(state: ServiceState, query: str) -> str:
    limit = state.settings.limits.max_query_chars
    if len(query) > limit:
        raise HTTPException(422, f"query is longer than {limit} characters")
    if not normalize_query(query):
        raise HTTPException(422, "query is empty")
    return query


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
                               cache_hit=outcome.cache_hit, results=len(outcome.hits), version=outcome.version)
    response.headers["Server-Timing"] = outcome.timer.server_timing()
    cache = None if outcome.cache_hit is None else ("hit" if outcome.cache_hit else "miss")
    return SearchResponse(query=query, hits=outcome.hits, total=outcome.total, k=spec.k, offset=spec.offset,
                          version=outcome.version, cache=cache, timings_ms=outcome.timer.milliseconds(),
                          phase="fast" if spec.phase == "fast" else "full")


async def _text_search(state: ServiceState, query: str, spec: SearchSpec) -> SearchOutcome:
    if state.holder.version is None:  # fail before encoding when there is nothing to search
        raise NoIndexError(state.holder.last_error or "no index version is loaded")
    timer = StageTimer()
    with timer.stage("total"):
        embedder = state.fast_embedder if spec.phase == "fast" and state.fast_embedder else state.embedder
        vector, hit = await embedder.embed(query, timer)
        outcome = await state.searcher.search(vector, spec, timer)
    outcome.cache_hit = hit
    return outcome


@router.get("/search", response_model=SearchResponse, summary="Text search (query string)")
async def search_get(request: Request, response: Response,
                     q: Annotated[str, Query(description="the query text")],
                     k: Annotated[int | None, Query(ge=1)] = None,
                     offset: Annotated[int, Query(ge=0)] = 0,
                     phase: Annotated[Literal["fast", "full"], Query(description=PHASE_DOC)] = "full"
                     ) -> SearchResponse:
    state = _state(request)
    spec = _spec(state, k, offset, phase=phase)
    outcome = await _text_search(state, _check_query(state, q), spec)
    return _respond(response, outcome, spec, q, state)


@router.post("/search", response_model=SearchResponse, summary="Text search with filters and ranking options")
async def search_post(request: Request, response: Response, body: SearchRequest,
                      phase: Annotated[Literal["fast", "full"], Query(description=PHASE_DOC)] = "full"
                      ) -> SearchResponse:
    state = _state(request)
    spec = _spec(state, body.k, body.offset, filters=body.filters.to_filters(), min_score=body.min_score,
                 dedup=body.dedup, diversity=body.diversity, phase=phase)
    outcome = await _text_search(state, _check_query(state, body.query), spec)
    return _respond(response, outcome, spec, body.query, state)


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}}


async def _uploaded_image(request: Request, state: ServiceState) -> object:
    """The `file` part of a multipart body, size-checked from Content-Length before the body is parsed."""
    limits = state.settings.limits
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes + 64 * 1024:
        raise UploadRejected(413, f"upload exceeds {limits.max_upload_bytes} bytes")
    form = await request.form(max_files=1, max_fields=4)  # malformed multipart: Starlette's own 400
    upload = form.get("file")
    if not isinstance(upload, StarletteUploadFile):
        raise HTTPException(422, "expected a multipart/form-data body with a 'file' part")
    data = await read_limited(upload, limits.max_upload_bytes)
    return await asyncio.to_thread(decode_image, data, limits.max_upload_pixels)


@router.post("/search/image", response_model=SearchResponse, summary="Search by an uploaded image (multipart "
             "field `file`)", openapi_extra=_UPLOAD_BODY)
async def search_image(request: Request, response: Response,
                       k: Annotated[int | None, Query(ge=1)] = None,
                       offset: Annotated[int, Query(ge=0)] = 0) -> SearchResponse:
    state = _state(request)
    spec = _spec(state, k, offset)
    timer = StageTimer()
    with timer.stage("total"):
        with timer.stage("upload"):
            image = await _uploaded_image(request, state)
        with timer.stage("encode"):
            vector = await state.encode_upload(image)
        outcome = await state.searcher.search(vector, spec, timer)
    return _respond(response, outcome, spec, None, state, kind="image")


@router.get("/search/similar/{image_id}", response_model=SearchResponse, summary="Images similar to a stored one")
async def search_similar(request: Request, response: Response, image_id: int,
                         k: Annotated[int | None, Query(ge=1)] = None,
                         offset: Annotated[int, Query(ge=0)] = 0) -> SearchResponse:
    state = _state(request)
    spec = _spec(state, k, offset, exclude_id=image_id)
    timer = StageTimer()
    with timer.stage("total"):
        with state.holder.lease() as artifact:
            try:
                vector = artifact.vectors_for([image_id])[0]
            except KeyError:
                raise HTTPException(404, f"no image {image_id} in index version {artifact.version}") from None
        outcome = await state.searcher.search(vector, spec, timer)
    return _respond(response, outcome, spec, None, state, kind="similar")


@router.get("/images/{image_id}", summary="The stored image, or its thumbnail with ?thumb=1",
            response_class=Response)
async def get_image(request: Request, image_id: int, thumb: bool = False) -> Response:
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


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, summary="Readiness: index loaded, version, last reload error")
async def readyz(request: Request, response: Response) -> Ready:
    holder = _state(request).holder
    try:
        with holder.lease() as artifact:
            ready = Ready(ready=True, version=artifact.version, vectors=len(artifact.ids),
                          last_reload_error=holder.last_error)
        if not _state(request).batcher.ready:  # every encode session was taken out of the pool
            ready = ready.model_copy(update={"ready": False})
            response.status_code = 503
    except NoIndexError:
        ready = Ready(ready=False, version=None, vectors=None, last_reload_error=holder.last_error)
        response.status_code = 503
    return ready


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/admin/reload", response_model=ReloadResult, summary="Load the version `current` points to",
             responses={403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
async def admin_reload(request: Request,
                       x_admin_token: Annotated[str | None, Header()] = None) -> ReloadResult:
    state = _state(request)
    token = state.settings.reload.admin_token
    if token is not None:
        if x_admin_token is None or not hmac.compare_digest(x_admin_token, token):
            raise HTTPException(403, "a valid X-Admin-Token header is required")
    elif request.client is None or request.client.host not in LOCALHOSTS:
        raise HTTPException(403, "reload is only allowed from localhost")
    outcome = await asyncio.to_thread(state.holder.reload, True)
    if outcome.error:
        raise HTTPException(409, f"reload refused, still serving {outcome.version}: {outcome.error}")
    return ReloadResult(loaded=outcome.loaded, version=outcome.version)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")
