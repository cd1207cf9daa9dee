"""Service area: micro-batching under real concurrency batches mixed lengths together and equals unbatched."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from indexer.models.clip import load_encoder
from indexer.models.towers import TorchTextEncoder
from search.runtime.batcher import MicroBatcher
from search.runtime.pool import InputError, PoolUnavailable

QUERIES = ["cat", "a red circle", "a small green crescent on sand", "blue", "a large orange square", "dog",
           "two words", "a tiny purple triangle on grass", "sun", "moon over water",
           "a big yellow star on a grass background next to a small blue circle on sand"]


@pytest.fixture(scope="module")
def text():
    import torch

    torch.manual_seed(3)
    return TorchTextEncoder(load_encoder("tiny", pretrained="random", device="cpu"))


class GatedEncoder:
    """The real encoder, recording every forward call; the first call waits for `gate` (so the test controls
    what is queued behind it without sleeping)."""

    def __init__(self, inner: TorchTextEncoder):
        self.inner, self.calls = inner, []
        self.dim, self.context_length, self.trim = inner.dim, inner.context_length, inner.trim
        self.gate = threading.Event()
        self.started = threading.Event()

    def tokenize(self, texts):
        return self.inner.tokenize(texts)

    def lengths(self, tokens):
        return self.inner.lengths(tokens)

    def encode(self, texts):
        return self.encode_token_ids(self.tokenize(texts))

    def encode_token_ids(self, tokens):
        self.started.set()
        self.gate.wait(30)
        self.calls.append((tokens.shape, sorted(set(self.lengths(tokens).tolist()))))
        return self.inner.encode_token_ids(tokens)


async def _burst(batcher: MicroBatcher, gated: GatedEncoder, queries: list[str],
                 languages: dict[int, str] | None = None) -> list[Any]:
    """The first query occupies the session; the rest queue behind it and go together. `languages`: a source
    language for some of the queries (by position); then each result is a vector or the request's error."""
    languages = languages or {}
    first = asyncio.ensure_future(batcher.encode(queries[0]))  # occupies the session (held at the gate)
    assert await asyncio.to_thread(gated.started.wait, 30)
    rest = [asyncio.ensure_future(batcher.encode(q, languages.get(i))) for i, q in enumerate(queries) if i > 0]
    await asyncio.sleep(0)  # one loop turn: every request is queued (enqueueing is synchronous)
    gated.gate.set()
    return list(await asyncio.gather(first, *rest, return_exceptions=bool(languages)))


def test_concurrent_mixed_lengths_share_one_padded_batch_and_equal_unbatched(text):
    gated = GatedEncoder(text)
    sizes: list[int] = []
    batcher = MicroBatcher(gated, window_s=0.003, max_batch=32, on_batch=sizes.append, calibrate=False,
                           batch_cost_budget_s=10.0)
    try:
        batched = np.stack(asyncio.run(_burst(batcher, gated, QUERIES)))
    finally:
        batcher.close()
    assert sizes == [1, len(QUERIES) - 1]  # the lone first request went at once; the rest rode together
    (shape, lengths) = gated.calls[1]
    assert len(lengths) > 3  # mixed real lengths in one forward call, not split by length
    assert shape[1] == max(lengths)  # padded to the longest real length, not the context
    unbatched = np.stack([text.encode([q])[0] for q in QUERIES])
    np.testing.assert_allclose(batched, unbatched, atol=1e-5, rtol=0)


def test_batch_size_cap_comes_from_the_cost_budget(text):
    gated = GatedEncoder(text)
    sizes: list[int] = []
    batcher = MicroBatcher(gated, window_s=0.003, max_batch=32, on_batch=sizes.append, calibrate=False)
    member = batcher.pool.members[0]
    member.cost.fixed_s, member.cost.per_token_s = 0.001, 0.001  # "measured": 1 ms + 1 ms per token
    member.cost.alpha = 0.0  # keep that measurement (real runs would rescale it)
    budget = batcher.pool.batch_budget_s = 0.001 + 0.001 * 4 * 16  # four rows of the longest query (16 tokens)
    try:
        out = asyncio.run(_burst(batcher, gated, QUERIES))
    finally:
        batcher.close()
    assert sum(sizes) == len(QUERIES) and max(sizes) > 1
    for (rows, length), _ in gated.calls:  # every batch's predicted cost fits the budget
        assert 0.001 + 0.001 * rows * length <= budget + 1e-12
    np.testing.assert_allclose(np.stack(out), text.encode(QUERIES), atol=1e-5, rtol=0)


