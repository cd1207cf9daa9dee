"""Finding 2 of the serving profile, reproduced without HTTP: the previous micro-batcher (fixed 3 ms window,
batches split into groups of equal token length) against this one (padded to the batch's longest real length,
no fixed wait, cost-capped), and against no batching, on the same ONNX text session, with closed-loop
concurrent clients sending distinct mixed-length queries (3-20 tokens). The previous batcher is loaded from
git (`git show <ref>:search/runtime/batcher.py`), so both run in the same process on the same session.

    .venv/bin/python benchmarks/batcher_compare.py [--model ViT-B-32] [--queries 320] [--ref c0d902e]
Prints one JSON object: QPS and per-request p50/p99 per mode and concurrency, ratios against no batching.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, drive, machine  # noqa: E402
from serving_core import queries  # noqa: E402
from serving_store import build, text_encoder  # noqa: E402


def previous_batcher(ref: str) -> Any:
    source = subprocess.run(["git", "show", f"{ref}:search/batcher.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout  # before the search/ relayout
    # its TextEncoder protocol moved with the relayout (same methods: tokenize, lengths, encode_token_ids, encode)
    source = source.replace("from search.text_encoder import TextEncoder",
                            "from search.runtime.towers import TextEncoder")
    path = Path(tempfile.mkdtemp()) / "previous_batcher.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("previous_batcher", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MicroBatcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument("--ref", default="c0d902e", help="git ref of the previous batcher")
    parser.add_argument("--text-precision", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--work", type=Path, default=OUT / "serving")
    args = parser.parse_args()

    from search.runtime.batcher import MicroBatcher
    from search.runtime.threads import configure_process, resolve_budget

    configure_process(resolve_budget())
    # the text tower the service runs: a small random-init store's own encoder files (the index plays no part)
    made = build(1000, "Flat", args.model, args.work)
    text = text_encoder(Path(str(made["store"])), args.text_precision)
    Previous = previous_batcher(args.ref)
    result: dict[str, Any] = {"benchmark": "batcher_compare", "machine": machine(), "model": args.model,
                              "queries": args.queries, "previous_ref": args.ref,
                              "text_precision": args.text_precision}
    modes = {"no_batching": lambda: MicroBatcher(text, window_s=0.0),
             "previous_3ms_equal_length_groups": lambda: Previous(text, window_s=0.003, max_batch=32),
             "this_padded_adaptive": lambda: MicroBatcher(text, window_s=0.003, max_batch=32)}
    for concurrency in (1, 16):
        row: dict[str, Any] = {}
        for name, make in modes.items():
            batcher = make()
            try:
                asyncio.run(drive(batcher, queries(8, 1), concurrency))  # warm-up
                row[name] = asyncio.run(drive(batcher, queries(args.queries, concurrency + 100), concurrency))
            finally:
                batcher.close()
        base = row["no_batching"]["qps"]
        for name in modes:
            row[name]["qps_over_no_batching"] = round(row[name]["qps"] / base, 2)
        result[f"concurrency_{concurrency}"] = row
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
