"""Choosing the FAISS index: a pure function of corpus size, dimension, budget and machine figures.

In the manner of autofaiss, `choose_index` returns the factory string together with the inputs, the estimates
behind it and the reason, all of which are written into the manifest beside the index. Preference order:

1. Flat (exact) while it fits the RAM budget and its scan fits the latency budget;
2. HNSW32 (graph over full vectors) while it fits RAM and its build fits the build budget;
3. IVF-PQ, with the largest PQ code that fits the per-vector RAM budget, OPQ in front when its training fits
   the build budget. OPQ rotates to D = 4*M dimensions (faiss' recommended OPQ{M}_{4M} shape), which also
   halves the coarse centroids' cost at D=512, M=64.

Estimates are deliberately simple (flops over measured throughputs, bytes from the codes' layout); the build
then tunes search parameters and measures real recall, which is what the manifest reports as the truth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CostModel", "IndexBudget", "IndexChoice", "IndexConfig", "choose_index", "ivf_nlist", "read_index_yaml"]

MiB = 1 << 20
_PQ_M_CHOICES = (128, 96, 64, 48, 32, 24, 16, 8)
_MIN_QUANTIZED = 10_000  # fewer vectors cannot train 256-centroid PQ codebooks well
_ID_BYTES = 8  # IVF inverted lists store one int64 label per vector


@dataclass(frozen=True)
class IndexBudget:
    """What an index may cost. RAM is the index itself: float16 rerank vectors are memory-mapped from disk.

    The RAM allowance is max(bytes_per_vector * n, small_index_bytes): a 20 MB exact index is cheap, the
    per-vector figure is what matters at scale.
    """

    bytes_per_vector: float = 80.0
    small_index_bytes: int = 64 * MiB
    latency_ms: float = 2.0          # p50, single thread, ANN + exact rerank
    build_seconds: float = 300.0
    target_recall: float = 0.99      # recall@10 after exact rerank, against exact search

    def ram_allowance(self, n: int) -> float:
        return max(self.bytes_per_vector * n, float(self.small_index_bytes))


@dataclass(frozen=True)
class CostModel:
    """Throughput figures the estimates divide by. Defaults: the 2-core development machine (the measurements
    behind them: benchmarks/README.md).

    scan_gflops: single-thread brute-force inner product;
    gemm_gflops: all-core batched GEMM (k-means, assignment; numpy/BLAS);
    hnsw_add_us: per vector per dimension, all cores, M=32;
    pq_scan_ns_per_byte: IVF-PQ list scan cost per code byte, single thread;
    opq_train_s_per_mdim: OPQ training seconds per million (train points x dim) at 20 iterations.
    """

    cores: int = 2
    scan_gflops: float = 5.4
    gemm_gflops: float = 55.0
    hnsw_add_us: float = 0.6
    pq_scan_ns_per_byte: float = 1.0
    opq_train_s_per_mdim: float = 2.0
    gpu: bool = False
    gpu_speedup: float = 20.0


@dataclass(frozen=True)
class IndexConfig:
    """Index build settings (configs/index.yaml): budget, machine figures, tuning and retention."""

    budget: IndexBudget = field(default_factory=IndexBudget)
    cost: CostModel = field(default_factory=CostModel)
    hnsw_m: int = 32
    ivf_train_points_per_list: int = 64
    kmeans_iters: int = 10
    opq_iters: int = 20
    opq_train_points: int = 32768
    rerank_candidates: tuple[int, ...] = (50, 100, 200)
    recall_queries: int = 500
    latency_queries: int = 200
    query_noise: float = 0.3         # L2 norm of the perturbation added to sampled rows to make queries
    use_gpu: bool = True             # use GPU training when faiss-gpu and a device exist
    keep_versions: int = 3
    seed: int = 1234
    factory: str | None = None       # force a factory string (tests, experiments); None = choose_index
    shards: int = 1                  # parts of a published version (search.artifact.shards); 1: unsharded

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> IndexConfig:
        data = dict(data or {})
        budget = IndexBudget(**data.pop("budget", {}) or {})
        cost = CostModel(**data.pop("cost", {}) or {})
        if "rerank_candidates" in data:
            data["rerank_candidates"] = tuple(int(r) for r in data["rerank_candidates"])
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown index config keys: {sorted(unknown)}")
        config = cls(budget=budget, cost=cost, **data)
        if config.shards < 1:
            raise ValueError("shards must be at least 1")
        if config.keep_versions < 1:
            raise ValueError("keep_versions must be at least 1 (the current version is never pruned)")
        return config

    @classmethod
    def load(cls, path: str | Path) -> IndexConfig:
        return cls.from_dict(read_index_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_index_yaml(path: str | Path) -> dict[str, Any]:
    """The index build settings in an index config file (configs/index.yaml): its `index:` mapping, or the
    whole file when it has none. The one reader: `IndexConfig.load` and `IndexerSettings.index_options` use it.
    OSError when the file cannot be read, ValueError when it is not such a mapping."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    section = data.get("index", data)
    if not isinstance(section, dict):
        raise ValueError(f"{path}: `index` must be a mapping of settings")
    return dict(section)


