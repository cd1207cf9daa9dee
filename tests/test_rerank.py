"""Service area: exact rerank, business blending, near-duplicate collapse, MMR, cutoff and filters."""

from __future__ import annotations

from datetime import UTC

import numpy as np

from search.query.filters import Filters
from search.query.rerank import RerankWeights, business_boost, collapse_duplicates, exact_cosine, mmr_order, rerank


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


def test_scores_are_float32_cosines_whatever_the_input_dtype_or_query_length():
    """The artifact's exact search is a float32 product with a unit query: a float64 query or rows, a longer
    or a near-zero query give the same float32 scores."""
    expected = rerank(Q, IDS, VECS, METAS, RerankWeights(), limit=5)
    for query, rows in ((Q.astype(np.float64), VECS), (Q, VECS.astype(np.float64)), (3.0 * Q, VECS),
                        (1e-3 * Q, VECS)):
        sims = exact_cosine(query, rows)
        assert sims.dtype == np.float32
        got = rerank(query, IDS, rows, METAS, RerankWeights(), limit=5)
        assert [r.id for r in got] == [r.id for r in expected]
        assert np.allclose([r.similarity for r in got], [r.similarity for r in expected], atol=1e-6)


def test_a_single_candidate_is_ranked():
    ranked = rerank(Q, [7], VECS[:1], [{}], RerankWeights(), limit=5)
    assert [r.id for r in ranked] == [7]


def test_min_score_keeps_a_candidate_exactly_at_the_cutoff():
    cutoff = float(exact_cosine(Q, VECS)[2])
    assert [r.id for r in rerank(Q, IDS, VECS, METAS, RerankWeights(), limit=5, min_score=cutoff)] == [10, 11, 12]


def test_equal_scores_rank_by_ascending_id_whatever_the_candidate_order():
    """Ties rank by id, not by candidate (ANN or shard) order: two orders of the same candidates give one page,
    past the size where numpy's default sort is not stable too."""
    rng = np.random.default_rng(0)
    levels = np.round(rng.random(300), 1)  # many exact ties
    rows = _unit(np.stack([levels, np.sqrt(1.0 - levels**2), np.zeros(300)], axis=1))
    ids = rng.permutation(300).tolist()
    ranked = rerank(Q, ids, rows, [{} for _ in ids], RerankWeights(), limit=300)
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)
    for a, b in zip(ranked, ranked[1:], strict=False):
        if a.score == b.score:
            assert a.id < b.id
    back = rerank(Q, ids[::-1], rows[::-1], [{} for _ in ids], RerankWeights(), limit=300)
    assert [r.id for r in back] == [r.id for r in ranked]


def test_popularity_boost_is_the_squashed_log():
    metas = [{"popularity": 1000.0}, {"popularity": 0.5}, {"popularity": -3.0}, {}]
    boost = business_boost(metas, RerankWeights(popularity=1.0))
    assert boost.dtype == np.float32
    for value, popularity in zip(boost, (1000.0, 0.5, 0.0, 0.0), strict=True):
        pop = np.log1p(popularity)
        assert value == np.float32(pop / (1.0 + pop))


def test_freshness_prefers_taken_at_and_reads_naive_and_bad_dates():
    from datetime import datetime

    now = datetime(2025, 1, 1, tzinfo=UTC)
    weights = RerankWeights(freshness=1.0, freshness_half_life_days=366)
    metas = [{"taken_at": "2024-01-01T00:00:00+00:00", "created_at": "2025-01-01T00:00:00+00:00"},
             {"created_at": "2024-01-01T00:00:00"},  # naive: read as UTC
             {"created_at": "not a date"}]
    boost = business_boost(metas, weights, now=now)
    assert abs(boost[0] - 0.5) < 1e-6 and abs(boost[1] - 0.5) < 1e-6 and boost[2] == 0.0
    instant = business_boost([{"created_at": "2024-12-31T00:00:00+00:00"}],
                             RerankWeights(freshness=1.0, freshness_half_life_days=0.0), now=now)
    assert instant[0] == 0.0  # a zero half-life: anything older than now has decayed away


def test_freshness_without_a_given_clock_uses_the_current_utc_time():
    boost = business_boost([{"created_at": "2000-01-01T00:00:00Z"}, {"created_at": "2999-01-01T00:00:00Z"}],
                           RerankWeights(freshness=1.0, freshness_half_life_days=365))
    assert 0.0 < boost[0] < 0.001 and boost[1] == 1.0


def test_collapse_keeps_a_pair_exactly_at_the_threshold():
    rows = _unit([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert collapse_duplicates(np.array([0, 1]), rows, threshold=0.0).tolist() == [0, 1]


def test_empty_orders_stay_integer_index_arrays():
    empty = np.array([], np.int64)
    for order in (collapse_duplicates(empty, VECS, 0.9), mmr_order(empty, np.zeros(5), VECS, 0.5, limit=3),
                  mmr_order(np.arange(5), np.zeros(5), VECS, 0.5, limit=0)):
        assert order.dtype == np.int64 and np.asarray(IDS)[order].tolist() == []


def test_mmr_picks_exactly_limit_and_stops_when_candidates_run_out():
    scores = exact_cosine(Q, VECS)
    order = np.argsort(-scores, kind="stable")
    assert len(mmr_order(order, scores, VECS, 0.5, limit=3)) == 3
    assert sorted(mmr_order(order, scores, VECS, 0.5, limit=10).tolist()) == [0, 1, 2, 3, 4]


def test_duplicate_checks_on_float16_rows_compute_in_float32():
    """Stored rows are float16, whose step near 1.0 (~0.0005) is coarser than a dedup threshold: cosine 0.99914
    in float32 would round to 0.99951 if computed in float16, and collapse a pair that differs."""
    rows = np.array([[0.021148681640625, -0.1556396484375, -0.416259765625, -0.136962890625, 0.00433349609375,
                      -0.146728515625, 0.68896484375, 0.5361328125],
                     [-0.0076141357421875, -0.1734619140625, -0.41259765625, -0.1395263671875,
                      0.006519317626953125, -0.1424560546875, 0.70166015625, 0.51708984375]], np.float16)
    assert collapse_duplicates(np.array([0, 1]), rows, threshold=0.9993).tolist() == [0, 1]
    assert collapse_duplicates(np.array([0, 1]), rows, threshold=0.999).tolist() == [0]
    assert mmr_order(np.array([0, 1]), np.array([1.0, 0.9993], np.float32), rows, 0.5, limit=2).tolist() == [0, 1]
