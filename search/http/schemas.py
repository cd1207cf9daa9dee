"""Request and response models of the HTTP API (pydantic; they make the OpenAPI page at /docs)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from search.artifact.reload import BackgroundCheck
from search.query.filters import Filters

__all__ = ["FilterModel", "SearchRequest", "Hit", "SearchResponse", "ErrorResponse", "Ready", "ReloadRequest",
           "ReloadResult", "TakedownRequest", "TakedownResult"]


class FilterModel(BaseModel):
    """Metadata filters; an unknown filter name is a 422."""

    model_config = ConfigDict(extra="forbid")

    orientation: Literal["landscape", "portrait", "square"] | None = None
    licence: list[str] = Field(default_factory=list, max_length=32)
    tags: list[str] = Field(default_factory=list, max_length=32, description="all must be present")
    created_after: date | datetime | None = None
    created_before: date | datetime | None = None

    def to_filters(self) -> Filters:
        return Filters(
            orientation=self.orientation, licence=tuple(self.licence), tags=tuple(self.tags),
            created_after=self.created_after.isoformat() if self.created_after else None,
            created_before=self.created_before.isoformat() if self.created_before else None,
        )


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="free text; length limits come from config (stated in this schema)")
    k: int | None = Field(None, ge=1, description="hits per page (default and maximum from config)")
    offset: int = Field(0, ge=0)
    filters: FilterModel = Field(default_factory=FilterModel)
    min_score: float | None = Field(None, ge=-2.0, le=2.0)
    dedup: bool = Field(False, description="collapse near-duplicates above the configured similarity")
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="MMR weight; 0 = pure relevance")
    lang: str | None = Field(None, max_length=35, description="the query's language (BCP-47) for models that take "
                             "a source language (NLLB); default the model's own; other models ignore it")


class Hit(BaseModel):
    id: int
    score: float
    similarity: float
    path: str | None
    url: str
    thumbnail_url: str
    width: int | None
    height: int | None
    caption: str | None
    tags: list[str]
    licence: str | None
    created_at: str | None
    popularity: float | None
    taken_at: str | None = Field(None, description="when the photo was taken (EXIF/XMP or sidecar), ISO 8601")
    creator: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None


class SearchResponse(BaseModel):
    query: str | None
    hits: list[Hit]
    total: int = Field(description="ranked results found among the fetched candidates")
    k: int
    offset: int
    version: str
    cache: Literal["hit", "miss"] | None = None
    timings_ms: dict[str, float]
    phase: Literal["fast", "full"] = Field("full", description="fast: fast tower + ANN order only (phase=fast)")
    weak: bool | None = Field(None, description="text search: true when no hit on this page reaches score_floor "
                                                "(the index may hold nothing like the query); null: no floor")
    score_floor: float | None = Field(None, description="the encoder's calibrated weak-match floor (GET /examples)")


class ErrorResponse(BaseModel):
    error: str
    detail: Any = None
    request_id: str | None = Field(None, description="the X-Request-ID of the request (also in the logs)")


class Ready(BaseModel):
    ready: bool
    version: str | None
    vectors: int | None
    last_reload_error: str | None
    background_check: BackgroundCheck = "none"  # the full checksums run after a start


class ReloadRequest(BaseModel):
    """POST /admin/reload takes an empty JSON object (`{}`): a JSON body is what keeps plain forms out."""

    model_config = ConfigDict(extra="forbid")


class ReloadResult(BaseModel):
    loaded: bool
    version: str | None
    error: str | None = None


ID_MAX = 2**63 - 1  # ids are SQLite INTEGERs: anything outside is a 422, never an overflow deep inside
ImageIdValue = Annotated[int, Field(ge=0, le=ID_MAX)]


class TakedownRequest(BaseModel):
    """POST /admin/takedown: hide (or with restore=true, show again) images by id or relative path."""

    model_config = ConfigDict(extra="forbid")

    ids: list[ImageIdValue] = Field(default_factory=list, max_length=1000)
    paths: list[str] = Field(default_factory=list, max_length=1000)
    reason: str = Field(min_length=1, max_length=1000)
    restore: bool = False


class TakedownResult(BaseModel):
    ids: list[int]
    restore: bool
    generation: int
    active: int = Field(description="images taken down after this change")
