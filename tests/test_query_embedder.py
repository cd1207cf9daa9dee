"""search/query/pipeline.py's QueryEmbedder: cache keys, misses through the real micro-batcher and the tiny text
tower (random weights), hits without encoding, admission on misses only, warming at start."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from indexer.models.clip import load_encoder
from indexer.models.towers import TorchTextEncoder
from search.metrics import ServiceMetrics
from search.query.admission import Admission, MeasuredCost, Overloaded
from search.query.pipeline import QueryEmbedder
from search.query.text_cache import QueryEmbeddingCache, normalize_query
from search.query.timing import StageTimer
from search.runtime.batcher import MicroBatcher
from search.runtime.tokenizer import LangText


@pytest.fixture(scope="module")
def text() -> Any:
    import torch

    torch.manual_seed(3)
    return TorchTextEncoder(load_encoder("tiny", pretrained="random", device="cpu"))


def _embedder(text: Any) -> tuple[QueryEmbedder, ServiceMetrics]:
    metrics = ServiceMetrics()
    return QueryEmbedder("tiny", QueryEmbeddingCache(100, 600.0), MicroBatcher(text, window_s=0.0), metrics), metrics


def _count(metrics: ServiceMetrics, result: str) -> float:
    return metrics.registry.get_sample_value("photostock_query_cache_total", {"result": result}) or 0.0


def test_keys_name_the_encoder_the_language_and_the_normalised_text(text: Any) -> None:
    embedder, _ = _embedder(text)
    assert embedder.key("  A Red   CIRCLE ") == ("tiny", "a red circle")
    assert embedder.key("Ein Kreis", "de") == ("tiny|lang=de", "ein kreis")
    assert embedder.key("x", None) == embedder.key("x")
    embedder.batcher.close()


def test_a_miss_encodes_once_and_a_hit_reads_the_cache(text: Any) -> None:
    embedder, metrics = _embedder(text)
    admission = Admission(deadline_s=10.0, max_queue=4, cost=MeasuredCost(0.001))
    embedder.admission = admission

    async def run() -> list[tuple[np.ndarray, bool, StageTimer]]:
        out = []
        for query in (" A red  circle", "a red circle"):
            timer = StageTimer()
            vector, hit = await embedder.embed(query, timer)
            out.append((vector, hit, timer))
        return out

    assert not embedder.cached("a red circle")
    (miss, miss_hit, miss_timer), (hit, hit_hit, hit_timer) = asyncio.run(run())
    assert (miss_hit, hit_hit) == (False, True)
    assert embedder.cached("A RED CIRCLE") and not embedder.cached("a red circle", "de")
    np.testing.assert_array_equal(miss, hit)
    np.testing.assert_allclose(miss, text.encode([normalize_query(" A red  circle")])[0], atol=1e-5)
    assert {"normalize", "embed", "encode"} <= set(miss_timer.seconds)
    assert 0 < miss_timer.seconds["encode"] <= miss_timer.seconds["embed"]  # the encode happens inside the embed
    assert {"normalize", "embed"} <= set(hit_timer.seconds) and "encode" not in hit_timer.seconds
    assert (_count(metrics, "miss"), _count(metrics, "hit")) == (1.0, 1.0)
    assert (admission.admitted, admission.depth) == (1, 0)  # admitted for the miss only, and released
    embedder.batcher.close()


def test_a_full_encoder_queue_refuses_misses_but_serves_hits(text: Any) -> None:
    embedder, metrics = _embedder(text)
    embedder.cache.put(embedder.key("blue"), np.ones(4, np.float32))
    embedder.admission = Admission(deadline_s=10.0, max_queue=0, cost=MeasuredCost(0.001))

    async def run() -> tuple[np.ndarray, bool]:
        with pytest.raises(Overloaded):
            await embedder.embed("red", StageTimer())
        return await embedder.embed("Blue", StageTimer())

    vector, hit = asyncio.run(run())
    assert hit and vector.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert not embedder.cached("red") and embedder.admission.rejected == 1
    embedder.batcher.close()


def test_warm_encodes_each_new_normalised_query_once(text: Any) -> None:
    embedder, _ = _embedder(text)
    embedder.cache.put(embedder.key("known"), np.ones(4, np.float32))

    async def run() -> tuple[int, int]:
        return (await embedder.warm(["A red circle", "a red  circle", "  ", "", "Known", "blue sky"]),
                await embedder.warm(["blue sky", "A RED CIRCLE"]))

    assert asyncio.run(run()) == (2, 0)
    assert embedder.cached("a red circle") and embedder.cached("Blue Sky")
    warmed, known = embedder.cache.get(embedder.key("blue sky")), embedder.cache.get(embedder.key("known"))
    assert warmed is not None and known is not None
    np.testing.assert_allclose(warmed, text.encode(["blue sky"])[0], atol=1e-5)
    assert known.tolist() == [1.0] * 4  # cached ones are not re-encoded
    embedder.batcher.close()


def test_without_admission_misses_encode_and_a_language_has_its_own_key(text: Any) -> None:
    embedder, _ = _embedder(text)  # no admission set: every miss is encoded
    german = np.full(4, 0.5, np.float32)
    embedder.cache.put(embedder.key("ein roter kreis", "de"), german)

    async def run() -> tuple[tuple[np.ndarray, bool], tuple[np.ndarray, bool]]:
        return (await embedder.embed("green", StageTimer()),
                await embedder.embed("Ein roter Kreis", StageTimer(), "de"))

    (green, green_hit), (vector, hit) = asyncio.run(run())
    assert not green_hit and embedder.cached("green")
    np.testing.assert_allclose(green, text.encode(["green"])[0], atol=1e-5)
    assert hit and vector.tolist() == german.tolist()  # found under the language's key, not encoded
    embedder.batcher.close()


class SeesLanguages:
    """The tiny text tower behind a tokenizer that records the source language each row arrives with (the CLIP
    tower itself takes none), so that a language reaching the encoder is observable; encoding stays real."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.languages: list[str | None] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _texts(self, rows: Any) -> list[str]:
        self.languages.extend(row.language if isinstance(row, LangText) else None for row in rows)
        return [row.text if isinstance(row, LangText) else row for row in rows]

    def tokenize(self, rows: Any) -> np.ndarray:
        return self.inner.tokenize(self._texts(rows))  # type: ignore[no-any-return]

    def encode(self, rows: Any) -> np.ndarray:
        return self.inner.encode(self._texts(rows))  # type: ignore[no-any-return]


def test_a_miss_hands_its_language_to_the_encoder_and_a_default_query_none(text: Any) -> None:
    seen = SeesLanguages(text)
    embedder = QueryEmbedder("tiny", QueryEmbeddingCache(100, 600.0), MicroBatcher(seen, window_s=0.0),
                             ServiceMetrics())

    async def run() -> None:
        await embedder.embed("ein roter kreis", StageTimer(), "deu_Latn")
        await embedder.embed("a red circle", StageTimer())

    try:
        asyncio.run(run())
    finally:
        embedder.batcher.close()
    assert seen.languages == ["deu_Latn", None]
