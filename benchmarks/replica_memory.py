"""Memory of extra replicas of one shard on one node: N processes (1, 2, 4) each `open_shard` the same part and
answer queries; the FAISS index is memory-mapped (search.artifact.ann.read_index) like the rerank vectors and
ids, so the replicas should share one page-cache copy. Same-run baseline: the same processes with the index read
into the heap (`faiss.read_index` without flags, the reader before the mmap rule).

Per configuration, while all N processes are alive (each has opened the shard, run `--queries` ANN + rerank
queries and one exact search over every stored vector, so every vector page is touched): RssAnon (private),
RssFile and, from /proc/PID/smaps_rollup, Pss / Pss_Anon / Pss_File of each process. The node's memory for N
replicas is the sum of their PSS (shared pages counted once); an extra replica costs
(sum PSS(N) - sum PSS(1)) / (N - 1), reported against the shard's index + vectors bytes (target issue 18:
<= 0.2). `open_anon_mb` is what opening the shard and querying added to a process's private memory (RssAnon
after minus before, the interpreter and imports excluded).

The store (unless `--store`): N clustered D=512 unit vectors (benchmarks/cold_start.py's `clustered_vectors`
and metadata rows) published with the project's publish under the factory the selection picks at that size
(OPQ64_256,IVF2048,PQ64 at 500k), no encoder files (open_shard does not read them).

    nice -n 10 .venv/bin/python benchmarks/replica_memory.py [--n 500000] [--store STORE] [--processes 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_start import clustered_vectors, write_metadata  # noqa: E402
from common import OUT, ROOT, machine  # noqa: E402

MB = 2 ** 20


def build_store(n: int, work: Path) -> Path:
    """A published store of n clustered D=512 vectors under the selection's factory (reused when present)."""
    import numpy as np

    from indexer.index.index_select import IndexConfig
    from indexer.index.publish import publish_version
    from search.artifact.encoder import EncoderIdentity

    store = work / f"store-{n}"
    if (store / "current").exists():
        return store
    store.mkdir(parents=True, exist_ok=True)
    write_metadata(store / "metadata.sqlite", n, store / "images")
    config = IndexConfig.load(ROOT / "configs" / "index.yaml")
    config = IndexConfig.from_dict({**config.to_dict(), "recall_queries": 200, "latency_queries": 50,
                                    "use_gpu": False, "keep_versions": 1})
    identity = EncoderIdentity(model="synthetic", weights="none", checksum="0" * 8, dim=512, context_length=77)
    publish_version(store, np.arange(1, n + 1, dtype=np.int64), clustered_vectors(n, 512),
                    store / "metadata.sqlite", identity, store / "images", config,
                    {"indexed": n, "failed": 0, "deleted": 0}, {})
    return store


def proc_memory(pid: int | str = "self") -> dict[str, float]:
    """RssAnon, RssFile (status) and Pss, Pss_Anon, Pss_File (smaps_rollup, where the kernel has it), in MB."""
    out: dict[str, float] = {}
    for name, keys in (("status", ("RssAnon", "RssFile")), ("smaps_rollup", ("Pss", "Pss_Anon", "Pss_File"))):
        try:
            lines = Path(f"/proc/{pid}/{name}").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = round(int(rest.split()[0]) / 1024, 1)
    return out


def worker(version: str, mode: str, queries: int) -> None:
    """One replica: open shard 0 (index mapped or, for `heap`, read into the heap), query, report, wait for
    the parent to close stdin (so that every replica is alive while the parent reads their memory)."""
    import faiss
    import numpy as np

    from search.artifact import ann
    from search.artifact.version import open_shard

    if mode == "heap":
        ann.read_index = lambda path: faiss.read_index(os.fspath(path))
    before = proc_memory()
    start = time.perf_counter()
    part = open_shard(version, 0)
    open_s = time.perf_counter() - start
    rng = np.random.default_rng(os.getpid())
    rows = rng.integers(0, part.count, queries)
    q = np.asarray(part.vectors[np.sort(rows)], dtype=np.float32)
    start = time.perf_counter()
    part.search(q, 10)
    search_s = time.perf_counter() - start
    part.exact_search(q[:1], 10)  # touches every vector page: the worst case for a replica's mapped pages
    after = proc_memory()
    print(json.dumps({"pid": os.getpid(), "open_s": round(open_s, 3), "search_ms_per_query":
                      round(1000 * search_s / max(queries, 1), 2),
                      "open_anon_mb": round(after["RssAnon"] - before["RssAnon"], 1),
                      "interpreter_anon_mb": before["RssAnon"]}), flush=True)
    sys.stdin.read()
    part.close()


