"""The index choice is a pure function of corpus size, dimension and budget (autofaiss-style figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.index.index_select import IndexBudget, IndexConfig, choose_index, ivf_nlist

REPO = Path(__file__).resolve().parents[1]


def config(**budget) -> IndexConfig:
    return IndexConfig(budget=IndexBudget(**budget))


@pytest.mark.parametrize(
    "n, d, budget, kind",
    [
        (100, 512, {}, "flat"),
        (5_000, 512, {}, "flat"),
        (10_000, 512, {}, "flat"),
        (30_000, 128, {}, "flat"),                            # small vectors: exact scan still fast
        (15_000, 512, {}, "hnsw"),                            # too slow to scan, graph fits 64 MiB
        (50_000, 512, {}, "ivfpq"),                           # graph exceeds RAM
        (50_000, 512, {"small_index_bytes": 1 << 30}, "hnsw"),  # ...unless RAM is plentiful
        (200_000, 512, {}, "ivfpq"),
        (1_000_000, 512, {}, "ivfpq"),
        (1_000_000, 768, {}, "ivfpq"),
        (5_000, 512, {"latency_ms": 0.01}, "flat"),           # too small to quantize: exact fallback
        (20_000, 512, {"bytes_per_vector": 4, "small_index_bytes": 0}, "ivfpq"),  # smallest code fallback
        (100_000, 512, {"latency_ms": 100.0, "small_index_bytes": 1 << 30}, "flat"),
    ],
)
def test_choice_over_sizes_and_budgets(n: int, d: int, budget: dict, kind: str) -> None:
    choice = choose_index(n, d, config(**budget))
    assert choice.kind == kind, choice.reason
    assert choice.reason
    assert choice.inputs["n"] == n and choice.inputs["d"] == d
    json.dumps(choice.to_dict())  # the figures go into the manifest as JSON
    if choice.within_budget:
        b = config(**budget).budget
        assert choice.estimates["bytes_per_vector"] * n <= b.ram_allowance(n)
        assert choice.estimates["latency_ms"] <= b.latency_ms
        assert choice.estimates["build_s"] <= b.build_seconds


@pytest.mark.parametrize("n", [100_000, 1_000_000])
@pytest.mark.parametrize("d", [64, 128, 256, 512, 768])
def test_pq_sub_vectors_have_at_least_four_dims(n: int, d: int) -> None:
    # no room for a graph, so every case is an IVF-PQ choice (with the default budget 100k x 64 picks HNSW and
    # such a case would check nothing)
    choice = choose_index(n, d, config(small_index_bytes=0))
    assert choice.kind == "ivfpq", choice.factory
    m = int(choice.factory.rsplit("PQ", 1)[1])
    assert choice.estimates["reduced_dim"] / m >= 4, choice.factory


def test_default_budget_lands_on_a_compact_opq_index_at_one_million() -> None:
    choice = choose_index(1_000_000, 512, IndexConfig())
    assert choice.factory == "OPQ64_256,IVF4096,PQ64"
    assert choice.estimates["bytes_per_vector"] <= 80
    assert choice.estimates["build_s"] <= 300
    assert choice.search_param == "nprobe" and 16 in choice.search_values
    assert any(r["factory"] == "Flat" for r in choice.rejected)


@pytest.mark.parametrize("n", [20_000, 200_000, 1_000_000, 5_000_000])
@pytest.mark.parametrize("d", [256, 512])
def test_more_memory_never_buys_a_smaller_code(n: int, d: int) -> None:
    def code_bytes(bpv: float) -> float:
        c = choose_index(n, d, config(bytes_per_vector=bpv, small_index_bytes=0, build_seconds=1e9))
        return c.estimates["bytes_per_vector"]

    sizes = [code_bytes(b) for b in (24, 48, 80, 160, 320)]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("n, budget, within", [
    (1_000_000, {}, True),
    (5_000, {"latency_ms": 0.01}, False),
    (20_000, {"bytes_per_vector": 4, "small_index_bytes": 0}, False),
    (10_000_000, {}, False),
])
def test_fallbacks_say_they_break_the_budget(n: int, budget: dict, within: bool) -> None:
    choice = choose_index(n, 512, config(**budget))
    assert choice.within_budget is within
    if not within:
        assert choice.reason.startswith(("no index", "nothing"))


def test_pure_same_inputs_same_choice() -> None:
    assert choose_index(300_000, 512, IndexConfig()) == choose_index(300_000, 512, IndexConfig())


def test_build_budget_drops_opq_first() -> None:
    roomy = choose_index(1_000_000, 512, config(build_seconds=300))
    tight = choose_index(1_000_000, 512, config(build_seconds=120))
    assert roomy.factory.startswith("OPQ")
    assert tight.estimates["build_s"] <= 120
    assert tight.factory != roomy.factory


@pytest.mark.parametrize("n, expected", [(1_000, 16), (10_000, 256), (100_000, 1024), (1_000_000, 4096),
                                         (100_000_000, 32768)])
def test_ivf_nlist(n: int, expected: int) -> None:
    assert ivf_nlist(n) == expected
    assert n >= 39 * ivf_nlist(n) or ivf_nlist(n) == 16


def test_rejects_empty_input() -> None:
    with pytest.raises(ValueError):
        choose_index(0, 512)


def test_config_loads_from_yaml_and_rejects_unknown_keys(tmp_path: Path) -> None:
    cfg = IndexConfig.load(REPO / "configs" / "index.yaml")
    assert cfg.budget.bytes_per_vector == 80 and cfg.keep_versions >= 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("index:\n  nprobe_everywhere: 3\n")
    with pytest.raises(ValueError, match="nprobe_everywhere"):
        IndexConfig.load(bad)
    with pytest.raises(ValueError, match="keep_versions"):
        IndexConfig.from_dict({"keep_versions": 0})
    with pytest.raises(ValueError, match="^shards must be at least 1$"):
        IndexConfig.from_dict({"shards": 0})
