"""One batch through ANN, rerank and the metadata read: `search_batch` answers every query of a batch exactly
as it answers that query alone (ids, order, scores, totals), whatever mix of specs the batch carries, and the
search lane turns concurrent searches into such batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.artifact.reload import ArtifactHolder
from search.artifact.takedown import TakedownList, apply_takedowns
from search.artifact.version import Artifact, open_current
from search.query.batch import Page, RankPolicy, first_fetch, search_batch, shard_query
from search.query.filters import Filters
from search.query.merge import merge_ranked, satisfied, trim_to_fetch
from search.query.pipeline import Searcher
from search.query.rerank import Ranked
from search.query.shard import ShardHits, ShardQuery, ShardUnavailable, shard_search
from search.query.spec import SearchSpec
from search.query.timing import StageTimer
from search.settings import RankSettings
from tests.artifact_support import clustered, publish, small_config
from tests.service_support import copy_store

SPECS = [
    SearchSpec(k=5),
    SearchSpec(k=3, offset=4),
    SearchSpec(k=10, dedup=True),
    SearchSpec(k=6, diversity=0.5),
    SearchSpec(k=4, filters=Filters(licence=("CC0-1.0",))),
    SearchSpec(k=4, filters=Filters(orientation="portrait")),  # nothing matches: fetches grow to the whole index
    SearchSpec(k=8, filters=Filters(created_after="2024-06-01"), min_score=0.0),
    SearchSpec(k=5, offset=30),  # past the first fetch: the fetch grows
    SearchSpec(k=5, phase="fast"),
    SearchSpec(k=4, phase="fast", filters=Filters(licence=("CC-BY-4.0",)), min_score=0.05),
    SearchSpec(k=5, exclude_id=13),
    SearchSpec(k=7, offset=2, dedup=True, diversity=0.3, filters=Filters(licence=("CC0-1.0", "CC-BY-4.0"))),
]


def _queries(artifact: Artifact, n: int, seed: int = 0) -> np.ndarray:
    """Stored vectors with noise (near neighbours exist)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(artifact.vectors[rng.integers(0, len(artifact.ids), n)], np.float32)
    q = base + 0.05 * rng.standard_normal(base.shape).astype(np.float32)
    return np.asarray(q / np.linalg.norm(q, axis=1, keepdims=True), np.float32)


def _same(batched: list[Page], alone: list[Page]) -> None:
    assert len(batched) == len(alone)
    for i, (b, a) in enumerate(zip(batched, alone, strict=True)):
        assert b.total == a.total, i
        assert [h["id"] for h in b.hits] == [h["id"] for h in a.hits], i
        assert [(h["score"], h["similarity"]) for h in b.hits] == [(h["score"], h["similarity"]) for h in a.hits], i
        assert b.hits == a.hits, i


@pytest.mark.parametrize("rank", [RankSettings(), RankSettings(popularity_weight=0.2, overfetch=2)])
def test_a_batch_of_mixed_specs_equals_each_query_alone(world, rank: RankSettings) -> None:
    with open_current(world.store) as artifact:
        policy = RankPolicy.from_settings(rank)
        hidden = frozenset(int(i) for i in artifact.ids[[1, 5, 9]])
        specs = SPECS + SPECS[:4]
        q = _queries(artifact, len(specs))
        q[len(SPECS)] = q[0]  # the same query and spec twice in one batch
        batched = search_batch(artifact, q, specs, policy, hidden=hidden)
        alone = [search_batch(artifact, q[i:i + 1], [s], policy, hidden=hidden)[0] for i, s in enumerate(specs)]
        _same(batched, alone)
        shown = {h["id"] for page in batched for h in page.hits}
        assert shown and shown.isdisjoint(hidden)
        assert batched[5].hits == [] and batched[5].total == 0  # portrait: none in the world
        assert 13 not in {h["id"] for h in batched[10].hits}
        assert [h["id"] for h in batched[1].hits] == [h["id"] for h in alone[1].hits]
        assert batched[len(SPECS)].hits == batched[0].hits


