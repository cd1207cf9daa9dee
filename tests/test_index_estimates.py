"""Indexer area: the index choice's figures and words, pinned. The estimates and the reason are written into
every manifest (`selection`) and decide which index a store gets, so a change to the cost model must show up
here as a deliberate edit. The figures below are the formulas of indexer/index/index_select.py at the default
machine figures (2-core development machine)."""

from __future__ import annotations

import pytest

from indexer.index.index_select import CostModel, IndexBudget, IndexConfig, choose_index, ivf_nlist

NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _choose(n: int, d: int, **budget: float):
    return choose_index(n, d, IndexConfig(budget=IndexBudget(**budget)))


def test_flat_fits_small_corpora_with_its_figures():
    choice = _choose(1000, 512)
    assert (choice.factory, choice.kind, choice.within_budget) == ("Flat", "flat", True)
    assert choice.reason == "exact search fits the RAM and latency budgets"
    assert (choice.search_param, choice.search_values, choice.train_size, choice.rejected) == (None, (), 0, [])
    assert choice.estimates == pytest.approx({"bytes_per_vector": 2048.0, "latency_ms": 0.18962962962962962,
                                              "build_s": 0.0}, rel=1e-12)
    assert choice.inputs["n"] == 1000 and choice.inputs["d"] == 512 and choice.inputs["hnsw_m"] == 32
    assert choice.inputs["ram_allowance_bytes"] == 64 * 2**20
    assert sorted(choice.inputs) == ["budget", "cost", "d", "hnsw_m", "n", "ram_allowance_bytes"]
    assert choice.inputs["budget"]["latency_ms"] == 2.0 and choice.inputs["cost"]["scan_gflops"] == 5.4


def test_a_budget_met_exactly_is_met():
    n, d = 100, 4
    latency = 2.0 * n * d / (CostModel().scan_gflops * 1e6)
    exact = choose_index(n, d, IndexConfig(budget=IndexBudget(bytes_per_vector=0, small_index_bytes=4 * d * n,
                                                              latency_ms=latency, build_seconds=0.0)))
    assert exact.factory == "Flat" and exact.within_budget
    assert choose_index(1, 1).factory == "Flat"  # the smallest input there is


def test_graph_and_quantizer_figures_for_tiny_inputs():
    from indexer.index.index_select import _hnsw, _ivfpq

    assert _hnsw(1, 4, 32, CostModel()) == pytest.approx(
        {"bytes_per_vector": 292.8, "latency_ms": 0.00037925925925925925, "build_s": 1.6797650570256523e-07},
        rel=1e-12)
    assert _ivfpq(1, 512, 64, True, 16, 1, 200, IndexConfig()) == pytest.approx(
        {"bytes_per_vector": 802888.0, "latency_ms": 0.47786844444444443, "build_s": 0.0010280215272727273,
         "reduced_dim": 256.0}, rel=1e-12)


def test_pq_scan_cost_adds_per_code_byte_scanned():
    from indexer.index.index_select import _ivfpq

    def latency(ns_per_byte: float) -> float:
        config = IndexConfig(cost=CostModel(pq_scan_ns_per_byte=ns_per_byte))
        return _ivfpq(1_000_000, 512, 64, False, 4096, 262144, 200, config)["latency_ms"]

    assert latency(2.0) - latency(1.0) == pytest.approx(16 * 1_000_000 / 4096 * 64 * 1e-6, rel=1e-9)


def test_plain_ivfpq_when_opq_training_would_break_the_build_budget():
    choice = choose_index(1_000_000, 512, IndexConfig(budget=IndexBudget(bytes_per_vector=100),
                                                      cost=CostModel(opq_train_s_per_mdim=100)))
    assert choice.factory == "IVF4096,PQ64"
    assert choice.reason == ("exact and graph indexes exceed the budget; PQ64 is the largest code within "
                             "100 B/vector; OPQ would exceed the build budget")


def test_the_training_sample_is_at_least_65536_points():
    choice = choose_index(100_000, 512, IndexConfig(budget=IndexBudget(small_index_bytes=0),
                                                    ivf_train_points_per_list=1))
    assert choice.kind == "ivfpq" and choice.train_size == 65536


