"""Finding 1 of the serving profile, reproduced: ONNX Runtime's intra-op threads spinning after a run slow the
FAISS search that follows it (they hold the cores the search needs). Times a FAISS IVF search alone (the
same-run baseline) and right after a text-tower session run, with spinning on (ORT's default) and off (the
service's `threads.ort_spinning: false`), at the thread counts the budget allows.

    .venv/bin/python benchmarks/thread_contention.py [--model ViT-B-32] [--n 200000] [--runs 200]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine  # noqa: E402


def _p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    import faiss
    import onnxruntime as ort
    import torch

    from indexer.models.clip import load_encoder
    from indexer.models.export import export_text_tower
    from search.runtime.threads import resolve_budget, session_options

    torch.manual_seed(0)
    encoder = load_encoder(args.model, pretrained="random", device="cpu")
    path = export_text_tower(encoder, OUT / "onnx-cache")
    tokens = encoder.tokenize(["two dogs playing with a red ball in the park"]).numpy().astype(np.int64)
    tokens = tokens[:, : int(tokens.argmax(axis=1)[0]) + 1]
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((args.n, encoder.dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    index = faiss.index_factory(encoder.dim, "IVF1024,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(xb[:50_000])
    index.add(xb)
    params = faiss.SearchParametersIVF(nprobe=8)
    query = xb[:1].copy()

    def search_alone() -> float:
        start = time.perf_counter()
        index.search(query, 100, params=params)
        return time.perf_counter() - start

    result: dict[str, object] = {"benchmark": "thread_contention", "machine": machine(), "model": args.model,
                                 "vectors": args.n, "index": "IVF1024,Flat nprobe 8", "runs": args.runs}
    for _ in range(20):
        search_alone()
    result["faiss_search_alone_p50_ms"] = _p50_ms([search_alone() for _ in range(args.runs)])
    for spinning in (True, False):
        budget = resolve_budget(ort_spinning=spinning)
        session = ort.InferenceSession(str(path), sess_options=session_options(budget),
                                       providers=["CPUExecutionProvider"])
        after, encode = [], []
        for i in range(args.runs + 10):
            start = time.perf_counter()
            session.run(None, {"tokens": tokens})
            mid = time.perf_counter()
            index.search(query, 100, params=params)
            if i >= 10:
                encode.append(mid - start)
                after.append(time.perf_counter() - mid)
        name = "spinning_on_ort_default" if spinning else "spinning_off_service"
        result[name] = {"encode_p50_ms": _p50_ms(encode), "faiss_search_after_encode_p50_ms": _p50_ms(after),
                        "intra_op_threads": budget.ort_intra_op}
    on, off = result["spinning_on_ort_default"], result["spinning_off_service"]
    assert isinstance(on, dict) and isinstance(off, dict)
    result["search_slowdown_spinning_on_vs_off"] = round(on["faiss_search_after_encode_p50_ms"]
                                                          / off["faiss_search_after_encode_p50_ms"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