@dataclass(frozen=True)
class IndexChoice:
    """The chosen factory string and everything that led to it (goes into the manifest as `selection`)."""

    factory: str
    kind: str                         # "flat" | "hnsw" | "ivfpq"
    reason: str
    search_param: str | None          # "nprobe" | "efSearch" | None
    search_values: tuple[int, ...]    # grid the build tunes over, cheapest first
    train_size: int
    estimates: dict[str, float]
    inputs: dict[str, Any]
    rejected: list[dict[str, Any]] = field(default_factory=list)
    within_budget: bool = True        # False: a fallback that breaks some budget (the reason says which)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ivf_nlist(n: int) -> int:
    """Power of two near 4*sqrt(n), kept to >= 39 training points per list (faiss' minimum) and <= 65536."""
    target = 4.0 * math.sqrt(max(n, 1))
    nlist = 2 ** max(4, round(math.log2(target)))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return int(min(nlist, 65536))


def _flat(n: int, d: int, cost: CostModel) -> dict[str, float]:
    return {"bytes_per_vector": 4.0 * d, "latency_ms": 2.0 * n * d / (cost.scan_gflops * 1e6), "build_s": 0.0}


def _hnsw(n: int, d: int, m: int, cost: CostModel) -> dict[str, float]:
    links = 2 * m * 4 * 1.05 + 8  # level-0 links (2M int32), upper levels ~5%, level pointers
    evals = 8 * m * math.log2(max(n, 2))  # distance evaluations per query, efSearch ~ 64-128
    build = n * d * cost.hnsw_add_us * 1e-6 * math.log2(max(n, 2)) / math.log2(20000)
    return {"bytes_per_vector": 4.0 * d + links,
            "latency_ms": 2.0 * evals * d / (cost.scan_gflops * 1e6),
            "build_s": build}


def _ivfpq(n: int, d: int, m: int, opq: bool, nlist: int, train: int, rerank: int,
           config: IndexConfig) -> dict[str, float]:
    cost = config.cost
    dd = min(d, 4 * m) if opq else d
    fixed = nlist * dd * 4 + 256 * dd * 4 + (d * dd * 4 if opq else 0)
    gemm = cost.gemm_gflops * 1e9
    kmeans = 2.0 * train * nlist * dd * config.kmeans_iters / (gemm * (cost.gpu_speedup if cost.gpu else 1.0))
    assign = 2.0 * n * (nlist + 256) * dd / gemm
    opq_train = (cost.opq_train_s_per_mdim * min(train, config.opq_train_points) * d / 1e6
                 * config.opq_iters / 20) if opq else 0.0
    nprobe = 16
    scanned = nprobe * n / nlist
    latency = (2.0 * nlist * dd + 2.0 * nprobe * 256 * dd) / (cost.scan_gflops * 1e6) \
        + scanned * m * cost.pq_scan_ns_per_byte * 1e-6 \
        + 2.0 * rerank * d / (cost.scan_gflops * 1e6) + 0.05
    return {"bytes_per_vector": m + _ID_BYTES + fixed / max(n, 1), "latency_ms": latency,
            "build_s": kmeans + assign + opq_train, "reduced_dim": float(dd)}


