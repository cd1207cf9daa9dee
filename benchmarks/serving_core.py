"""Serving core in the production shape: a ViT-B-32 (random init) service over the 1M-vector store of
`serving_store.py`, driven by wrk with distinct mixed-length queries (3-20 tokens), at 1 and 16 connections,
batching on/off, pool on/off (two CPU sessions), phase fast/full, plus cache hits (with and without the result-page
cache). Beside each in-service stage
(mean of the service's own photostock_stage_seconds over the run) the bare component measured in the same run:
the bare ONNX session encode of the same kind of queries, and the bare artifact ann + exact rerank. Also the
fast-phase top-10 overlap with the full top-10, and (--profile) a py-spy profile of the server under load.

    .venv/bin/python benchmarks/serving_core.py [--n 1000000] [--vectors clustered|isotropic] [--duration 10]
        [--profile] [--only RUN ...]
`--only` runs the named runs alone (short checks; each run then shows its ANN + rerank over the bare call).
`targets` prints each target of the serving-core issue beside its baseline from the same run; `--profile`
records where the event loop's and each thread's CPU goes under 16-connection misses (benchmarks/cpu_profile.py).
Prints one JSON object (also written to benchmarks/out/serving_core.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, report_json  # noqa: E402
from cpu_profile import profile_process  # noqa: E402
from serving_store import build, text_encoder  # noqa: E402

from tests.service_support import running_server  # noqa: E402

WORDS = ("a the red blue green small large dog cat house tree car street beach night city old young woman man "
         "child running sitting on in with under near sunset mountain river snow winter summer photo of two "
         "black white bright dark view field flowers bridge boat sky cloudy market people food table").split()

# wrk Lua: every request a new query of 1..18 words (3-20 tokens with start/end), or (hit) one fixed query.
LUA = r"""
local words = {WORDS_LIST}
local counter = 0
local mode = os.getenv("PHOTOSTOCK_MODE") or "miss"
local phase = os.getenv("PHOTOSTOCK_PHASE") or "full"
math.randomseed(tonumber(os.getenv("PHOTOSTOCK_SEED") or "1"))
request = function()
  counter = counter + 1
  local q = "a large orange square on a sand background"
  if mode == "miss" then
    local n = math.random(1, 17)
    local parts = {}
    for i = 1, n do parts[i] = words[math.random(1, #words)] end
    parts[n + 1] = tostring(counter)
    q = table.concat(parts, " ")
  end
  return wrk.format("GET", "/search?k=10&phase=" .. phase .. "&q=" .. q:gsub(" ", "%%20"))
end
done = function(summary, latency, requests)
  io.write(string.format(
    'JSON {"requests": %d, "seconds": %.3f, "errors": %d, "non2xx": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
""".replace("WORDS_LIST", ", ".join(f'"{w}"' for w in WORDS))


def wrk(url: str, script: Path, duration: int, connections: int, mode: str, phase: str, seed: int) -> dict[str, Any]:
    env = {**os.environ, "PHOTOSTOCK_MODE": mode, "PHOTOSTOCK_PHASE": phase, "PHOTOSTOCK_SEED": str(seed)}
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s",
                           str(script), url], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stdout}\n{done.stderr}")
    stats: dict[str, Any] = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("JSON "))[5:])
    stats["qps"] = round(stats["requests"] / stats["seconds"], 1)
    return stats


def scrape(url: str) -> list[Any]:
    """Every sample the service's /metrics shows now (one request for all the figures taken at a point)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=30).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def stage_sums(samples: list[Any]) -> dict[str, tuple[float, float]]:
    """(seconds, count) per stage of photostock_stage_seconds."""
    out: dict[str, tuple[float, float]] = {}
    for s in samples:
        if s.name.startswith("photostock_stage_seconds"):
            stage = s.labels.get("stage", "")
            total, count = out.get(stage, (0.0, 0.0))
            if s.name.endswith("_sum"):
                out[stage] = (s.value, count)
            elif s.name.endswith("_count"):
                out[stage] = (total, s.value)
    return out


def stage_means_ms(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    means = {}
    for stage, (total, count) in after.items():
        t0, c0 = before.get(stage, (0.0, 0.0))
        if count > c0:
            means[stage] = round((total - t0) / (count - c0) * 1000, 3)
    return means


def queries(n: int, seed: int) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 18)))) + f" {i}" for i in range(n)]


