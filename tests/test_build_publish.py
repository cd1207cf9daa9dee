"""Index build, recall measurement, atomic publish, failure isolation and pruning (synthetic, small)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import indexer.index.publish as publish_mod
from indexer.index.build import build_index
from indexer.index.publish import list_versions, new_version_name, prune_versions, publish_version
from search.artifact import ann
from search.artifact.version import ArtifactError, current_path, open_current
from tests.artifact_support import clustered, identity, publish, small_config

D = 32


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(3000, D)


def _independent_recall(store: Path, vectors: np.ndarray) -> tuple[float, float]:
    """Recall@10 of the published artifact on fresh queries, computed here without the build's code path."""
    art = open_current(store)
    rng = np.random.default_rng(99)
    q = vectors[rng.choice(len(vectors), 100, replace=False)] + 0.3 / np.sqrt(D) * rng.standard_normal((100, D))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    exact = (q @ np.asarray(art.vectors, dtype=np.float32).T).argsort(axis=1)[:, ::-1][:, :10]
    truth = art.ids[exact]
    _, raw = art.ann_search(q, 10)
    reranked = art.search(q, 10).ids
    art.close()
    return ann.recall_at_k(raw, truth, 10), ann.recall_at_k(reranked, truth, 10)


def test_flat_index_has_recall_one(tmp_path: Path, vectors: np.ndarray) -> None:
    pv = publish(tmp_path / "store", vectors, config=small_config(factory="Flat"))
    info = pv.manifest.index
    assert info.factory == "Flat"
    assert info.recall_at_10 == 1.0 and info.recall_at_10_raw == 1.0
    assert info.recall_queries == 100
    assert _independent_recall(tmp_path / "store", vectors) == (1.0, 1.0)


@pytest.mark.parametrize("factory", ["IVF64,PQ8", "HNSW8"])
def test_ann_recall_is_measured_against_exact(tmp_path: Path, vectors: np.ndarray, factory: str) -> None:
    pv = publish(tmp_path / "store", vectors, config=small_config(factory=factory, budget={"target_recall": 0.95}))
    info = pv.manifest.index
    assert info.factory == factory
    trials = info.tuning
    assert trials and all(0.0 <= t["recall_at_10_raw"] <= 1.0 for t in trials)
    first = trials[0]
    assert first["recall_at_10_raw"] < 1.0  # the cheapest setting is genuinely approximate
    assert info.recall_at_10 >= info.recall_at_10_raw  # exact rerank of over-fetched candidates helps
    raw, reranked = _independent_recall(tmp_path / "store", vectors)
    assert abs(reranked - info.recall_at_10) < 0.08
    assert abs(raw - info.recall_at_10_raw) < 0.15
    param = "nprobe" if factory.startswith("IVF") else "efSearch"
    assert set(info.params) == {param}


def test_pq_ranks_worse_raw_than_after_rerank(vectors: np.ndarray) -> None:
    built = build_index(vectors.astype(np.float16), small_config(factory="IVF16,PQ4", rerank_candidates=[100]))
    assert built.recall_at_10_raw < 0.9 < built.recall_at_10


def test_manifest_records_selection_figures_and_files(tmp_path: Path, vectors: np.ndarray) -> None:
    pv = publish(tmp_path / "store", vectors)
    m = pv.manifest
    assert m.index.selection["factory"] == m.index.factory
    assert m.index.selection["inputs"]["n"] == 3000 and m.index.selection["reason"]
    assert m.counts == {"indexed": 3000, "failed": 0, "vectors": 3000}
    assert set(m.files) == {"index.faiss", "vectors.f16.npy", "ids.npy", "metadata.sqlite"}
    assert "index_build_s" in m.timings and "encode_s" in m.timings
    assert m.index.latency_ms["p50"] > 0 and m.index.bytes_per_vector > 0
    assert current_path(tmp_path / "store") == pv.path
    assert os.readlink(tmp_path / "store" / "current") == f"versions/{pv.name}"


def test_unsorted_ids_keep_vectors_in_step(tmp_path: Path, vectors: np.ndarray) -> None:
    ids = np.random.default_rng(1).permutation(len(vectors)).astype(np.int64) + 100
    publish(tmp_path / "store", vectors, ids=ids, config=small_config(factory="Flat"))
    art = open_current(tmp_path / "store")
    assert np.all(np.diff(art.ids) > 0)
    np.testing.assert_allclose(art.vectors_for(ids[:5]), vectors[:5], atol=2e-3)
    assert art.search(vectors[7:8], 1).ids[0, 0] == ids[7]
    _, rows = art.ann_rows(vectors[7:8], 5)  # the rerank's path: rows, their ids, their vectors (any order)
    found = art.ids_at(rows[0])
    np.testing.assert_array_equal(found, art.ann_search(vectors[7:8], 5)[1][0])
    source = [int(np.flatnonzero(ids == i)[0]) for i in found]  # positions in the published input
    np.testing.assert_allclose(art.vectors_at(rows[0]), vectors[source], atol=2e-3)
    np.testing.assert_array_equal(art.vectors_at(rows[0][::-1]), art.vectors_for(found[::-1]))
    art.close()


