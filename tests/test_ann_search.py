"""Artifact area: ANN search with per-call parameters, exact block search and exact rerank, on small real FAISS
indexes: the parameter objects each index kind takes, the refusals, block edges, padding and ties."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from search.artifact import ann
from search.artifact.ann import ann_search, exact_search, recall_at_k, rerank, search_parameters


def _unit(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _unit(300)


def _index(factory: str, vectors: np.ndarray):
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    return index


def test_parameters_per_index_kind(vectors):
    ivf = _index("IVF8,Flat", vectors)
    params = search_parameters(ivf, {"nprobe": "4", "max_codes": 100})
    assert isinstance(params, faiss.SearchParametersIVF) and (params.nprobe, params.max_codes) == (4, 100)
    graph = _index("HNSW8", vectors)
    hnsw = search_parameters(graph, {"efSearch": 32})
    assert isinstance(hnsw, faiss.SearchParametersHNSW) and hnsw.efSearch == 32
    pre = _index("PCA4,IVF8,Flat", vectors)
    assert isinstance(search_parameters(pre, {"nprobe": 8}), faiss.SearchParametersPreTransform)
    per_call = ann_search(pre, vectors[:20], 5, {"nprobe": 8})[1]
    faiss.extract_index_ivf(pre).nprobe = 8  # the same setting made on the index itself
    np.testing.assert_array_equal(per_call, pre.search(vectors[:20], 5)[1])
    assert search_parameters(ivf, None) is None and search_parameters(ivf, {}) is None
    flat = _index("Flat", vectors)
    assert search_parameters(flat, {}) is None


@pytest.mark.parametrize(("factory", "params", "message"), [
    ("HNSW8", {"nprobe": 4}, r"^IndexHNSWFlat does not understand search parameters \['nprobe'\]$"),
    ("IVF8,Flat", {"efSearch": 4, "nprobe": 1}, r"IndexIVFFlat does not understand search parameters \['efSearch'\]"),
    ("Flat", {"nprobe": 4}, r"^IndexFlat takes no search parameters, got \['nprobe'\]$"),
    ("PCA4,Flat", {"nprobe": 4}, r"^IndexFlat takes no search parameters"),
])
def test_unknown_parameters_are_refused(vectors, factory, params, message):
    index = _index(factory, vectors)  # held: FAISS objects reached through it must outlive the call
    with pytest.raises(ValueError, match=message):
        search_parameters(index, params)


def test_ann_search_uses_the_call_parameters_and_checks_its_input(vectors):
    ivf = _index("IVF16,Flat", vectors)
    one_list, _ = ann_search(ivf, vectors[:20], 10, {"nprobe": 1})
    every_list, labels = ann_search(ivf, vectors[:20].astype(np.float64), 10, {"nprobe": 16})
    exact, rows = exact_search(vectors, vectors[:20], 10)
    np.testing.assert_array_equal(labels, rows)  # all lists probed: exact
    np.testing.assert_allclose(every_list, exact, rtol=0, atol=1e-5)
    assert ann_search(ivf, vectors[:1], 1)[1].shape == (1, 1)
    assert recall_at_k(ann_search(ivf, vectors[:20], 10, {"nprobe": 1})[1], rows, 10) < 1.0
    assert ivf.nprobe == 1  # never set on the shared index
    scores, single = ann_search(ivf, vectors[0], 3, {"nprobe": 16})
    assert single.shape == (1, 3) and single[0, 0] == 0
    with pytest.raises(ValueError, match=r"^query dimension 4 != index dimension 8$"):
        ann_search(ivf, np.zeros((1, 4)), 3)
    for k in (0, -1):
        with pytest.raises(ValueError, match="^k must be positive$"):
            ann_search(ivf, vectors[:1], k)
    with pytest.raises(ValueError, match=r"queries must be a 2-D array, got shape \(1, 2, 8\)"):
        ann_search(ivf, np.zeros((1, 2, 8)), 3)


@pytest.mark.parametrize("block_rows", [1, 7, 64, 299, 300, 65536])
def test_exact_search_is_the_same_whatever_the_block_size(vectors, block_rows):
    queries = _unit(5, seed=1)
    truth = queries @ vectors.T
    scores, rows = exact_search(vectors.astype(np.float16), queries.astype(np.float64), 10, block_rows=block_rows)
    stored = (queries @ vectors.astype(np.float16).astype(np.float32).T)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    np.testing.assert_array_equal(rows, np.argsort(-stored, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.sort(stored, axis=1)[:, ::-1][:, :10], rtol=0, atol=1e-6)
    assert np.all(np.abs(np.sort(truth, axis=1)[:, ::-1][:, :10] - scores) < 1e-2)


def test_exact_search_pads_when_k_exceeds_the_rows_and_keeps_ties_in_row_order():
    rows = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    scores, found = exact_search(rows, np.array([1, 0], np.float32), 5, block_rows=2)
    assert found.tolist() == [[0, 1, 2, -1, -1]]
    assert scores[0, :3].tolist() == [1.0, 1.0, 0.0] and np.isneginf(scores[0, 3:]).all()


def test_rerank_rescores_candidates_and_pads(vectors):
    queries = vectors[:2]
    candidates = np.array([[5, 0, -1, 5, 9], [-1, -1, -1, -1, -1]])
    scores, rows = rerank(vectors.astype(np.float16), queries, candidates, 3)
    assert rows[0, 0] == 0 and sorted(rows[0].tolist()) == [0, 5, 9]
    expected = vectors.astype(np.float16).astype(np.float32)[rows[0]] @ queries[0]
    np.testing.assert_array_equal(scores[0], expected)
    assert rows[1].tolist() == [-1, -1, -1] and np.isneginf(scores[1]).all()
    two, kept = rerank(vectors, queries[:1], np.array([[3, 4, 5]]), 2)
    assert kept.shape == (1, 2) and two.dtype == np.float32
    tie_s, tie_rows = rerank(np.array([[1, 0], [1, 0]], np.float32), np.array([[1, 0]], np.float32),
                             np.array([[1, 0]]), 2)
    assert tie_rows.tolist() == [[0, 1]]


def test_recall_at_k():
    truth = np.array([[1, 2, 3], [4, 5, -1]])
    assert recall_at_k(np.array([[3, 2, 9], [4, -1, -1]]), truth, 3) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert recall_at_k(np.array([[1, 9, 9], [9, 9, 9]]), truth, 1) == 0.5
    assert recall_at_k(np.array([[-1, -1, -1]]), np.array([[-1, -1, -1]]), 3) == 0.0
    assert np.isnan(recall_at_k(np.zeros((0, 3)), np.zeros((0, 3)), 3))
    with pytest.raises(ValueError, match="^found and truth must have one row per query$"):
        recall_at_k(np.zeros((1, 3)), np.zeros((2, 3)), 3)


def _tied(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n float16 rows that are one of three unit vectors (many exact ties), and a query scoring them 1, 0.5, 0.25."""
    rows = np.eye(4, dtype=np.float16)[:3][np.random.default_rng(seed).integers(0, 3, n)]
    return rows, np.array([[1.0, 0.5, 0.25, 0.0]], np.float32)