@pytest.mark.parametrize("factory", ["HNSW16", "IVF16,Flat"])
def test_fetch_sizes_never_mix_in_one_faiss_call(tmp_path: Path, factory: str) -> None:
    """HNSW widens its search with k: a query must be fetched at its own size, not the batch's largest."""
    vectors = clustered(3000, 32, clusters=12)
    publish(tmp_path / "store", vectors, config=small_config(factory=factory))
    with open_current(tmp_path / "store") as artifact:
        policy = RankPolicy.from_settings(RankSettings(ann_params={"efSearch": 16} if "HNSW" in factory
                                                       else {"nprobe": 2}))
        specs = [SearchSpec(k=k, offset=o, phase=p) for k, o, p in
                 [(5, 0, "fast"), (10, 0, "full"), (50, 100, "full"), (3, 0, "fast"), (20, 0, "fast"),
                  (5, 0, "full"), (100, 0, "full")]]
        q = _queries(artifact, len(specs), seed=1)
        batched = search_batch(artifact, q, specs, policy)
        alone = [search_batch(artifact, q[i:i + 1], [s], policy)[0] for i, s in enumerate(specs)]
        _same(batched, alone)


def test_the_first_fetch_is_the_rerank_depth_or_the_overfetched_page_and_fast_fetches_the_page() -> None:
    policy = RankPolicy.from_settings(RankSettings(overfetch=4))
    licence = Filters(licence=("CC0-1.0",))
    assert first_fetch(SearchSpec(k=5), policy, 200, 1000) == 200  # the rerank depth
    assert first_fetch(SearchSpec(k=20, offset=40), policy, 200, 1000) == 240  # 4 x (offset + k)
    assert first_fetch(SearchSpec(k=20, offset=40), policy, 200, 100) == 100  # never past the index
    assert first_fetch(SearchSpec(k=5, phase="fast"), policy, 200, 1000) == 6  # the page + the query image
    assert first_fetch(SearchSpec(k=5, phase="fast", filters=licence), policy, 200, 1000) == 24
    assert first_fetch(SearchSpec(k=5, phase="fast"), policy, 200, 4) == 4

def test_a_fast_query_asks_shards_for_ann_scores_above_its_cutoff_and_a_full_one_for_exact_rows() -> None:
    signals = RankPolicy.from_settings(RankSettings(popularity_weight=0.2))
    licence = Filters(licence=("CC0-1.0",))
    fast = shard_query(SearchSpec(k=5, phase="fast", filters=licence, min_score=0.3, exclude_id=7), 24, signals)
    assert fast == ShardQuery(fetch=24, filters=licence, exclude_id=7, exact=False, min_ann_score=0.3, metadata=False,
                              rows=False)
    full = shard_query(SearchSpec(k=5, min_score=0.3), 200, signals)
    # the cutoff: after rerank; no rows asked: nothing compares hits with each other
    assert full == ShardQuery(fetch=200, exact=True, min_ann_score=None, metadata=True, rows=False)
    plain = RankPolicy.from_settings(RankSettings(popularity_weight=0.0, freshness_weight=0.0))
    assert not shard_query(SearchSpec(k=5), 200, plain).metadata
    # dedup and MMR compare the candidates' rows, so only they ask for them (the fast phase does neither)
    assert shard_query(SearchSpec(k=5, dedup=True), 200, plain).rows
    assert shard_query(SearchSpec(k=5, diversity=0.3), 200, plain).rows
    assert not shard_query(SearchSpec(k=5, phase="fast", dedup=True, diversity=0.3), 20, plain).rows

def test_a_shard_answers_ids_exact_scores_and_rows_for_the_merge(world) -> None:
    with open_current(world.store) as artifact:
        q = _queries(artifact, 2)
        parts = shard_search(artifact, q, [ShardQuery(fetch=20), ShardQuery(fetch=10, exact=False)])
        full, fast = parts
        rows = artifact.rows_for(full.ids)
        expect = np.asarray(artifact.vectors[rows], np.float32) @ q[0]
        np.testing.assert_array_equal(full.similarity, expect.astype(np.float32))
        assert full.vectors is not None and full.vectors.shape == (len(full.ids), artifact.dim)
        assert fast.vectors is None and len(fast.ids) == 10
        # without rows: the same ids and exact scores, no (m, D) block to send
        bare, = shard_search(artifact, q[:1], [ShardQuery(fetch=20, rows=False)])
        assert bare.vectors is None and bare.ids.tolist() == full.ids.tolist()
        np.testing.assert_array_equal(bare.similarity, full.similarity)
        assert merge_ranked([bare], SearchSpec(k=10), RankPolicy.from_settings(RankSettings()).weights, 0.98) == \
            merge_ranked([full], SearchSpec(k=10), RankPolicy.from_settings(RankSettings()).weights, 0.98)
        assert np.all(np.diff(fast.similarity) <= 0)
        # two shards holding halves of the candidates merge to the one shard's ranking
        half = len(full.ids) // 2
        split = [type(full)(full.ids[s], full.similarity[s], full.vectors[s], None, True)
                 for s in (slice(0, half), slice(half, None))]
        policy = RankPolicy.from_settings(RankSettings())
        spec = SearchSpec(k=10, dedup=True)
        assert merge_ranked(split, spec, policy.weights, policy.dedup_threshold) == \
            merge_ranked([full], spec, policy.weights, policy.dedup_threshold)