@pytest.mark.parametrize("mutate, match", [
    (lambda ids, v: (ids, v * 2.0), "normalised"),
    (lambda ids, v: (np.concatenate([ids[:1], ids[:-1]]), v), "duplicate"),
    (lambda ids, v: (ids, v[:, :16]), "dimension"),
    (lambda ids, v: (ids[:-1], v), "len"),
    (lambda ids, v: (ids, np.where(np.arange(len(v))[:, None] == 3, np.nan, v)), "NaN"),
])
def test_bad_input_is_refused_before_writing(tmp_path: Path, vectors: np.ndarray, mutate, match: str) -> None:
    store = tmp_path / "store"
    good = publish(store, vectors, config=small_config(factory="Flat"))
    ids, vecs = mutate(np.arange(1, len(vectors) + 1, dtype=np.int64) * 3, vectors)
    with pytest.raises(ValueError, match=match):
        publish_version(store, ids, vecs, tmp_path / "live.sqlite", identity(D), tmp_path, small_config(), {}, {})
    assert list_versions(store) == [good.name]
    assert current_path(store) == good.path


def test_exception_mid_build_leaves_current_untouched(tmp_path: Path, vectors: np.ndarray, monkeypatch) -> None:
    store = tmp_path / "store"
    good = publish(store, vectors, config=small_config(factory="Flat"))

    def explode(*args, **kwargs):
        raise MemoryError("simulated failure during training")

    monkeypatch.setattr(publish_mod, "build_index", explode)
    with pytest.raises(MemoryError):
        publish(store, vectors)
    assert current_path(store) == good.path
    assert sorted(p.name for p in (store / "versions").iterdir()) == [good.name]  # temp dir removed


def test_truncated_index_file_is_caught_before_publish(tmp_path: Path, vectors: np.ndarray, monkeypatch) -> None:
    store = tmp_path / "store"
    good = publish(store, vectors, config=small_config(factory="Flat"))
    real_write = publish_mod._write_index

    def write_truncated(index, path: Path) -> None:
        real_write(index, path)
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 2)

    monkeypatch.setattr(publish_mod, "_write_index", write_truncated)
    with pytest.raises(ArtifactError):
        publish(store, vectors, config=small_config(factory="Flat"))
    assert current_path(store) == good.path
    assert list_versions(store) == [good.name]
    art = open_current(store, checks="full")
    assert art.version == good.name
    art.close()


def test_pruning_keeps_the_newest_and_never_the_current(tmp_path: Path, vectors: np.ndarray) -> None:
    store = tmp_path / "store"
    cfg = small_config(factory="Flat", keep_versions=2)
    names = [publish(store, vectors[:500], config=cfg).name for _ in range(4)]
    assert list_versions(store) == names[-2:]
    assert current_path(store).name == names[-1]
    # Point current back at the older survivor (a rollback): pruning to 1 must keep it and the newest.
    publish_mod.flip_current(store, store / "versions" / names[-2])
    assert prune_versions(store, keep=1) == []
    assert list_versions(store) == names[-2:]
    publish_mod.flip_current(store, store / "versions" / names[-1])
    assert prune_versions(store, keep=1) == [names[-2]]


def test_version_names_sort_by_time_and_are_unique() -> None:
    names = [new_version_name() for _ in range(200)]
    assert len(set(names)) == 200
    assert names == sorted(names) or all(a[:22] <= b[:22] for a, b in zip(names, names[1:], strict=False))


def test_snapshot_is_a_read_only_copy_of_live_wal_database(tmp_path: Path, vectors: np.ndarray) -> None:
    store = tmp_path / "store"
    pv = publish(store, vectors[:200], config=small_config(factory="Flat"))
    snap = pv.path / "metadata.sqlite"
    assert not os.access(snap, os.W_OK) or os.geteuid() == 0
    assert not (pv.path / "metadata.sqlite-wal").exists()
    art = open_current(store)
    assert art.metadata([3, 6]) == [
        {"id": 3, "path": "img/000003.jpg", "status": "indexed", "tags": "[]"},
        {"id": 6, "path": "img/000006.jpg", "status": "indexed", "tags": "[]"},
    ]
    art.close()


def test_gpu_training_path_is_gated_and_wired(vectors: np.ndarray, monkeypatch) -> None:
    """No GPU here: the gate must say CPU; with a stand-in 'GPU' index the IVF training must use it."""
    import faiss

    from indexer.index import build

    cfg = small_config(factory="IVF16,Flat", recall_queries=20, latency_queries=5, rerank_candidates=[20])
    plain = build.build_index(vectors.astype(np.float16), cfg)
    assert plain.timings["train_on_gpu"] == (1.0 if faiss.get_num_gpus() > 0 else 0.0)

    used = []

    def fake_cpu_to_all_gpus(index):
        used.append(index)
        return faiss.IndexFlatL2(index.d)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_cpu_to_all_gpus, raising=False)
    gpu = build.build_index(vectors.astype(np.float16), cfg)
    assert used and gpu.timings["train_on_gpu"] == 1.0
    assert gpu.recall_at_10 > 0.9
    off = build.build_index(vectors.astype(np.float16), small_config(factory="IVF16,Flat", use_gpu=False,
                                                                      recall_queries=20, latency_queries=5))
    assert off.timings["train_on_gpu"] == 0.0
