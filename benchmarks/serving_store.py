"""The production-shape store for the serving benchmarks: N seeded random unit vectors (default 1M) under a
ViT-B-32 random-init encoder, published with the project's own publish (index built, nprobe tuned) together
with its encoder files (ONNX towers, tokenizer, preprocess), so the service takes its encoder from the store.
The random-init checkpoint is kept for bare measurements. Reused when already published.

    .venv/bin/python benchmarks/serving_store.py [--n 1000000] [--factory OPQ64_256,IVF4096,PQ64]
        [--vectors clustered|isotropic]
Prints {"store": ..., "checkpoint": ..., "model": ...} as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_start import index_config, publish  # noqa: E402
from common import OUT, machine, random_checkpoint  # noqa: E402


def build(n: int, factory: str, model: str, work: Path, vectors: str = "isotropic") -> dict[str, object]:
    """`vectors`: "isotropic" (uniform on the sphere: a worst case) or "clustered" (around 1,000 centres)."""
    ckpt = random_checkpoint(model, work / f"{model}-random.pt")
    suffix = "" if vectors == "isotropic" else f"-{vectors}"
    store = work / f"store-{model}-{n}-{factory.replace(',', '_')}{suffix}"
    result: dict[str, object] = {"store": str(store), "checkpoint": str(ckpt), "model": model, "vectors": n,
                                 "factory": factory, "distribution": vectors}
    if (store / "current").exists() and (store / "encoders").is_dir():  # one published before the encoder move
        return result                                                   # carries no encoder: rebuilt
    _, publish_s = publish(store, n, factory, model, ckpt, work / "onnx-cache", clustered=vectors == "clustered")
    result["publish_s"] = round(publish_s, 1)
    return result

def sharded_copy(store: Path, shards: int) -> Path:
    """The store's current version in `shards` parts, published beside it (`<store>-shards<S>`) from its stored
    ids and vectors, nothing re-encoded (as `indexer build --shards S` re-shards an indexer store; this store
    has no indexer database, so its version's arrays are the source). The encoder folder is hard-linked (its
    files are read-only), the metadata read in place (read-only): the source store is never written. Reused
    while it was made from the source's current version."""
    import numpy as np

    from indexer.index.publish import publish_version
    from search.artifact.manifest import IDS_FILE, VECTORS_FILE, read_manifest
    from search.artifact.version import current_path

    if shards < 2:
        return store
    source = current_path(store)
    target = store.with_name(f"{store.name}-shards{shards}")
    marker = target / "resharded-from"
    if (target / "current").exists() and marker.is_file() and marker.read_text().strip() == source.name:
        return target
    manifest = read_manifest(source)
    if manifest.encoder_files is None or manifest.shard_count != 1:
        raise RuntimeError(f"{source} is not a one-part version with its encoder files")
    encoder_dir = target / manifest.encoder_files.dir
    encoder_dir.mkdir(parents=True, exist_ok=True)
    for file in (store / manifest.encoder_files.dir).iterdir():
        if not (encoder_dir / file.name).exists():
            os.link(file, encoder_dir / file.name)
    ids = np.load(source / IDS_FILE)
    vectors = np.load(source / VECTORS_FILE, mmap_mode="r")
    publish_version(target, ids, vectors, store / "metadata.sqlite", manifest.encoder, Path(manifest.image_root),
                    index_config(manifest.index.factory, shards), manifest.counts, {},
                    encoder_files=manifest.encoder_files)
    marker.write_text(source.name + "\n", encoding="utf-8")
    return target


def text_encoder(store: Path, precision: str = "int8") -> Any:
    """The store's own text tower (an OnnxTextEncoder over its tokenizer and ONNX graph), as the service runs it."""
    from search.artifact.version import open_current
    from search.runtime.towers import RuntimeEncoder, RuntimeOptions

    with open_current(store) as artifact:
        if artifact.encoder_bundle is None:
            raise RuntimeError(f"{store} carries no encoder files (rebuild it with serving_store.py)")
        return RuntimeEncoder.load(artifact.encoder_bundle, RuntimeOptions(text_precision=precision)).text  # type: ignore[arg-type]



def add_store_arguments(parser: argparse.ArgumentParser, n: int = 1_000_000,
                        factory: str = "OPQ64_256,IVF4096,PQ64") -> None:
    """The store's shape (--n, --factory, --model, --vectors), named alike by every script that builds or reuses it."""
    parser.add_argument("--n", type=int, default=n)
    parser.add_argument("--factory", default=factory)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--vectors", choices=("clustered", "isotropic"), default="clustered")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_store_arguments(parser)
    parser.add_argument("--work", type=Path, default=OUT / "serving")
    args = parser.parse_args()
    out = build(args.n, args.factory, args.model, args.work, args.vectors)
    out["machine"] = machine()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
