"""Notebook helpers with exact expected outputs: tables, worst queries, stage percentiles, and the query-cache
hit rate replayed through the service's own cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.lab.evaluation import analysis, cache_sim, latency
from indexer.lab.evaluation.datasets import EvalDataset, TextQuery


def test_markdown_table() -> None:
    table = analysis.markdown_table([{"mode": "exact", "R@1": 0.5}, {"mode": "ann", "R@1": None}])
    assert table.splitlines() == ["| mode | R@1 |", "|---|---|", "| exact | 0.5 |", "| ann |  |"]
    assert analysis.markdown_table([]) == "(no rows)"


def test_mode_rows_skip_scalars() -> None:
    section = {"exact": {"R@1": 1.0, "MRR": 1.0}, "ann_vs_exact_recall@10": 0.9}
    assert analysis.mode_rows(section, ("R@1",)) == [{"mode": "exact", "R@1": 1.0}]


def test_worst_queries_rank_missing_last_then_deepest() -> None:
    queries = (TextQuery("q-top", frozenset({"a"})), TextQuery("q-missing", frozenset({"z"})),
               TextQuery("q-third", frozenset({"c"})))
    ds = EvalDataset("t", Path("."), ("a", "b", "c"), queries)
    worst = analysis.worst_queries(ds, [["a", "b"], ["a", "b", "c"], ["a", "b", "c"]], n=2, top=2)
    assert [w["query"] for w in worst] == ["q-missing", "q-third"]
    assert worst[0]["first_relevant_rank"] is None and worst[1]["first_relevant_rank"] == 3
    assert worst[1]["top"] == [{"path": "a", "relevant": False}, {"path": "b", "relevant": False}]
    with pytest.raises(ValueError, match="2 rankings for 3 queries"):
        analysis.worst_queries(ds, [["a"], ["b"]])


def test_stage_percentiles_split_by_cache() -> None:
    records = [{"total": 1.0, "ann": 0.5, "cache_hit": True}, {"total": 2.0, "ann": 0.5, "cache_hit": False},
               {"total": 3.0, "ann": 1.5, "encode": 2.0, "cache_hit": False}]
    rows = {(r["queries"], r["stage"]): r for r in latency.stage_percentiles(records, (50,))}
    assert rows[("all", "total")]["p50_ms"] == 2.0 and rows[("all", "total")]["n"] == 3
    assert rows[("cache miss", "total")]["p50_ms"] == 2.5
    assert rows[("cache hit", "ann")]["p50_ms"] == 0.5
    assert rows[("all", "encode")]["n"] == 1 and ("cache hit", "encode") not in rows


def test_zipf_log_is_skewed_and_seeded() -> None:
    ranks = cache_sim.zipf_ranks(100, 5000, 1.2, seed=3)
    counts = [int((ranks == r).sum()) for r in range(3)]
    assert counts[0] > counts[1] > counts[2]
    assert cache_sim.zipf_log(10, 20, seed=1) == cache_sim.zipf_log(10, 20, seed=1)
    with pytest.raises(ValueError):
        cache_sim.zipf_ranks(0, 10)


def test_hit_rate_grows_with_size_up_to_the_ceiling() -> None:
    log = cache_sim.zipf_log(500, 4000, 1.0, seed=0)
    curve = cache_sim.hit_rate_curve(log, [1, 10, 100, 1000])
    rates = [row["hit_rate"] for row in curve]
    assert rates == sorted(rates) and rates[0] < rates[-1]
    assert rates[-1] == curve[-1]["ceiling"]  # a cache larger than the vocabulary misses only first sightings
    # differently cased repeats share one key (the log alternates case), so the ceiling counts normalised queries
    assert curve[-1]["ceiling"] == round(1 - len({q.lower() for q in log}) / len(log), 4)


def test_ttl_expiry_is_part_of_the_replay() -> None:
    log = ["same query"] * 10
    assert cache_sim.replay(log, maxsize=10, ttl_s=3600, qps=1) == 0.9
    assert cache_sim.replay(log, maxsize=10, ttl_s=0.5, qps=1) == 0.0  # each entry expires before the next query