def test_window_zero_disables_batching(text):
    gated = GatedEncoder(text)
    sizes: list[int] = []
    batcher = MicroBatcher(gated, window_s=0.0, on_batch=sizes.append)
    try:
        out = asyncio.run(_burst(batcher, gated, QUERIES[:4]))
    finally:
        batcher.close()
    assert sizes == [1, 1, 1, 1]
    np.testing.assert_allclose(np.stack(out), text.encode(QUERIES[:4]), atol=1e-5, rtol=0)


def test_encoder_failure_reaches_every_waiter_and_unreadies_the_pool(text):
    class Broken(GatedEncoder):
        def encode_token_ids(self, tokens):
            raise RuntimeError("model exploded")

    broken = Broken(text)
    batcher = MicroBatcher(broken, window_s=0.003, max_batch=3, calibrate=False)

    async def run():
        return await asyncio.gather(*(batcher.encode(q) for q in QUERIES[:3]), return_exceptions=True)

    try:
        results = asyncio.run(run())
        assert not batcher.ready
        with pytest.raises(PoolUnavailable):
            asyncio.run(batcher.encode("cat"))
    finally:
        batcher.close()
    assert all(isinstance(r, (RuntimeError, PoolUnavailable)) for r in results)


def test_a_language_the_tower_does_not_take_fails_that_request_only_and_keeps_the_session(text):
    """A caller's bad argument (a source language for the torch CLIP tower, which takes none) is the caller's
    error: that request gets a ValueError naming it, the requests batched with it get their vectors, and the
    session stays in the pool (it used to be taken out: the only one, so every later query failed too)."""
    gated = GatedEncoder(text)
    sizes: list[int] = []
    batcher = MicroBatcher(gated, window_s=0.003, max_batch=32, on_batch=sizes.append, calibrate=False,
                           batch_cost_budget_s=10.0)
    queries = QUERIES[:4]
    try:
        results = asyncio.run(_burst(batcher, gated, queries, languages={2: "deu_Latn"}))
        assert batcher.ready and all(m.healthy for m in batcher.pool.members)
        later = asyncio.run(batcher.encode(QUERIES[4]))
    finally:
        batcher.close()
    refused = results.pop(2)
    assert isinstance(refused, ValueError) and "deu_Latn" in str(refused)
    assert sizes[:2] == [1, 3]  # the refused request shared its batch with two good ones
    good = [q for i, q in enumerate(queries) if i != 2]
    np.testing.assert_allclose(np.stack(results), text.encode(good), atol=1e-5, rtol=0)
    np.testing.assert_allclose(later, text.encode([QUERIES[4]])[0], atol=1e-5, rtol=0)
    registry = batcher.pool.metrics.registry
    assert not registry.get_sample_value("photostock_pool_member_failures_total", {"member": "text-0", "kind": "error"})
    assert registry.get_sample_value("photostock_pool_member_up", {"member": "text-0"}) == 1


def test_a_row_the_tokenizer_cannot_read_fails_with_input_error_and_keeps_the_session(text):
    """Any error of the batch's preparation is the input's: a row that is not text reaches its caller as an
    InputError (a ValueError) carrying the tokenizer's own error; the query sent with it is answered."""
    batcher = MicroBatcher(text, window_s=0.003, max_batch=32, calibrate=False)

    async def run() -> list[Any]:
        return list(await asyncio.gather(batcher.pool.submit(12345, 3), batcher.encode("a red circle"),
                                         return_exceptions=True))
    try:
        bad, good = asyncio.run(run())
        assert batcher.ready
    finally:
        batcher.close()
    assert isinstance(bad, InputError) and isinstance(bad, ValueError) and bad.__cause__ is not None
    assert type(bad.__cause__).__name__ in str(bad)
    np.testing.assert_allclose(good, text.encode(["a red circle"])[0], atol=1e-5, rtol=0)


def test_cost_cap_fits_the_budget_but_keeps_batching_past_the_knee():
    from search.runtime.costs import CostModel

    quiet = CostModel(fixed_s=0.0046, per_token_s=0.0026 / 12)  # ViT-B-32, 12 tokens: 7.2 ms alone, 2.9 ms at 16
    assert quiet.cap(0.030, 12, 64) == 36  # the knee (fixed cost within 5% of a row's) beats the 30 ms fit (9)
    assert quiet.cap(0.200, 12, 128) == 75  # a looser budget fits more
    loaded = CostModel(fixed_s=0.0046, per_token_s=0.0026 / 12)
    loaded.scale = 20.0  # a machine 20x slower: one row misses the budget, batching still pays
    assert loaded.cap(0.030, 12, 64) == 36
    assert quiet.cap(0.030, 12, 8) == 8
