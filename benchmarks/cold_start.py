"""Service cold start to ready on an N-vector artifact (default 1M), against the floor any service has to pay
on the same artifact in the same run: a bare Python process that imports faiss and numpy, reads the index and
memory-maps the vectors. A process that only imports the service's libraries (torch, open_clip, onnxruntime,
fastapi, uvicorn, faiss) is timed too, to show how much of the start is imports.

The artifact is published directly with indexer.publish from seeded random unit vectors (the tiny model's
dimension and identity, so the service accepts it) and an IVF-Flat index. Cold start = spawning
`python -m search serve` until uvicorn reports startup complete (the lifespan has loaded the encoder, the text
encoder and the index), then /readyz and one query are timed. Run twice: the first start also exports the
ONNX text tower (cached by encoder identity), the second is the everyday restart.

    .venv/bin/python benchmarks/cold_start.py --n 1000000 [--factory IVF4096,Flat] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, machine, random_checkpoint, timed_run  # noqa: E402

FLOOR = """
import sys, time, numpy as np, faiss
start = time.perf_counter()
index = faiss.read_index(sys.argv[1] + "/index.faiss")
vectors = np.load(sys.argv[1] + "/vectors.f16.npy", mmap_mode="r")
ids = np.load(sys.argv[1] + "/ids.npy", mmap_mode="r")
index.search(np.asarray(vectors[:1], dtype="float32"), 10)
print(time.perf_counter() - start)
"""


def tiny_checkpoint() -> Path:
    from indexer.models import registry

    trained = registry.tiny_checkpoint_path()
    return trained if trained.is_file() else random_checkpoint(registry.TINY_MODEL_NAME, OUT / "tiny-random.pt")


def write_metadata(db: Path, n: int, image_root: Path) -> None:
    """The images table of the contracts, one row per vector (ids 1..n)."""
    db.unlink(missing_ok=True)
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT UNIQUE, content_hash TEXT, size INTEGER,"
        " mtime_ns INTEGER, width INTEGER, height INTEGER, status TEXT, reason TEXT, caption TEXT, tags TEXT,"
        " licence TEXT, popularity REAL, created_at TEXT, updated_at TEXT);")
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("image_root", str(image_root))])
    stamp = "2024-01-01T00:00:00+00:00"
    conn.executemany("INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     ((i, f"part-{i // 1000:04d}/img-{i:07d}.jpg", f"h{i}", 1000, 0, 640, 480, "indexed", None,
                       None, "[]", "CC0-1.0", 0.5, stamp, stamp) for i in range(1, n + 1)))
    conn.commit()
    conn.close()


def publish(store: Path, n: int, factory: str, ckpt: Path) -> tuple[str, float]:
    import numpy as np

    from indexer.index_select import IndexConfig
    from indexer.publish import publish_version
    from indexer.models.clip import load_encoder

    identity = load_encoder("tiny", pretrained=str(ckpt), device="cpu").identity
    vectors = np.random.default_rng(0).standard_normal((n, identity.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.mkdir(parents=True, exist_ok=True)
    write_metadata(store / "metadata.sqlite", n, store / "images")
    config = IndexConfig.load(ROOT / "configs" / "index.yaml")
    config = IndexConfig.from_dict({**config.to_dict(), "factory": factory, "recall_queries": 200,
                                    "latency_queries": 50, "use_gpu": False, "keep_versions": 1})
    start = time.perf_counter()
    published = publish_version(store, np.arange(1, n + 1, dtype=np.int64), vectors, store / "metadata.sqlite",
                                identity, store / "images", config, {"indexed": n, "failed": 0, "deleted": 0}, {})
    return published.name, time.perf_counter() - start


def start_service(store: Path, ckpt: Path, onnx_cache: Path, config: Path) -> dict[str, Any]:
    import httpx

    from search.settings import EncoderSettings, ReloadSettings, Settings, TextSettings

    settings = Settings(encoder=EncoderSettings(model="tiny", pretrained=str(ckpt), device="cpu"),
                        text=TextSettings(backend="onnx", onnx_cache_dir=onnx_cache), reload=ReloadSettings(watch=False))
    config.write_text(json.dumps(settings.model_dump(mode="json", exclude={"store"})))
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "search", "serve", "--store", str(store), "--config", str(config),
                             "--port", str(port), "--log-level", "info"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        log = []
        for line in proc.stderr:  # the server's own log says when startup is complete
            log.append(line)
            if "Application startup complete" in line:
                break
        else:
            raise RuntimeError("service exited during startup:\n" + "".join(log[-30:]))
        ready_s = time.perf_counter() - start
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            ready = client.get("/readyz").json()
            q = time.perf_counter()
            response = client.get("/search", params={"q": "a large red circle on a grass background", "k": 10})
            first_query_ms = (time.perf_counter() - q) * 1000
        response.raise_for_status()
        return {"startup_s": round(ready_s, 2), "vectors": ready.get("vectors"),
                "first_query_ms": round(first_query_ms, 1), "hits": len(response.json()["hits"])}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--factory", help="index factory (default IVF{4*sqrt(n) as a power of 2},Flat)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=OUT / "cold_start")
    args = parser.parse_args()
    nlist = 2 ** max(4, round(math.log2(4 * math.sqrt(args.n))))
    factory = args.factory or f"IVF{nlist},Flat"
    ckpt = tiny_checkpoint()
    store = args.work / f"store-{args.n}-{factory.replace(',', '_')}"
    version, publish_s = publish(store, args.n, factory, ckpt)
    from search.artifact import current_path

    floor_s, done = timed_run([sys.executable, "-c", FLOOR, str(current_path(store))])
    imports_s, _ = timed_run([sys.executable, "-c", "import torch, open_clip, onnxruntime, fastapi, uvicorn, faiss"])
    starts = [start_service(store, ckpt, args.work / "onnx-cache", args.work / "service.json") for _ in range(args.repeats)]
    warm = starts[-1]["startup_s"]
    result = {"benchmark": "cold_start", "machine": machine(), "vectors": args.n, "factory": factory,
              "version": version, "publish_s": round(publish_s, 1),
              "floor_process_s": round(floor_s, 2), "floor_load_s": round(float(done.stdout.strip()), 3),
              "imports_process_s": round(imports_s, 2),
              "starts": starts, "startup_s": warm, "ratio_to_floor": round(warm / floor_s, 2)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