def test_exact_search_breaks_ties_across_blocks_by_row_and_answers_float32():
    rows, query = _tied()
    scores, found = exact_search(rows, query, 40, block_rows=1)  # every row its own block
    expect = np.argsort(-(rows.astype(np.float32) @ query[0]), kind="stable")[:40]
    assert found.tolist() == [expect.tolist()]  # an earlier block's row wins a tie with a later one
    assert scores.dtype == np.float32 and found.dtype == np.int64
    padded_s, padded = exact_search(rows[:2], query, 4)
    assert padded_s.dtype == np.float32 and padded.dtype == np.int64 and padded[0, 2:].tolist() == [-1, -1]


def test_rerank_breaks_ties_by_row_skips_empty_rows_and_refuses_mismatched_input():
    rows, query = _tied()
    queries = np.repeat(query, 3, axis=0)
    candidates = np.stack([np.full(60, -1), np.arange(60)[::-1], np.arange(60)])  # none, then all (any order)
    scores, found = rerank(rows, queries, candidates, 20)
    expect = np.argsort(-(rows.astype(np.float32) @ query[0]), kind="stable")[:20].tolist()
    assert found[0].tolist() == [-1] * 20 and np.isneginf(scores[0]).all()
    assert found[1].tolist() == expect and found[2].tolist() == expect  # a row after an empty one is reranked
    assert scores.shape == found.shape == (3, 20) and scores.dtype == np.float32 and found.dtype == np.int64
    _, narrow = rerank(rows, query, np.array([[2, 1]], np.int32), 2)
    assert narrow.dtype == np.int64
    one_s, one = rerank(rows, query, np.array([[-1, 7, -1]]), 2)  # a single candidate is reranked too
    assert one.tolist() == [[7, -1]] and one_s[0, 0] == float(rows[7].astype(np.float32) @ query[0])
    with pytest.raises(ValueError):
        rerank(rows, queries, candidates[:2], 5)  # a candidate row per query