def choose_index(n: int, d: int, config: IndexConfig | None = None) -> IndexChoice:
    """Pure: pick the index for n vectors of dimension d under config.budget, with figures and reason."""
    if n < 1 or d < 1:
        raise ValueError(f"need at least one vector of positive dimension, got n={n}, d={d}")
    config = config or IndexConfig()
    budget, cost = config.budget, config.cost
    allowance = budget.ram_allowance(n)
    inputs = {"n": n, "d": d, "budget": asdict(budget), "cost": asdict(cost), "ram_allowance_bytes": allowance,
              "hnsw_m": config.hnsw_m}
    rejected: list[dict[str, Any]] = []

    def fits(est: dict[str, float], check_latency: bool = True) -> list[str]:
        why = []
        if est["bytes_per_vector"] * n > allowance:
            why.append(f"RAM {est['bytes_per_vector'] * n / MiB:.1f} MiB > {allowance / MiB:.1f} MiB")
        if check_latency and est["latency_ms"] > budget.latency_ms:
            why.append(f"latency ~{est['latency_ms']:.2f} ms > {budget.latency_ms} ms")
        if est["build_s"] > budget.build_seconds:
            why.append(f"build ~{est['build_s']:.0f} s > {budget.build_seconds:.0f} s")
        return why

    flat = _flat(n, d, cost)
    why = fits(flat)
    if not why:
        return IndexChoice("Flat", "flat", "exact search fits the RAM and latency budgets", None, (), 0,
                           flat, inputs, rejected)
    rejected.append({"factory": "Flat", "why": why, "estimates": flat})

    hnsw = _hnsw(n, d, config.hnsw_m, cost)
    why = fits(hnsw)
    if not why:
        return IndexChoice(f"HNSW{config.hnsw_m}", "hnsw",
                           "exact search too slow; a graph over full vectors fits RAM and build budgets",
                           "efSearch", (16, 32, 64, 128, 256, 512), 0, hnsw, inputs, rejected)
    rejected.append({"factory": f"HNSW{config.hnsw_m}", "why": why, "estimates": hnsw})

    nlist = ivf_nlist(n)
    train = min(n, max(config.ivf_train_points_per_list * nlist, 65536))
    if n < _MIN_QUANTIZED:
        return IndexChoice("Flat", "flat", f"no index fits the budget and {n} vectors are too few to train a "
                           "quantizer; exact search is the fallback", None, (), 0, flat, inputs, rejected,
                           within_budget=False)
    rerank = max(config.rerank_candidates)
    nprobes = tuple(p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p <= nlist)
    over_time: tuple[str, dict[str, float], list[str], int] | None = None
    # sub-vectors of >= 4 dims: faiss PQ/OPQ training on 2-dim sub-spaces is pathologically slow (many times the
    # build time at d=128, benchmarks/README.md), and such codes gain little over 4-dim ones
    for m in (m for m in _PQ_M_CHOICES if d % m == 0 and m <= d // 4):
        for opq in (True, False):
            est = _ivfpq(n, d, m, opq, nlist, train, rerank, config)
            factory = _ivfpq_factory(d, m, opq, nlist)
            why = fits(est)
            if not why:
                reason = (f"exact and graph indexes exceed the budget; PQ{m} is the largest code within "
                          f"{allowance / n:.0f} B/vector" + (", OPQ training fits the build budget" if opq
                                                             else "; OPQ would exceed the build budget"))
                return IndexChoice(factory, "ivfpq", reason, "nprobe", nprobes, train, est, inputs, rejected)
            rejected.append({"factory": factory, "why": why, "estimates": est})
            if over_time is None and est["bytes_per_vector"] * n <= allowance:
                over_time = (factory, est, why, m)
    if over_time is not None:
        factory, est, why, m = over_time
        return IndexChoice(factory, "ivfpq", f"nothing meets every budget; {factory} is the best code that fits "
                           f"RAM, but {'; '.join(why)}", "nprobe", nprobes, train, est, inputs, rejected,
                           within_budget=False)
    smallest = min((r for r in rejected if r["factory"].endswith(tuple(f"PQ{m}" for m in _PQ_M_CHOICES))),
                   key=lambda r: r["estimates"]["bytes_per_vector"])
    return IndexChoice(smallest["factory"], "ivfpq", f"nothing fits the RAM budget; {smallest['factory']} is "
                       "the smallest index", "nprobe", nprobes, train, smallest["estimates"], inputs, rejected,
                       within_budget=False)


def _ivfpq_factory(d: int, m: int, opq: bool, nlist: int) -> str:
    if not opq:
        return f"IVF{nlist},PQ{m}"
    dd = min(d, 4 * m)
    pre = f"OPQ{m}_{dd}" if dd != d else f"OPQ{m}"
    return f"{pre},IVF{nlist},PQ{m}"
