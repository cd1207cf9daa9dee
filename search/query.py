"""Answer a text query against an artifact without the service: encode, ANN over-fetch, exact rerank.

Used by tests and notebooks to check retrieval end to end; the service has its own batched path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search.artifact import Artifact, ArtifactError
from search.encoder import ClipEncoder

__all__ = ["Hit", "query_text"]

@dataclass(frozen=True)
class Hit:
    id: int
    path: str
    ann_score: float      # score from the ANN stage (approximate; NaN if the index did not score it)
    exact_score: float    # inner product with the stored float16 vector: what the ranking uses

def query_text(artifact: Artifact, encoder: ClipEncoder, text: str, k: int = 10,
               params: Mapping[str, Any] | None = None, candidates: int | None = None) -> list[Hit]:
    """Top-k hits for `text`, best first. Refuses an artifact built with a different encoder."""
    if not text or not text.strip():
        raise ValueError("query text is empty")
    diffs = encoder.identity.differences(artifact.manifest.encoder)
    if diffs:
        raise ArtifactError(f"encoder does not match version {artifact.version}: {'; '.join(diffs)}")
    query = encoder.encode_texts([text])
    result = artifact.search(query, k, params=params, candidates=candidates)
    found = [(int(i), float(a), float(e)) for i, a, e in
             zip(result.ids[0], result.ann_scores[0], result.exact_scores[0], strict=True) if i >= 0]
    rows = artifact.metadata([i for i, _, _ in found])
    return [Hit(id=i, path=row["path"], ann_score=a, exact_score=e)
            for (i, a, e), row in zip(found, rows, strict=True)]
