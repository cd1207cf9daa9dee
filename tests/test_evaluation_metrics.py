"""Evaluation metrics against values computed by hand (the arithmetic is written out beside each)."""

from __future__ import annotations

from math import isclose, log2

import numpy as np
import pytest

from indexer.lab.evaluation import metrics, ranking


def test_graded_ndcg_matches_hand_computation() -> None:
    run = [["a", "b", "c", "d"]]
    qrels = [{"b": 3, "d": 1, "e": 2}]
    # DCG@4 = 3/log2(3) + 1/log2(5); ideal ranking of the grades (3, 2, 1): 3/log2(2) + 2/log2(3) + 1/log2(4)
    expected = (3 / log2(3) + 1 / log2(5)) / (3 + 2 / log2(3) + 1 / 2)
    assert isclose(ranking.ndcg_at_k(run, qrels, 4), expected, rel_tol=1e-12)
    # @2 sees only b at rank 2; the ideal top 2 is (3, 2)
    assert isclose(ranking.ndcg_at_k(run, qrels, 2), (3 / log2(3)) / (3 + 2 / log2(3)), rel_tol=1e-12)


def test_binary_ndcg_perfect_and_zero() -> None:
    assert ranking.ndcg_at_k([["r", "x"]], [{"r"}], 2) == 1.0
    assert ranking.ndcg_at_k([["x", "y"]], [{"r"}], 2) == 0.0


def test_mrr_over_three_queries() -> None:
    run = [["x", "y", "r"], ["r"], ["x"]]
    relevant = [{"r"}, {"r"}, {"z"}]
    assert isclose(metrics.mean_reciprocal_rank(run, relevant), (1 / 3 + 1 + 0) / 3)


def test_average_precision_divides_by_all_relevant() -> None:
    # hits at ranks 1 and 3 (precision 1/1 and 2/3); r3 is never found but still counts in the denominator
    assert isclose(ranking.average_precision(["r1", "x", "r2", "y"], {"r1", "r2", "r3"}), (1 + 2 / 3) / 3)
    run = [["r1", "x", "r2", "y"], ["x", "s"]]
    assert isclose(ranking.mean_average_precision(run, [{"r1", "r2", "r3"}, {"s"}]), ((1 + 2 / 3) / 3 + 1 / 2) / 2)
    # mAP@2 stops before r2: only the rank-1 hit counts
    assert isclose(ranking.mean_average_precision(run[:1], [{"r1", "r2", "r3"}], k=2), 1 / 3)


def test_recall_and_hit_rate_at_k() -> None:
    run = [["a", "b", "c"], ["d", "e", "f"]]
    relevant = [{"b", "z"}, {"q"}]
    assert metrics.hit_rate_at_k(run, relevant, 1) == 0.0
    assert metrics.hit_rate_at_k(run, relevant, 2) == 0.5   # query 1 hits b at rank 2; query 2 never hits
    assert metrics.recall_at_k(run, relevant, 3) == 0.25    # (1/2 + 0) / 2


def test_duplicates_in_a_run_count_once() -> None:
    scores = ranking.score_run([["r", "r", "r"]], [{"r", "s"}], ks=(3,))
    assert scores["recall@3"] == 0.5
    assert scores["mAP"] == 0.5
    assert scores["nDCG@3"] == round(1 / (1 + 1 / log2(3)), 4)


def test_score_run_reports_every_metric_with_chance() -> None:
    scores = ranking.score_run([["a", "b"], ["c", "d"]], [{"a"}, {"d"}], ks=(1, 2), n_items=4)
    assert scores["queries"] == 2
    assert scores["R@1"] == 0.5 and scores["R@2"] == 1.0
    assert scores["MRR"] == 0.75 and scores["mAP"] == 0.75
    assert scores["chance_R@1"] == 0.25 and scores["chance_R@2"] == 0.5  # 1 relevant of 4 items


def test_first_relevant_rank() -> None:
    assert ranking.first_relevant_rank(["x", "y", "r"], {"r"}) == 3
    assert ranking.first_relevant_rank(["x"], {"r": 2}) is None


def test_bad_qrels_are_errors() -> None:
    with pytest.raises(ValueError, match="at least one relevant"):
        ranking.score_run([["a"]], [set()])
    with pytest.raises(ValueError, match="at least one relevant"):
        ranking.ndcg_at_k([["a"]], [{"a": 0}], 1)  # grade 0 means not relevant
    with pytest.raises(ValueError, match=">= 0"):
        ranking.ndcg_at_k([["a"]], [{"a": -1}], 1)
    with pytest.raises(ValueError, match="2 rankings but 1"):
        ranking.mean_average_precision([["a"], ["b"]], [{"a"}])
    with pytest.raises(TypeError, match="qrel"):
        ranking.as_grades(["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        ranking.ndcg_at_k([["a"]], [{"a"}], 0)


def test_ann_against_exact_recall() -> None:
    exact = [[1, 2, 3], [4, 5, 6]]
    approx = [[1, 3, 9], [4, 5, 6]]
    assert isclose(metrics.recall_against_exact(approx, exact, 3), (2 / 3 + 1) / 2)
    assert metrics.recall_against_exact(np.array(exact).tolist(), exact, 3) == 1.0