@pytest.mark.parametrize(("n", "m", "estimates"), [
    (50_000, 32, {"bytes_per_vector": 788.8, "latency_ms": 0.18944322187642423, "build_s": 4.195284579470765}),
    (30_000, 16, {"bytes_per_vector": 654.4, "latency_ms": 0.09024959453272355, "build_s": 2.398329558564647}),
])
def test_hnsw_when_exact_search_is_too_slow(n, m, estimates):
    choice = choose_index(n, 128, IndexConfig(budget=IndexBudget(latency_ms=0.5), hnsw_m=m))
    assert (choice.factory, choice.kind, choice.within_budget) == (f"HNSW{m}", "hnsw", True)
    assert choice.reason == "exact search too slow; a graph over full vectors fits RAM and build budgets"
    assert choice.search_param == "efSearch" and choice.search_values == (16, 32, 64, 128, 256, 512)
    assert choice.train_size == 0
    assert choice.estimates == pytest.approx(estimates, rel=1e-12)
    assert choice.rejected[0]["estimates"]["bytes_per_vector"] == 4.0 * 128
    assert [(r["factory"], r["why"]) for r in choice.rejected] == [
        ("Flat", [f"latency ~{2.0 * n * 128 / 5.4e6:.2f} ms > 0.5 ms"])]


def test_opq_ivfpq_at_one_million_with_its_figures_and_rejections():
    choice = _choose(1_000_000, 512)
    assert (choice.factory, choice.kind, choice.within_budget) == ("OPQ64_256,IVF4096,PQ64", "ivfpq", True)
    assert choice.reason == ("exact and graph indexes exceed the budget; PQ64 is the largest code within "
                             "80 B/vector, OPQ training fits the build budget")
    assert choice.search_param == "nprobe" and choice.search_values == NPROBES and choice.train_size == 262144
    assert choice.estimates == pytest.approx({"bytes_per_vector": 76.98073600000001,
                                              "latency_ms": 1.114648888888889, "build_s": 174.02319816145453,
                                              "reduced_dim": 256.0}, rel=1e-12)
    assert [(r["factory"], r["why"]) for r in choice.rejected[:3]] == [
        ("Flat", ["RAM 1953.1 MiB > 76.3 MiB", "latency ~189.63 ms > 2.0 ms"]),
        ("HNSW32", ["RAM 2217.1 MiB > 76.3 MiB", "build ~429 s > 300 s"]),
        ("OPQ128,IVF4096,PQ128", ["RAM 139.2 MiB > 76.3 MiB", "latency ~2.14 ms > 2.0 ms", "build ~314 s > 300 s"]),
    ]
    assert [r["factory"] for r in choice.rejected[3:]] == ["IVF4096,PQ128"]
    assert choice.rejected[3]["estimates"]["reduced_dim"] == 512.0


def test_ivfpq_figures_without_opq_and_with_gpu_training():
    from indexer.index.index_select import _ivfpq

    config = IndexConfig()
    assert _ivfpq(1_000_000, 512, 64, False, 4096, 262144, 200, config) == pytest.approx(
        {"bytes_per_vector": 80.912896, "latency_ms": 1.8913718518518519, "build_s": 280.9375323229091,
         "reduced_dim": 512.0}, rel=1e-12)
    gpu = IndexConfig(cost=CostModel(gpu=True))
    assert _ivfpq(1_000_000, 512, 64, True, 4096, 262144, 200, gpu)["build_s"] == pytest.approx(
        79.06537576261817, rel=1e-12)


def test_a_small_corpus_gets_fewer_lists_and_probes():
    choice = _choose(10_000, 64, bytes_per_vector=40, small_index_bytes=0)
    assert choice.factory == "OPQ16,IVF256,PQ16" and choice.train_size == 10_000
    assert choice.search_values == NPROBES[:-1]
    assert choice.reason == ("exact and graph indexes exceed the budget; PQ16 is the largest code within "
                             "40 B/vector, OPQ training fits the build budget")
    assert choice.estimates == pytest.approx({"bytes_per_vector": 38.745599999999996,
                                              "latency_ms": 0.16789925925925925, "build_s": 1.3514938181818181,
                                              "reduced_dim": 64.0}, rel=1e-12)
    assert [(r["factory"], r["why"]) for r in choice.rejected] == [
        ("Flat", ["RAM 2.4 MiB > 0.4 MiB"]), ("HNSW32", ["RAM 5.1 MiB > 0.4 MiB"])]


