"""What one query asks for (`SearchSpec`): shared by the per-shard search, the merge and the batch driver."""

from __future__ import annotations

from dataclasses import dataclass

from search.query.filters import Filters

__all__ = ["SearchSpec"]


@dataclass(frozen=True)
class SearchSpec:
    """What to return for one query vector (frozen and hashable: part of the result-page cache key)."""

    k: int
    offset: int = 0
    filters: Filters = Filters()
    min_score: float | None = None
    dedup: bool = False
    diversity: float = 0.0
    exclude_id: int | None = None  # similar-image search leaves out the image itself
    phase: str = "full"  # "fast": ANN order and scores only (no exact rerank, signals, dedup or MMR)

    @property
    def need(self) -> int:
        """Ranked results this page needs: everything before it and itself."""
        return self.offset + self.k