def test_concurrent_searches_share_one_lane_batch_and_answer_as_alone(world, tmp_path: Path) -> None:
    store = copy_store(world, tmp_path / "store")
    with open_current(store) as artifact:
        taken = int(artifact.ids[0])
        q = _queries(artifact, len(SPECS), seed=2)
    apply_takedowns(store, [(taken, None)], "test", False)
    holder = ArtifactHolder(store, None)
    holder.reload()
    sizes: list[int] = []
    searcher = Searcher(holder, RankSettings(), TakedownList(store, 0.5), on_batch=sizes.append)

    async def run() -> tuple[list[Page], list[Page]]:
        together = await asyncio.gather(*(searcher.search(v, s, StageTimer()) for v, s in zip(q, SPECS, strict=True)))
        one_by_one = [await searcher.search(v, s, StageTimer()) for v, s in zip(q, SPECS, strict=True)]
        return ([Page(o.hits, o.total) for o in together], [Page(o.hits, o.total) for o in one_by_one])

    try:
        together, one_by_one = asyncio.run(run())
    finally:
        searcher.close()
        holder.close()
    assert sizes[0] == len(SPECS) and sizes[1:] == [1] * len(SPECS)  # one batch, then lone searches
    _same(together, one_by_one)
    assert all(taken not in {h["id"] for h in page.hits} for page in together)