def run_replicas(version: Path, mode: str, count: int, queries: int) -> dict[str, Any]:
    """Start `count` replicas, wait for each to report, read every one's memory while all are alive."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(version), "--mode", mode,
                               "--queries", str(queries)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(count)]
    reports = []
    for p in procs:
        line = p.stdout.readline() if p.stdout else ""
        if not line:
            raise RuntimeError(f"replica {p.pid} exited {p.wait()} before reporting")
        reports.append(json.loads(line))
    for p, report in zip(procs, reports, strict=True):
        report.update(proc_memory(p.pid))
    for p in procs:
        if p.stdin:
            p.stdin.close()
        p.wait()
    total = {key: round(sum(r.get(key, 0.0) for r in reports), 1) for key in ("Pss", "RssAnon", "RssFile")}
    return {"mode": mode, "processes": count, "sum_mb": total, "replicas": reports}


def summarise(runs: list[dict[str, Any]], shard_mb: float) -> dict[str, Any]:
    """Per mode: an extra replica's cost from the PSS sums, its ratio to the shard's index + vectors."""
    out: dict[str, Any] = {}
    for mode in sorted({r["mode"] for r in runs}):
        one = next(r for r in runs if r["mode"] == mode and r["processes"] == 1)
        rows = {}
        for r in runs:
            if r["mode"] != mode or r["processes"] == 1:
                continue
            extra = (r["sum_mb"]["Pss"] - one["sum_mb"]["Pss"]) / (r["processes"] - 1)
            open_anon = sum(x["open_anon_mb"] for x in r["replicas"]) / r["processes"]
            rows[str(r["processes"])] = {"extra_replica_pss_mb": round(extra, 1),
                                         "ratio_to_index_plus_vectors": round(extra / shard_mb, 3),
                                         "open_anon_mb_per_replica": round(open_anon, 1),
                                         "open_anon_ratio": round(open_anon / shard_mb, 3)}
        out[mode] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--store", type=Path, help="an existing store (its current version's shard 0)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--work", type=Path, default=OUT / "replica_memory")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("mmap", "heap"), default="mmap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.mode, args.queries)
        return
    from search.artifact.manifest import read_manifest
    from search.artifact.version import current_path

    start = time.perf_counter()
    store = args.store or build_store(args.n, args.work)
    build_s = time.perf_counter() - start
    version = current_path(store)
    manifest = read_manifest(version)
    part_dir = version / manifest.shards[0].dir if manifest.shards else version
    sizes = {name: (part_dir / name).stat().st_size for name in ("index.faiss", "vectors.f16.npy")}
    shard_mb = sum(sizes.values()) / MB
    counts = sorted(set(args.processes) | {1})
    runs = [run_replicas(version, mode, c, args.queries) for mode in ("mmap", "heap") for c in counts]
    factory = (manifest.shards[0].index if manifest.shards else manifest.index).factory
    print(json.dumps({"store": str(store), "version": version.name, "factory": factory,
                      "vectors": manifest.shards[0].vectors if manifest.shards else manifest.counts["vectors"],
                      "store_s": round(build_s, 1),
                      "shard_mb": {**{k: round(v / MB, 1) for k, v in sizes.items()}, "total": round(shard_mb, 1)},
                      "target": "extra replica on the same node: PSS <= 0.2 x the shard's index + vectors",
                      "summary": summarise(runs, shard_mb), "runs": runs, "machine": machine()}, indent=2))


if __name__ == "__main__":
    main()
