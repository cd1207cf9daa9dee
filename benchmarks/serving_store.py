"""The production-shape store for the serving benchmarks: N seeded random unit vectors (default 1M) under a
ViT-B-32 random-init encoder, published with the project's own publish (index built, nprobe tuned) together
with its encoder files (ONNX towers, tokenizer, preprocess), so the service takes its encoder from the store.
The random-init checkpoint is kept for bare measurements. Reused when already published.

    .venv/bin/python benchmarks/serving_store.py [--n 1000000] [--factory OPQ64_256,IVF4096,PQ64]
Prints {"store": ..., "checkpoint": ..., "model": ...} as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_start import write_metadata  # noqa: E402
from common import OUT, ROOT, machine, random_checkpoint  # noqa: E402


def build(n: int, factory: str, model: str, work: Path) -> dict[str, object]:
    import numpy as np

    from indexer.index_select import IndexConfig
    from indexer.models.clip import load_encoder
    from indexer.models.export import export_bundle
    from indexer.publish import publish_version

    ckpt = random_checkpoint(model, work / f"{model}-random.pt")
    store = work / f"store-{model}-{n}-{factory.replace(',', '_')}"
    result: dict[str, object] = {"store": str(store), "checkpoint": str(ckpt), "model": model, "vectors": n,
                                 "factory": factory}
    if (store / "current").exists() and (store / "encoders").is_dir():  # one published before the encoder move
        return result                                                   # carries no encoder: rebuilt
    encoder = load_encoder(model, pretrained=str(ckpt), device="cpu")
    identity = encoder.identity
    rng = np.random.default_rng(0)
    vectors = np.empty((n, identity.dim), np.float16)
    for start in range(0, n, 100_000):  # float16 in chunks: 1M x 512 float32 at once is 2 GB
        chunk = rng.standard_normal((min(100_000, n - start), identity.dim), dtype=np.float32)
        vectors[start:start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    store.mkdir(parents=True, exist_ok=True)
    write_metadata(store / "metadata.sqlite", n, store / "images")
    config = IndexConfig.load(ROOT / "configs" / "index.yaml")
    config = IndexConfig.from_dict({**config.to_dict(), "factory": factory, "recall_queries": 200,
                                    "latency_queries": 50, "use_gpu": False, "keep_versions": 1})
    began = time.perf_counter()
    files = export_bundle(encoder, store, work / "onnx-cache")  # the store carries its encoder
    publish_version(store, np.arange(1, n + 1, dtype=np.int64), vectors, store / "metadata.sqlite", identity,
                    store / "images", config, {"indexed": n, "failed": 0, "deleted": 0}, {}, encoder_files=files)
    result["publish_s"] = round(time.perf_counter() - began, 1)
    return result


def text_encoder(store: Path, precision: str = "int8") -> Any:
    """The store's own text tower (an OnnxTextEncoder over its tokenizer and ONNX graph), as the service runs it."""
    from search.artifact.version import open_current
    from search.runtime.towers import RuntimeEncoder, RuntimeOptions

    with open_current(store) as artifact:
        if artifact.encoder_bundle is None:
            raise RuntimeError(f"{store} carries no encoder files (rebuild it with serving_store.py)")
        return RuntimeEncoder.load(artifact.encoder_bundle, RuntimeOptions(text_precision=precision)).text  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--factory", default="OPQ64_256,IVF4096,PQ64")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--work", type=Path, default=OUT / "serving")
    args = parser.parse_args()
    out = build(args.n, args.factory, args.model, args.work)
    out["machine"] = machine()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
