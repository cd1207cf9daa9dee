"""Answer a text query against an artifact without the service: encode, ANN over-fetch, exact rerank.

Used by tests and notebooks to check retrieval end to end; the service has its own batched path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from search.artifact import Artifact, ArtifactError
from search.encoder import EncoderIdentity, encoder_mismatch

__all__ = ["Hit", "query_text"]

@dataclass(frozen=True)
class Hit:
    id: int
    path: str
    ann_score: float      # score from the ANN stage (approximate; NaN if the index did not score it)
    exact_score: float    # inner product with the stored float16 vector: what the ranking uses

class _TextEncoder(Protocol):
    identity: EncoderIdentity

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


def query_text(artifact: Artifact, encoder: _TextEncoder, text: str, k: int = 10,
               params: Mapping[str, Any] | None = None, candidates: int | None = None) -> list[Hit]:
    """Top-k hits for `text`, best first. Refuses an artifact built with a different encoder."""
    if not text or not text.strip():
        raise ValueError("query text is empty")
    reason = encoder_mismatch(encoder.identity, artifact.manifest.encoder, f"version {artifact.version}")
    if reason is not None:
        raise ArtifactError(reason)
    query = encoder.encode_texts([text])
    result = artifact.search(query, k, params=params, candidates=candidates)
    found = [(int(i), float(a), float(e)) for i, a, e in
             zip(result.ids[0], result.ann_scores[0], result.exact_scores[0], strict=True) if i >= 0]
    rows = artifact.metadata([i for i, _, _ in found])
    return [Hit(id=i, path=row["path"], ann_score=a, exact_score=e)
            for (i, a, e), row in zip(found, rows, strict=True)]
