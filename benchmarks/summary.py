"""benchmarks/out/*.json -> one markdown table (benchmarks/out/summary.md): per benchmark its headline figures
and its ratio against the same-run baseline, under a line naming the machine. Used by benchmarks/run_all."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine  # noqa: E402

# benchmark -> (dotted key, label) for its headline figures; others get the generic pick below
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "indexer_throughput": [("ours.images_per_s", "ours img/s"), ("clip_retrieval.images_per_s", "clip-retrieval img/s"),
                           ("speedup_vs_clip_retrieval", "speed-up (cold)"),
                           ("speedup_warm_vs_clip_retrieval", "speed-up (warm export cache)"),
                           ("speedup_torch_tower_vs_clip_retrieval", "speed-up, eager torch tower"),
                           ("images", "images"), ("image_size", "size")],
    "image_units": [("towers.ViT-B-32.onnx_batch_8_vs_best_torch", "ViT-B-32 ONNX vs torch"),
                    ("towers.tiny.onnx_batch_8_vs_best_torch", "tiny ONNX vs torch"),
                    ("decode.full_decode_ms", "JPEG decode ms"), ("decode.draft_decode_ms", "draft decode ms"),
                    ("decode.speedup", "draft speed-up")],
    "noop_reindex": [("images", "files"), ("full_run_s", "full run s"), ("noop_run_s", "no-op run s"),
                     ("ratio", "no-op / full")],
    "cold_start": [("vectors", "vectors"), ("factory", "index"), ("startup_s", "start to ready s"),
                   ("floor_process_s", "floor s (read index)"), ("imports_process_s", "imports-only s"),
                   ("ratio_to_floor", "ratio to floor"), ("rss_mb_after_queries", "RSS MB after queries"),
                   ("install.serve_only_site_packages_mb", "serve-only install MB"),
                   ("install.full_site_packages_mb", "full install MB")],
    "int8_towers": [("headline.ViT-B-32_text_int8_p50_ratio", "ViT-B-32 text int8/fp32 p50"),
                    ("text_int8_verdict.mean_cosine", "text cosine"),
                    ("text_int8_verdict.r10_loss_pt", "text R@10 loss"),
                    ("headline.ViT-B-32_image_int8_speedup", "ViT-B-32 image int8 speed-up"),
                    ("image_int8_verdict.r10_loss_pt", "image R@10 loss")],
    "gpu_check": [("skipped", "skipped"), ("device", "device"), ("indexer.images_per_s", "ViT-B-32 img/s"),
                  ("indexer_overflow.gpu_plus_cpu_overflow.images_per_s", "img/s with CPU overflow"),
                  ("indexer_overflow.speedup", "overflow speed-up"),
                  ("text_encoder.batch_256_qps", "text QPS (batch 256)"),
                  ("faiss_ivf.gpu_train_s", "IVF train s (GPU)"),
                  ("faiss_ivf.gpu_speedup", "GPU speed-up")],
    "indexer_overflow": [("primary_alone.images_per_s", "slowed primary img/s"),
                         ("primary_plus_overflow.images_per_s", "+ CPU overflow img/s"),
                         ("speedup_vs_primary_alone", "speed-up")],
    "file_meta_overhead": [("sizes.0.size", "size"), ("sizes.0.overhead", "overhead"),
                           ("sizes.1.size", "size"), ("sizes.1.overhead", "overhead"),
                           ("sizes.2.size", "size"), ("sizes.2.overhead", "overhead"), ("target", "target")],
    "serving_store": [("model", "model"), ("vectors", "vectors"), ("factory", "index"), ("publish_s", "publish s")],
    "serving_core": [("store.model", "model"), ("store.vectors", "vectors"),
                     ("runs.miss_full_c1.qps", "miss c1 QPS"), ("runs.miss_full_c1.p99_ms", "miss c1 p99 ms"),
                     ("runs.miss_full_c16.qps", "miss c16 QPS"), ("runs.miss_full_c16.p99_ms", "miss c16 p99 ms"),
                     ("runs.hit_c1.p50_ms", "hit c1 p50 ms"),
                     ("ratios.batched_over_unbatched_qps_c16", "batched / unbatched QPS c16"),
                     ("ratios.pool_over_single_qps_c16", "2-CPU pool / single QPS c16"),
                     ("fast_top10_overlap_with_full", "fast vs full top-10 overlap")],
    "batcher_compare": [("model", "model"),
                        ("concurrency_16.this_padded_adaptive.qps_over_no_batching", "c16 batcher / none"),
                        ("concurrency_16.previous_3ms_equal_length_groups.qps_over_no_batching", "c16 previous / none"),
                        ("concurrency_1.this_padded_adaptive.qps_over_no_batching", "c1 batcher / none")],
    "thread_contention": [("model", "model"), ("vectors", "vectors"),
                          ("faiss_search_alone_p50_ms", "search alone p50 ms"),
                          ("spinning_off_service.faiss_search_after_encode_p50_ms", "after encode, no spin p50 ms"),
                          ("search_slowdown_spinning_on_vs_off", "slowdown spinning on/off")],
    "query_path_profile": [("concurrency_1.qps", "c1 QPS"), ("concurrency_16.qps", "c16 QPS")],
    "overload": [("model", "model"), ("shedding.sustainable_miss_rate_per_s", "sustainable misses/s"),
                 ("shedding.admitted_p99_ms", "admitted p99 ms"), ("shedding.rejected_p99_ms", "rejected p99 ms"),
                 ("shedding.hit_p99_ms", "hit p99 ms"), ("shedding.readyz_after", "readyz after"),
                 ("no_shedding.admitted_p99_ms", "no shedding: admitted p99 ms")],
    "upload_memory": [("uploads", "uploads"), ("guarded.peak_above_idle_mb", "peak above idle MB"),
                      ("guarded.after_above_idle_mb", "after MB"),
                      ("peak_ratio_unguarded_over_guarded", "unguarded / guarded peak"),
                      ("meets_target", "target met")],
    "replica_memory": [("vectors", "vectors"), ("factory", "index"), ("shard_mb.total", "index + vectors MB"),
                       ("summary.mmap.4.extra_replica_pss_mb", "extra replica PSS MB (mmap)"),
                       ("summary.mmap.4.ratio_to_index_plus_vectors", "ratio (mmap)"),
                       ("summary.heap.4.ratio_to_index_plus_vectors", "ratio (heap read)")],
}
GENERIC = ("speedup", "ratio", "per_s", "qps", "p50", "p99", "recall")


def flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from flatten(value, f"{prefix}{key}.")
    elif isinstance(data, list):  # lists of objects (one per size, per model...) by position; other lists skipped
        for i, value in enumerate(data):
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{i}.")
    else:
        yield prefix[:-1], data


def headline(name: str, data: dict[str, Any]) -> str:
    flat = dict(flatten(data))
    if "error" in data:
        return f"**failed**: {data['error']}"
    picks = [(label, flat[key]) for key, label in HEADLINES.get(name, []) if key in flat and flat[key] is not None]
    if not picks:
        picks = [(k, v) for k, v in flat.items() if isinstance(v, (int, float)) and any(g in k for g in GENERIC)][:8]
    return "; ".join(f"{label} {_fmt(value)}" for label, value in picks)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary(names: list[str], out: Path = OUT) -> str:
    """One row per benchmark name (OUT/<name>.json); a missing or unreadable file is a row saying so."""
    rows = []
    for name in names:
        path = out / f"{name}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            data = {"error": f"no result ({exc.__class__.__name__}: {exc})"}
        if not isinstance(data, dict):
            data = {"error": "result is not a JSON object"}
        rows.append(f"| {name} | {headline(name, data)} | `{path.name}` |")
    m = machine()
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['platform']}.", "",
             "| benchmark | figures (ratios are against a baseline measured in the same run) | JSON |",
             "|---|---|---|", *rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: summary.py NAME... (reads benchmarks/out/NAME.json, writes benchmarks/out/summary.md)")
    text = summary(sys.argv[1:])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.md").write_text(text)
    print(text, end="")
