"""Micro-batching of query encodes that batches real traffic.

Concurrent misses are padded to the batch's longest real token length and encoded together: CLIP's text tower
is causal and pools at the end-of-text token, so padding after EOT cannot change a row's feature (the results
equal one-by-one encodes to float rounding). A tower where that is not exact (`trim` false: SigLIP) gets every
row at the full context, as its tokenizer pads it, and each request is priced at the full context. There is no
fixed window: a lone request on an idle session is encoded at once; requests arriving while a batch runs form
the next batch (the window adapts to load). The batch-size cap comes from the session's measured cost
(`batch_cost_budget_s`). Dispatch, devices and faults live in `search.runtime.pool.SessionPool`; without a
pool given, the batcher runs one member: the encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from search.runtime.costs import CostModel
from search.runtime.pool import Collate, Member, PoolMetrics, SessionPool
from search.runtime.tokenizer import LangText
from search.runtime.towers import TextEncoder

__all__ = ["MicroBatcher", "estimated_length", "single_member_pool", "text_collate"]


def single_member_pool(encoder: TextEncoder, max_batch: int, budget_s: float, timeout_s: float = 30.0,
                       metrics: PoolMetrics | None = None, on_batch: Callable[[int], None] | None = None,
                       calibrate: bool = True) -> SessionPool:
    """The encoder's own session as a one-member pool, its cost measured on a typical 12-token query."""
    cost = CostModel()
    if calibrate:
        tokens = encoder.tokenize(["a large orange square on a sand background at dusk"])
        length = int(encoder.lengths(tokens)[0])
        cost.calibrate(encoder.encode_token_ids, tokens[:, :length])
    member = Member("text-0", "cpu", encoder.encode_token_ids, cost, max_batch=max_batch)
    return SessionPool([member], latency_budget_s=budget_s, timeout_s=timeout_s, metrics=metrics,
                       on_batch=on_batch, batch_budget_s=budget_s)


def text_collate(encoder: TextEncoder, trim: bool | None = None) -> Collate:
    """Tokenise a batch of texts on the member's thread (BPE's regex work stays off the event loop) and cut it
    to the batch's longest real length (only where that is exact: `trim`, by default the encoder's own flag,
    read per batch because the service's encoder loads with the first index version)."""
    def collate(texts: list[Any], _estimate: int) -> np.ndarray:
        tokens = encoder.tokenize(texts)
        if not (trim if trim is not None else bool(getattr(encoder, "trim", True))):
            return tokens
        return np.ascontiguousarray(tokens[:, : int(encoder.lengths(tokens).max())])
    return collate


def estimated_length(text: str, context_length: int, trim: bool = True) -> int:
    """Tokens a text will take, from its words (+ start/end): prices a batch before it is tokenised. A tower
    fed the full context (`trim` false) always takes the whole context."""
    if not trim:
        return context_length
    return min(context_length, len(text.split()) + 2)


class MicroBatcher:
    """`await encode(text)` -> unit vector; concurrent calls share batches (window 0 = one text per batch)."""

    def __init__(self, encoder: TextEncoder, window_s: float = 0.003, max_batch: int = 32,
                 on_batch: Callable[[int], None] | None = None, pool: SessionPool | None = None,
                 batch_cost_budget_s: float = 0.03, calibrate: bool = True):
        self.encoder = encoder
        self.window_s = window_s
        self.max_batch = max(1, max_batch) if window_s > 0 else 1
        if pool is None:
            pool = single_member_pool(encoder, self.max_batch, batch_cost_budget_s, on_batch=on_batch,
                                      calibrate=calibrate and self.max_batch > 1)
        else:
            for member in pool.members:
                member.max_batch = min(member.max_batch, self.max_batch)
        pool.collate = text_collate(encoder)
        self.pool = pool

    @property
    def ready(self) -> bool:
        return self.pool.ready

    async def encode(self, text: str, language: str | None = None) -> np.ndarray:
        """`language`: a source-language code for models that take one (None: the model's default)."""
        trim = bool(getattr(self.encoder, "trim", True))
        row = text if language is None else LangText(text, language)
        return await self.pool.submit(row, estimated_length(text, self.encoder.context_length, trim))

    def close(self) -> None:
        self.pool.close()