def bare_components(store: Path, precision: str, runs: int, params: dict[str, int] | None = None) -> dict[str, Any]:
    """The bare session encode (one query at a time, and 16 at once per query) and the bare ann + rerank, with
    the store's own encoder files (the text tower of the service's precision)."""
    import numpy as np

    from search.artifact.version import open_current
    from search.runtime.threads import configure_process, resolve_budget

    configure_process(resolve_budget())  # the service's default budget
    text = text_encoder(store, precision)
    qs = queries(runs, 99)
    toks = [text.tokenize([q]) for q in qs]
    for t in toks[:5]:
        text.encode_token_ids(t)
    one = []
    for t in toks:
        start = time.perf_counter()
        text.encode_token_ids(t)
        one.append(time.perf_counter() - start)
    batch = text.tokenize(qs[:16])
    sixteen = []
    for _ in range(max(3, runs // 16)):
        start = time.perf_counter()
        text.encode_token_ids(batch)
        sixteen.append((time.perf_counter() - start) / 16)
    vectors = np.concatenate([text.encode_token_ids(t) for t in toks[:50]])
    with open_current(store) as artifact:
        for v in vectors[:5]:
            artifact.search(v[None], 40, params)
        ann = []
        for v in vectors:
            start = time.perf_counter()
            artifact.search(v[None], 40, params)  # the service fetches max(rerank_candidates, 4 x k), reranks
            ann.append(time.perf_counter() - start)
        paced = []  # one request's sequence without HTTP or service: encode, then ann + rerank of its vector
        for t in toks:
            start = time.perf_counter()
            v = text.encode_token_ids(t)
            paced.append(time.perf_counter() - start)
            artifact.search(v, 40, params)
        probe = vectors[:20]  # recall@10 of ann + rerank at these params against exact search (text queries)
        found = artifact.search(probe, 10, params).ids
        truth = artifact.exact_search(probe, 10)[1]
        recall = statistics.mean(len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True))
    pool_minus_bare = pool_overhead(text, qs)
    return {"recall_at_10_vs_exact": round(recall, 3),
            "bare_encode_one_query_p50_ms": round(statistics.median(one) * 1000, 3),
            "bare_encode_one_query_mean_ms": round(statistics.mean(one) * 1000, 3),
            "bare_encode_paced_mean_ms": round(statistics.mean(paced) * 1000, 3),
            "batcher_pool_minus_bare_encode_ms": pool_minus_bare,
            "bare_encode_batch16_per_query_ms": round(statistics.median(sixteen) * 1000, 3),
            "bare_ann_rerank_p50_ms": round(statistics.median(ann) * 1000, 3),
            "bare_ann_rerank_mean_ms": round(statistics.mean(ann) * 1000, 3)}


def pool_overhead(text: Any, qs: list[str]) -> dict[str, float]:
    """The service's encode path without HTTP (MicroBatcher + SessionPool, from an event loop) against the bare
    session call on the same query, interleaved pair by pair so machine drift cancels: p50/mean of the gap."""
    import asyncio

    from search.runtime.batcher import MicroBatcher

    async def pairs() -> list[float]:
        batcher = MicroBatcher(text)
        gaps = []
        try:
            for q in qs[:5]:
                await batcher.encode(q)
            for q in qs:
                start = time.perf_counter()
                text.encode_token_ids(text.tokenize([q]))
                bare = time.perf_counter() - start
                start = time.perf_counter()
                await batcher.encode(q)
                gaps.append(time.perf_counter() - start - bare)
        finally:
            batcher.close()
        return gaps

    gaps = asyncio.run(pairs())
    return {"p50": round(statistics.median(gaps) * 1000, 3), "mean": round(statistics.mean(gaps) * 1000, 3)}


def search_batches(samples: list[Any]) -> tuple[float, float]:
    """(batches, searches) through the search lane (one ANN/rerank/metadata pass per batch)."""
    batches = rows = 0.0
    for sample in samples:
        if sample.name == "photostock_search_batch_size_count":
            batches += sample.value
        elif sample.name == "photostock_search_batch_size_sum":
            rows += sample.value
    return batches, rows


def targets(bare: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    """Each target of the issue beside the baseline it is measured against (same run, same machine)."""
    c1, c16, off = runs["miss_full_c1"], runs["miss_full_c16"], runs["miss_full_c16_no_batching"]
    bound = bare["bare_encode_one_query_p50_ms"] + bare["bare_ann_rerank_p50_ms"] + 1.5
    rows_s = 1000 / bare["bare_encode_batch16_per_query_ms"]
    gain = bare["bare_encode_one_query_mean_ms"] / bare["bare_encode_batch16_per_query_ms"]
    ratio = c16["qps"] / off["qps"]
    return {
        "miss_p50_c1_ms": {"value": c1["p50_ms"], "bound": round(bound, 3), "met": c1["p50_ms"] <= bound,
                           "baseline": "bare one-query encode p50 + bare ANN+rerank p50 + 1.5 ms"},
        "c16_qps": {"value": c16["qps"], "bound": round(0.5 * rows_s, 1), "p99_ms": c16["p99_ms"],
                    "errors": c16["errors"] + c16["non2xx"],
                    "met": c16["qps"] >= 0.5 * rows_s and c16["p99_ms"] <= 100 and c16["errors"] + c16["non2xx"] == 0,
                    "baseline": "0.5 x the bare session's rows/s at batch 16; p99 <= 100 ms; 0 errors"},
        "batched_over_unbatched_qps": {"value": round(ratio, 3), "bound": round(0.8 * gain, 3),
                                       "met": ratio >= 0.8 * gain,
                                       "baseline": "0.8 x the bare session's own batch-16 gain"},
        "hit_p50_ms": {"value": runs["hit_c1"]["p50_ms"], "bound": 1.0, "met": runs["hit_c1"]["p50_ms"] <= 1.0},
        "results_equal_unbatched": "tests/test_search_batch.py",
    }


def pool_rows(samples: list[Any]) -> tuple[float, float, float]:
    """(batches, rows, encode seconds) summed over the pools' members (the full and an fp32 service's fast pool)."""
    batches = rows = seconds = 0.0
    for sample in samples:
        if sample.name.endswith("_pool_batch_size_count"):
            batches += sample.value
        elif sample.name.endswith("_pool_batch_size_sum"):
            rows += sample.value
        elif sample.name.endswith("_pool_encode_seconds_sum"):
            seconds += sample.value
    return batches, rows, seconds


def overlap(url: str, n: int) -> float:
    import httpx

    shares = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for q in queries(n, 7):
            fast = client.get("/search", params={"q": q, "k": 10, "phase": "fast"}).json()["hits"]
            full = client.get("/search", params={"q": q, "k": 10}).json()["hits"]
            shares.append(len({h["id"] for h in fast} & {h["id"] for h in full}) / 10)
    return round(statistics.mean(shares), 3)


def scenario_settings(base: dict[str, Any], batching: bool, pool: bool, pages: bool = True) -> Any:
    from search.settings import Settings

    data = json.loads(json.dumps(base))
    data["batching"] = {"window_ms": 3.0 if batching else 0.0, "max_batch": 32}
    if not pages:  # the result-page cache off: a repeated query runs ANN + rerank on its cached vector
        data["cache"] = {"results_max_mb": 0}
    if pool:  # two CPU sessions with one intra-op thread each, instead of one session with two
        member = {"device": "cpu", "precision": data["runtime"]["text_precision"], "threads": 1}
        data["pool"] = {"members": [member] * 2}
    return Settings.model_validate(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--factory", default="OPQ64_256,IVF4096,PQ64")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--bare-runs", type=int, default=200)
    parser.add_argument("--overlap-queries", type=int, default=50)
    parser.add_argument("--text-precision", choices=("int8", "fp32"), default="int8",
                        help="runtime.text_precision of the service (and of the bare encode)")
    parser.add_argument("--profile", action="store_true",
                        help="per-thread CPU of the batching-on service under 16-connection misses (py-spy + /proc)")
    parser.add_argument("--vectors", choices=("clustered", "isotropic"), default="clustered",
                        help="the store's vectors (serving_store.py); isotropic ones are an IVF worst case")
    parser.add_argument("--nprobe", type=int, default=0,
                        help="rank.ann_params nprobe for service and bare ANN (0: the manifest's tuned value)")
    parser.add_argument("--work", type=Path, default=OUT / "serving")
    parser.add_argument("--only", nargs="+", metavar="RUN",
                        help="only these runs (e.g. hit_c1_no_page_cache miss_full_c1); no ratios or targets then")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    made = build(args.n, args.factory, args.model, args.work, args.vectors)
    store = Path(str(made["store"]))
    tmp = Path(tempfile.mkdtemp(prefix="serving-core-"))
    script = tmp / "queries.lua"
    script.write_text(LUA)
    # no model settings: the service takes its encoder from the store
    base: dict[str, Any] = {"store": str(store), "runtime": {"text_precision": args.text_precision},
                            # no background sha256 of the 1M store's files while measuring (it takes a core)
                            "reload": {"watch": False, "verify_checksums": False}}
    ann_params = {"nprobe": args.nprobe} if args.nprobe else {}
    if ann_params:
        base["rank"] = {"ann_params": ann_params}
    result: dict[str, Any] = {"benchmark": "serving_core", "machine": machine(), "store": made,
                              "duration_s": args.duration, "text_precision": args.text_precision,
                              "ann_params": ann_params or "the manifest's tuned params",
                              "load_average_at_start": os.getloadavg()}
    result["bare"] = bare_components(store, args.text_precision, args.bare_runs, ann_params or None)
    plan = {  # server config (batching, pool, page cache) -> [(name, mode, phase, connections)]
        (True, False, True): [("miss_full_c1", "miss", "full", 1), ("miss_full_c16", "miss", "full", 16),
                              ("miss_fast_c1", "miss", "fast", 1), ("miss_fast_c16", "miss", "fast", 16),
                              ("hit_c1", "hit", "full", 1)],
        (True, False, False): [("hit_c1_no_page_cache", "hit", "full", 1)],
        (False, False, True): [("miss_full_c16_no_batching", "miss", "full", 16),
                               ("miss_full_c1_no_batching", "miss", "full", 1)],
        (True, True, True): [("miss_full_c16_pool2cpu", "miss", "full", 16)],
    }
    if args.only:
        plan = {config: kept for config, scenarios in plan.items()
                if (kept := [s for s in scenarios if s[0] in args.only])}
    runs: dict[str, Any] = {}
    for (batching, pool, pages), scenarios in plan.items():
        settings = scenario_settings(base, batching, pool, pages)
        with running_server(settings, tmp / "service.json") as server:
            wrk(server.url, script, 2, 4, "miss", "full", 0)  # warm-up
            for seed, (name, mode, phase, connections) in enumerate(scenarios, start=1):
                before = scrape(server.url)
                stats = wrk(server.url, script, args.duration, connections, mode, phase, seed * 1000)
                after = scrape(server.url)
                batches, rows, seconds = (b - a for a, b in zip(pool_rows(before), pool_rows(after), strict=True))
                lane_batches, lane_rows = (b - a for a, b in zip(search_batches(before), search_batches(after),
                                                                 strict=True))
                stats.update(batching=batching, pool=pool, phase=phase, connections=connections,
                             stage_means_ms=stage_means_ms(stage_sums(before), stage_sums(after)),
                             # what the encode threads did: rows per batch, and busy time per row (against the
                             # bare session's per-row cost it shows how much CPU the other stages took from it)
                             encode_rows_per_batch=round(rows / batches, 2) if batches else None,
                             encode_ms_per_row=round(seconds / rows * 1000, 3) if rows else None,
                             searches_per_search_batch=round(lane_rows / lane_batches, 2) if lane_batches else None,
                             load_average=round(os.getloadavg()[0], 2))
                runs[name] = stats
            if batching and not pool and pages and not args.only:
                result["fast_top10_overlap_with_full"] = overlap(server.url, args.overlap_queries)
                if args.profile:  # where the loop's and each thread's CPU goes under 16-connection misses
                    result["profile_c16_miss"] = profile_process(
                        server.proc.pid, args.duration, tmp,
                        lambda: wrk(server.url, script, args.duration, 16, "miss", "full", 5))
    result["runs"] = runs
    bare = result["bare"]
    if args.only:
        for run in runs.values():  # the in-service ANN + rerank against the bare call of the same run
            stages = run["stage_means_ms"]
            run["ann_rerank_over_bare"] = round((stages.get("ann", 0) + stages.get("rerank", 0))
                                                / bare["bare_ann_rerank_mean_ms"], 2)
        finish(result)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    c1 = runs["miss_full_c1"]["stage_means_ms"]
    result["ratios"] = {
        "in_service_encode_minus_bare_ms": round(c1.get("encode", 0) - bare["bare_encode_one_query_mean_ms"], 3),
        # the same against bare encodes paced like requests (each followed by its ann + rerank): an encode after
        # other work runs on colder caches than back-to-back ones
        "in_service_encode_minus_paced_bare_ms": round(c1.get("encode", 0) - bare["bare_encode_paced_mean_ms"], 3),
        "in_service_ann_rerank_over_bare": round((c1.get("ann", 0) + c1.get("rerank", 0))
                                                 / bare["bare_ann_rerank_mean_ms"], 2),
        "batched_over_unbatched_qps_c16": round(runs["miss_full_c16"]["qps"]
                                                / runs["miss_full_c16_no_batching"]["qps"], 2),
        "pool_over_single_qps_c16": round(runs["miss_full_c16_pool2cpu"]["qps"] / runs["miss_full_c16"]["qps"], 2),
        # the most batching can give: the bare session's own gain from 16 rows at once (the service adds HTTP,
        # ANN and rerank per query, which batching does not shrink)
        "bare_session_batch16_gain": round(bare["bare_encode_one_query_mean_ms"]
                                           / bare["bare_encode_batch16_per_query_ms"], 2),
        # QPS ceiling of the encoder alone at 16 rows per batch (both cores): no service can pass it
        "bare_encode_ceiling_qps": round(1000 / bare["bare_encode_batch16_per_query_ms"], 1),
    }
    result["targets"] = targets(bare, runs)
    finish(result)
    shutil.rmtree(tmp, ignore_errors=True)


def finish(result: dict[str, Any]) -> None:
    """Print the result and write it to benchmarks/out/serving_core.json."""
    report_json("serving_core", result)


if __name__ == "__main__":
    main()