def test_fallback_reasons_name_what_breaks():
    few = _choose(5000, 512, latency_ms=0.01)
    assert (few.factory, few.within_budget) == ("Flat", False)
    assert few.reason == ("no index fits the budget and 5000 vectors are too few to train a quantizer; exact "
                          "search is the fallback")
    assert (few.search_param, few.search_values, few.train_size, few.estimates) == (None, (), 0, few.rejected[0][
        "estimates"])
    assert [(r["factory"], r["why"]) for r in few.rejected] == [
        ("Flat", ["latency ~0.95 ms > 0.01 ms"]), ("HNSW32", ["latency ~0.60 ms > 0.01 ms"])]
    slow = _choose(1_000_000, 512, build_seconds=1)
    assert (slow.factory, slow.within_budget) == ("OPQ64_256,IVF4096,PQ64", False)
    assert slow.reason == ("nothing meets every budget; OPQ64_256,IVF4096,PQ64 is the best code that fits RAM, "
                           "but build ~174 s > 1 s")
    assert slow.search_values == NPROBES and slow.train_size == 262144 and len(slow.rejected) == 12
    assert (slow.kind, slow.search_param, slow.inputs["n"]) == ("ivfpq", "nprobe", 1_000_000)
    assert slow.estimates == slow.rejected[4]["estimates"]
    both = choose_index(1_000_000, 512, IndexConfig(budget=IndexBudget(build_seconds=1, latency_ms=0.5)))
    assert both.reason.endswith("fits RAM, but latency ~1.11 ms > 0.5 ms; build ~174 s > 1 s")
    tiny = _choose(2_000_000, 512, bytes_per_vector=4, small_index_bytes=0)
    assert (tiny.factory, tiny.within_budget) == ("OPQ8_32,IVF4096,PQ8", False)
    assert tiny.reason == "nothing fits the RAM budget; OPQ8_32,IVF4096,PQ8 is the smallest index"
    assert tiny.estimates == tiny.rejected[-2]["estimates"] and tiny.search_values == NPROBES
    assert (tiny.kind, tiny.search_param, tiny.train_size) == ("ivfpq", "nprobe", 262144)



def test_the_over_time_fallback_takes_a_code_whose_ram_equals_the_allowance_and_rejections_keep_estimates():
    slow = _choose(1_000_000, 512, build_seconds=1)
    edge = _choose(1_000_000, 512, build_seconds=1, small_index_bytes=0,
                   bytes_per_vector=slow.estimates["bytes_per_vector"])  # RAM exactly at the allowance fits
    assert (edge.factory, edge.within_budget, edge.estimates) == (slow.factory, False, slow.estimates)
    hnsw = slow.rejected[1]
    assert hnsw["factory"] == "HNSW32" and hnsw["estimates"]["bytes_per_vector"] > slow.estimates["bytes_per_vector"]
    assert all(set(r) == {"factory", "why", "estimates"} for r in slow.rejected)

def test_ram_allowance_is_the_larger_of_per_vector_and_small_index():
    budget = IndexBudget(bytes_per_vector=10, small_index_bytes=1000)
    assert budget.ram_allowance(50) == 1000.0 and budget.ram_allowance(101) == 1010.0


@pytest.mark.parametrize(("n", "expected"), [(0, 16), (1, 16), (16_000, 256), (40 * 512, 512), (39 * 512, 512),
                                             (39 * 512 - 1, 256), (10**12, 65536)])
def test_ivf_nlist_bounds(n, expected):
    assert ivf_nlist(n) == expected


@pytest.mark.parametrize(("n", "d"), [(0, 8), (8, 0), (-1, 8)])
def test_empty_or_dimensionless_input_is_refused(n, d):
    with pytest.raises(ValueError, match=f"n={n}, d={d}"):
        choose_index(n, d)


def test_config_round_trip_and_refusals(tmp_path):
    config = IndexConfig.from_dict({"budget": {"latency_ms": 1.0}, "cost": {"cores": 4},
                                    "rerank_candidates": ["10", 20], "keep_versions": 1})
    assert config.budget.latency_ms == 1.0 and config.cost.cores == 4 and config.rerank_candidates == (10, 20)
    assert IndexConfig.from_dict(config.to_dict() | {"rerank_candidates": [10, 20]}) == config
    assert IndexConfig.from_dict(None) == IndexConfig() == IndexConfig.from_dict({"budget": None, "cost": None})
    with pytest.raises(ValueError, match=r"unknown index config keys: \['a', 'b'\]"):
        IndexConfig.from_dict({"b": 1, "a": 2})
    with pytest.raises(ValueError, match=r"^keep_versions must be at least 1 \(the current version is never pruned\)$"):
        IndexConfig.from_dict({"keep_versions": 0})
    for text, message in (("index: [1, 2]", "`index` must be a mapping"), ("- 1", "expected a mapping"),
                          ("a: [", "not valid YAML")):
        path = tmp_path / "index.yaml"
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            IndexConfig.load(path)
    path = tmp_path / "index.yaml"
    path.write_text("")
    assert IndexConfig.load(path) == IndexConfig()
    path.write_text("keep_versions: 2\n")
    assert IndexConfig.load(path).keep_versions == 2
    path.write_text("index:\n  keep_versions: 5\nother: 1\n")
    assert IndexConfig.load(path).keep_versions == 5
