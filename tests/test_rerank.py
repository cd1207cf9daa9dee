"""Service area: exact rerank, business blending, near-duplicate collapse, MMR, cutoff and filters."""

from __future__ import annotations

from datetime import UTC

import numpy as np

from search.query.filters import Filters
from search.query.rerank import RerankWeights, business_boost, rerank


def _unit(rows):
    v = np.asarray(rows, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


Q = np.array([1.0, 0.0, 0.0], np.float32)
VECS = _unit([[1.0, 0.0, 0.0], [0.999, 0.01, 0.0], [0.8, 0.6, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]])
IDS = [10, 11, 12, 13, 14]
METAS = [{} for _ in IDS]


def test_exact_order_and_scores_match_float16_dot_products():
    stored = VECS.astype(np.float16)
    ranked = rerank(Q, IDS, stored, METAS, RerankWeights(), limit=5)
    assert [r.id for r in ranked] == [10, 11, 12, 14, 13]
    expected = stored.astype(np.float32) @ Q
    assert [r.similarity for r in ranked] == [float(expected[i]) for i in (0, 1, 2, 4, 3)]


def test_limit_and_min_score():
    assert [r.id for r in rerank(Q, IDS, VECS, METAS, RerankWeights(), limit=2)] == [10, 11]
    kept = rerank(Q, IDS, VECS, METAS, RerankWeights(), limit=5, min_score=0.7)
    assert [r.id for r in kept] == [10, 11, 12]


def test_near_duplicates_collapse_above_threshold():
    ranked = rerank(Q, IDS, VECS, METAS, RerankWeights(), limit=5, dedup_threshold=0.99)
    assert [r.id for r in ranked] == [10, 12, 14, 13]  # 11 is a near copy of 10


def test_mmr_diversity_promotes_different_items():
    plain = [r.id for r in rerank(Q, IDS, VECS, METAS, RerankWeights(), limit=3)]
    diverse = [r.id for r in rerank(Q, IDS, VECS, METAS, RerankWeights(), limit=3, diversity=0.5)]
    assert plain == [10, 11, 12]
    assert diverse[0] == 10 and 11 not in diverse


def test_popularity_blend_reorders_close_scores():
    metas = [{"popularity": 0.0}, {"popularity": 1000.0}, {}, {}, {}]
    ranked = rerank(Q, IDS, VECS, metas, RerankWeights(popularity=0.1), limit=2)
    assert [r.id for r in ranked] == [11, 10]
    assert ranked[0].score > ranked[0].similarity


def test_freshness_boost_decays_with_age():
    from datetime import datetime

    now = datetime(2025, 1, 1, tzinfo=UTC)
    metas = [{"created_at": "2025-01-01T00:00:00+00:00"}, {"created_at": "2024-01-01T00:00:00Z"}, {}]
    boost = business_boost(metas, RerankWeights(freshness=1.0, freshness_half_life_days=366), now=now)
    assert boost[0] == 1.0 and abs(boost[1] - 0.5) < 1e-6 and boost[2] == 0.0


def test_empty_candidates():
    assert rerank(Q, [], np.zeros((0, 3), np.float32), [], RerankWeights(), limit=5) == []


def test_filters():
    meta = {"width": 64, "height": 48, "licence": "CC0-1.0", "tags": '["red", "Circle"]',
            "created_at": "2024-05-01T00:00:00+00:00"}
    assert Filters(orientation="landscape", licence=("CC0-1.0",), tags=("circle",)).matches(meta)
    assert not Filters(orientation="portrait").matches(meta)
    assert not Filters(licence=("CC-BY-4.0",)).matches(meta)
    assert not Filters(tags=("red", "square")).matches(meta)
    assert Filters(created_after="2024-01-01", created_before="2024-06-01").matches(meta)
    assert not Filters(created_after="2024-06-01").matches(meta)
    assert not Filters().active and Filters(tags=("x",)).active
