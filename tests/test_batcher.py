"""Service area: micro-batching under real concurrency gives the unbatched results, grouped by length."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from indexer.models.clip import load_encoder
from indexer.models.towers import TorchTextEncoder
from search.runtime.batcher import MicroBatcher

QUERIES = ["cat", "a red circle", "a small green crescent on sand", "blue", "a large orange square", "dog",
           "two words", "a tiny purple triangle on grass", "sun", "moon over water"]


@pytest.fixture(scope="module")
def text():
    import torch

    torch.manual_seed(3)
    return TorchTextEncoder(load_encoder("tiny", pretrained="random", device="cpu"))


class RecordingEncoder:
    """The real encoder, recording the row count and sequence length of every forward call."""

    def __init__(self, inner: TorchTextEncoder):
        self.inner, self.calls = inner, []
        self.dim, self.context_length = inner.dim, inner.context_length

    def tokenize(self, texts):
        return self.inner.tokenize(texts)

    def lengths(self, tokens):
        return self.inner.lengths(tokens)

    def encode(self, texts):
        return self.encode_token_ids(self.tokenize(texts))

    def encode_token_ids(self, tokens):
        self.calls.append((tokens.shape[0], set(self.lengths(tokens).tolist())))
        return self.inner.encode_token_ids(tokens)


def test_concurrent_requests_are_batched_and_equal_unbatched(text):
    recorder = RecordingEncoder(text)
    sizes: list[int] = []
    # A long window: every concurrent request lands in one batch regardless of machine speed.
    batcher = MicroBatcher(recorder, window_s=5.0, max_batch=len(QUERIES), on_batch=sizes.append)

    async def run():
        return await asyncio.gather(*(batcher.encode(q) for q in QUERIES))

    try:
        batched = np.stack(asyncio.run(run()))
    finally:
        batcher.close()
    assert sizes == [len(QUERIES)]  # flushed by max_batch, not by the 5 s timer
    for _rows, lengths in recorder.calls:
        assert len(lengths) == 1  # each forward call holds one token length
    assert sum(rows for rows, _ in recorder.calls) == len(QUERIES)
    unbatched = np.stack([text.encode([q])[0] for q in QUERIES])
    np.testing.assert_allclose(batched, unbatched, atol=1e-5, rtol=0)


def test_lone_request_flushes_on_the_window(text):
    sizes: list[int] = []
    batcher = MicroBatcher(text, window_s=0.001, max_batch=32, on_batch=sizes.append)
    try:
        vector = asyncio.run(batcher.encode("a red circle"))
    finally:
        batcher.close()
    assert sizes == [1]
    np.testing.assert_allclose(vector, text.encode(["a red circle"])[0], atol=1e-5, rtol=0)


def test_window_zero_disables_batching(text):
    sizes: list[int] = []
    batcher = MicroBatcher(text, window_s=0.0, on_batch=sizes.append)

    async def run():
        return await asyncio.gather(*(batcher.encode(q) for q in QUERIES[:4]))

    try:
        out = asyncio.run(run())
    finally:
        batcher.close()
    assert sizes == [1, 1, 1, 1]
    np.testing.assert_allclose(np.stack(out), text.encode(QUERIES[:4]), atol=1e-5, rtol=0)


def test_encoder_failure_reaches_every_waiter(text):
    class Broken(RecordingEncoder):
        def encode_token_ids(self, tokens):
            raise RuntimeError("model exploded")

    batcher = MicroBatcher(Broken(text), window_s=5.0, max_batch=3)

    async def run():
        return await asyncio.gather(*(batcher.encode(q) for q in QUERIES[:3]), return_exceptions=True)

    try:
        results = asyncio.run(run())
    finally:
        batcher.close()
    assert all(isinstance(r, RuntimeError) for r in results)
