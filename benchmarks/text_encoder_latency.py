"""Text-encoder latency at real query lengths: open_clip eager at full context vs padding-trimmed torch vs
ONNX Runtime (trimmed, graph optimisations on, thread counts tried). Prints one JSON object, with speed-ups
against the same run's eager baseline and each backend's max deviation from it.

    .venv/bin/python benchmarks/text_encoder_latency.py [--model ViT-B-32] [--runs 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import latency_ms  # noqa: E402

QUERY_12 = "two dogs playing with a red ball in the park"  # 12 tokens with start/end on CLIP's BPE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--query", default=QUERY_12)
    parser.add_argument("--cache-dir", default=None, help="ONNX export cache (default: a temporary dir)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()

    import os

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from indexer.models.clip import load_encoder
    from indexer.models.towers import TorchTextEncoder, onnx_text_encoder

    torch.manual_seed(0)
    encoder = load_encoder(args.model, pretrained="random", device="cpu")
    trimmed = TorchTextEncoder(encoder)
    tokens = trimmed.tokenize([args.query])
    full = torch.from_numpy(tokens)
    reference = encoder.encode_tokens(full)
    results: dict[str, object] = {
        "benchmark": "text_encoder_latency", "model": args.model, "weights": "random-init", "query": args.query,
        "query_tokens": int(trimmed.lengths(tokens)[0]), "context_length": encoder.context_length,
        "torch_threads": torch.get_num_threads(), "runs": args.runs,
        "cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    eager = latency_ms(lambda: encoder.encode_tokens(full), args.runs)
    results["open_clip_eager_full_context"] = eager
    backends: dict[str, Callable[[], np.ndarray]] = {"torch_trimmed": lambda: trimmed.encode_token_ids(tokens)}
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="onnx-bench-"))
    start = time.perf_counter()
    onnx_default = onnx_text_encoder(encoder, cache_dir)
    results["onnx_export_and_load_s"] = round(time.perf_counter() - start, 2)
    backends["onnx_trimmed_default_threads"] = lambda: onnx_default.encode_token_ids(tokens)
    for threads in (1, 2):
        onnx = onnx_text_encoder(encoder, cache_dir, threads=threads)
        backends[f"onnx_trimmed_{threads}_threads"] = (lambda o: lambda: o.encode_token_ids(tokens))(onnx)
    for name, fn in backends.items():
        stats = latency_ms(fn, args.runs)
        stats["max_abs_diff_vs_eager"] = float(np.abs(fn() - reference).max())
        stats["speedup_vs_eager_p50"] = round(eager["p50_ms"] / stats["p50_ms"], 2)
        results[name] = stats
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