def test_the_search_lane_runs_faiss_with_the_budgets_team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenMP keeps FAISS's team size per thread: the budget applied on the start-up thread reaches the lane's
    thread only because the lane applies it there (a team of every core cost 8-15 ms per query on 2 loaded cores
    against 0.3 ms: benchmarks/README.md, issue 20)."""
    import threading

    import faiss

    from search.runtime import threads

    def on_new_thread(fn: Callable[[], Any]) -> Any:
        seen: list[Any] = []
        thread = threading.Thread(target=lambda: seen.append(fn()))
        thread.start()
        thread.join()
        return seen[0]

    monkeypatch.setattr(threads, "_PROCESS", [])  # this test's budget only
    default = on_new_thread(faiss.omp_get_max_threads)
    on_new_thread(lambda: threads.configure_process(threads.resolve_budget(faiss_omp=default + 1)))
    assert on_new_thread(faiss.omp_get_max_threads) == default  # the start-up thread's setting stays there
    searcher = Searcher(ArtifactHolder(tmp_path, None), RankSettings())
    searcher.lane.run = lambda batch: [faiss.omp_get_max_threads()] * len(batch)  # type: ignore[list-item]
    try:
        team = asyncio.run(searcher.lane.submit(None))  # type: ignore[arg-type]
    finally:
        searcher.close()
    assert team == default + 1


def test_the_service_freezes_its_start_up_heap(world) -> None:
    """The cyclic collector never walks what start-up loaded (search/serving.py: freeze_startup_heap)."""
    import gc

    from fastapi.testclient import TestClient

    from search.http.app import create_app
    from tests.service_support import runtime_for, settings_for

    gc.unfreeze()
    try:
        with TestClient(create_app(settings_for(world), encoder=runtime_for(world))) as client:
            assert client.get("/search", params={"q": "a red circle", "k": 3}).status_code == 200
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


# -- the cross-shard merge's rules, on hand-made shard answers --------------------------------------------------
def _hits(ids: list[int], ann: list[float], fetched: list[float] | None = None, *, metas: bool = False,
          exhausted: bool = True) -> ShardHits:
    """A shard's answer whose exact scores are its ANN scores; `fetched` adds hidden/filtered candidates' scores."""
    sims = np.asarray(ann, np.float32)
    vectors = np.eye(16, dtype=np.float32)[np.asarray(ids, np.int64) % 16]
    return ShardHits(np.asarray(ids, np.int64), sims, vectors, [{"id": i} for i in ids] if metas else None,
                     exhausted, sims.copy(), np.asarray(ann if fetched is None else fetched, np.float32))


def test_trim_to_fetch_keeps_the_global_top_fetch_by_ann_score() -> None:
    a = _hits([1, 2, 3], [0.9, 0.5, 0.4], [0.9, 0.8, 0.5, 0.4], metas=True)  # 0.8: a hidden candidate
    b = _hits([10, 11], [0.85, 0.3])
    one, two = trim_to_fetch([a, b], 3)  # the top 3 of 0.9, 0.85, 0.8 (hidden), ...: the cut is 0.85
    assert one.ids.tolist() == [1] and two.ids.tolist() == [10]
    assert one.similarity.tolist() == pytest.approx([0.9]) and two.similarity.tolist() == pytest.approx([0.85])
    assert one.vectors is not None and a.vectors is not None and one.vectors.tolist() == a.vectors[:1].tolist()
    assert one.metas == [{"id": 1}] and two.metas is None
    assert one.ann is not None and one.ann.tolist() == pytest.approx([0.9])
    assert one.fetched is not None and one.fetched.tolist() == pytest.approx([0.9, 0.8])
    assert two.fetched is not None and two.fetched.tolist() == pytest.approx([0.85])
    assert not one.exhausted and not two.exhausted  # a larger fetch finds more
    assert trim_to_fetch([a, b], 4)[0].ids.tolist() == [1, 2]  # cut 0.5: the hidden 0.8 is one of the 4


def test_trim_to_fetch_keeps_ties_and_leaves_small_or_single_answers_alone() -> None:
    a, b = _hits([1, 2], [0.9, 0.2]), _hits([5, 6], [0.9, 0.1])
    assert [p.ids.tolist() for p in trim_to_fetch([a, b], 1)] == [[1], [5]]  # both tied with the cut
    for parts, fetch in (([a, b], 4), ([a], 1)):  # no more than fetch; one shard
        same = trim_to_fetch(parts, fetch)
        assert same == parts and all(p.exhausted for p in same)
    without = ShardHits(a.ids, a.similarity, a.vectors, None, True)  # no ANN scores sent: nothing to cut by
    assert trim_to_fetch([without, b], 1) == [without, b]
    assert trim_to_fetch([a, b], 3)[1].ids.tolist() == [5]  # 4 > 3 candidates: cut at 0.2


def test_the_fast_merge_sorts_shards_by_ann_score_and_keeps_one_shards_order() -> None:
    fast = SearchSpec(k=3, phase="fast")
    weights = RankPolicy.from_settings(RankSettings()).weights
    a, b = _hits([4, 2], [0.3, 0.7]), _hits([9, 8], [0.7, 0.5])  # a is not in score order: kept alone
    assert [r.id for r in merge_ranked([a], fast, weights, 0.9)] == [4, 2]
    merged = merge_ranked([a, b], fast, weights, 0.9)
    assert [r.id for r in merged] == [2, 9, 8, 4]  # the tie 0.7 keeps the shards' order
    assert merged[0].id == 2 and merged[0].score == merged[0].similarity == pytest.approx(0.7)
    assert merge_ranked([], fast, weights, 0.9) == [] and merge_ranked([], SearchSpec(k=3), weights, 0.9) == []
    assert merge_ranked([_hits([], [])], SearchSpec(k=3), weights, 0.9) == []


def test_a_page_is_final_when_full_or_when_every_shard_is_exhausted() -> None:
    spec = SearchSpec(k=2, offset=1)
    three = [Ranked(i, 0.5, 0.5) for i in range(3)]
    open_, done = _hits([1], [0.5], exhausted=False), _hits([2], [0.4])
    assert satisfied(three, [open_], spec)  # offset + k results
    assert not satisfied(three[:2], [open_, done], spec)
    assert satisfied(three[:2], [done, done], spec)


def test_an_unavailable_shard_names_itself_and_when_to_retry() -> None:
    """What the 503 says (search/http/app.py): the shard, the reason, and a one-second retry unless told."""
    down = ShardUnavailable("2", "both calls timed out")
    assert str(down) == "shard 2 is unavailable: both calls timed out"
    assert (down.shard, down.retry_after_s) == ("2", 1.0)
    assert ShardUnavailable("0", "no replica is running", retry_after_s=5.0).retry_after_s == 5.0
