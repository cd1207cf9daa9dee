"""What the service tells a newcomer about its answers: GET /examples (queries taken from the store, for the
page to offer) and the weak-match flag on text searches (no hit reaches the encoder's calibrated floor).

The floor is per encoder model (`guidance.score_floors`; calibrated by indexer/lab/score_floor.py, figures in
docs/service.md): cosine similarities of different models are not comparable, so a model without a calibrated
floor gets none and its answers say `weak: null`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from search.http.security import require_search_access
from search.query.examples import ExampleQueries
from search.state import ServiceState

__all__ = ["Examples", "router", "score_floor", "is_weak"]

router = APIRouter()


class Examples(BaseModel):
    examples: list[str] = Field(description="queries taken from the store: the captions most of its images share "
                                            "(then its most frequent tags)")
    score_floor: float | None = Field(description="a text search none of whose hits reaches this cosine "
                                                  "similarity is answered with weak: true (null: no floor for "
                                                  "this encoder)")
    version: str


def score_floor(state: ServiceState) -> float | None:
    """The calibrated floor for the encoder the service runs, or None."""
    return state.settings.guidance.score_floors.get(state.encoder.current.identity.model)


def is_weak(hits: Iterable[Mapping[str, Any]], floor: float | None) -> bool | None:
    """None without a floor; else True when there are hits and none reaches the floor."""
    if floor is None:
        return None
    similarities = [float(h["similarity"]) for h in hits]
    return bool(similarities) and max(similarities) < floor


def _examples(request: Request, state: ServiceState) -> ExampleQueries:
    """One per app, made on first use (a version's answer is kept until the version or takedowns change)."""
    cached: ExampleQueries | None = getattr(request.app.state, "example_queries", None)
    if cached is None:
        guidance = state.settings.guidance
        cached = request.app.state.example_queries = ExampleQueries(guidance.examples, guidance.example_max_chars)
    return cached


@router.get("/examples", response_model=Examples, summary="Example queries from the store, and the weak-match floor",
            dependencies=[Depends(require_search_access)])
async def examples(request: Request) -> Examples:
    state: ServiceState = request.app.state.service
    with state.holder.lease() as artifact:
        hidden = state.searcher.hidden(artifact)
        found = await asyncio.to_thread(_examples(request, state).get, artifact, hidden)
        return Examples(examples=found, score_floor=score_floor(state), version=artifact.version)
