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
from search.query.batch import Page, RankPolicy, search_batch
from search.query.filters import Filters
from search.query.merge import merge_ranked
from search.query.pipeline import Searcher
from search.query.shard import ShardQuery, shard_search
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