def test_recall_counts_label_zero_and_is_zero_on_zero_width():
    assert recall_at_k(np.array([[0, 5]]), np.array([[0, 7]]), 2) == 0.5  # label 0 is a row like any other
    assert recall_at_k(np.array([[7, 0]]), np.array([[0, 7]]), 2) == 1.0
    assert recall_at_k(np.zeros((2, 0), np.int64), np.zeros((2, 0), np.int64), 3) == 0.0  # nothing to find


def test_exact_search_top_1_is_the_best_row_in_every_block(vectors):
    queries = _unit(20, seed=3)
    for block_rows in (7, 300):
        _, top = exact_search(vectors.astype(np.float16), queries, 1, block_rows=block_rows)
        expect = np.argmax(queries @ vectors.astype(np.float16).astype(np.float32).T, axis=1)
        assert top[:, 0].tolist() == expect.tolist()


def _mapped_files() -> set[str]:
    with open("/proc/self/maps") as fh:
        return {line.split(maxsplit=5)[5].strip() for line in fh if len(line.split(maxsplit=5)) == 6}


def test_read_index_maps_a_flat_index_read_only_with_the_same_answers(vectors, tmp_path):
    flat = _index("Flat", vectors)
    path = tmp_path / "index.faiss"
    faiss.write_index(flat, str(path))
    mapped = ann.read_index(path)
    assert str(path.resolve()) in _mapped_files()  # Flat codes too (IO_FLAG_MMAP alone maps only IVF lists)
    queries = _unit(10, seed=5)
    np.testing.assert_array_equal(mapped.search(queries, 5)[1], flat.search(queries, 5)[1])
    assert ann.mmap_flags() & faiss.IO_FLAG_READ_ONLY


def test_require_faiss_names_the_extras_only_when_faiss_itself_is_missing(monkeypatch):
    import builtins
    import sys

    ann.require_faiss()  # installed: nothing to say
    real_import = builtins.__import__
    missing = {"name": "faiss"}

    def fake_import(name, *args, **kwargs):
        if name == "faiss":
            raise ModuleNotFoundError(f"No module named {missing['name']!r}", name=missing["name"])
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "faiss")
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ann.FaissMissing) as refused:
        ann.require_faiss()
    assert str(refused.value) == ann.FAISS_MISSING and "faiss-cpu" in str(refused.value)
    missing["name"] = "libfaiss_dependency"  # faiss is there, something it imports is not: the real error
    with pytest.raises(ModuleNotFoundError) as broken:
        ann.require_faiss()
    assert broken.value.name == "libfaiss_dependency"
