"""Service cold start to ready on an N-vector artifact (default 1M), against the floor any service has to pay
on the same artifact in the same run: a bare Python process that imports faiss and numpy, reads the index and
memory-maps the vectors (and the same after importing onnxruntime, tokenizers, fastapi and uvicorn: the floor of
any service on this stack). A process that only imports the service's libraries (onnxruntime, tokenizers,
fastapi, uvicorn, faiss) is timed too, beside one that also imports torch and open_clip (what serving needed
before the artifact carried its ONNX encoder).

The artifact is published with indexer.index.publish from seeded random unit vectors and an IVF-Flat index, with
the encoder's ONNX towers exported into the store (ViT-B-32 random init by default: what a real store's towers
cost to load). Cold start = spawning `python -m search serve --store STORE` (no model settings) until uvicorn
reports startup complete (the artifact is verified, the text session and the index loaded), then /readyz and
one query are timed. After the starts, one service answers `--queries` distinct text queries and its RSS is
read from /proc. `--install-sizes` also builds a fresh virtualenv with only the `serve` extra and reports its
size beside the full development environment's.

Targets (issue 9): startup <= 1.5 s and <= 1.6x the floor process at 1M vectors.

    .venv/bin/python benchmarks/cold_start.py --n 1000000 [--model ViT-B-32] [--repeats 2] [--install-sizes]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
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

# the same, after importing the libraries any service on this stack imports (web framework, ONNX Runtime, BPE)
FLOOR_STACK = "import onnxruntime, tokenizers, fastapi, uvicorn\n" + FLOOR


def checkpoint(model: str) -> Path:
    """The trained tiny checkpoint, or a seeded random-init one for `model`."""
    from indexer.models import registry

    if model in registry.TINY_ALIASES:
        trained = registry.tiny_checkpoint_path()
        return trained if trained.is_file() else random_checkpoint(registry.TINY_MODEL_NAME, OUT / "tiny-random.pt")
    return random_checkpoint(model, OUT / f"{model}-random.pt")


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


def publish(store: Path, n: int, factory: str | None, model: str, ckpt: Path, onnx_cache: Path,
            clustered: bool = False) -> tuple[str, float]:
    """N seeded random unit vectors under `model`'s random-init encoder, published with the project's own publish
    (index built, nprobe tuned) and the encoder files; returns the version name and the publish seconds.
    serving_store.py builds its store with this too. `clustered`: the vectors lie around 1,000 random centres
    (`clustered_vectors`), as photo embeddings do; isotropic ones are a worst case for an IVF index."""
    import numpy as np

    from indexer.index.publish import publish_version
    from indexer.models.clip import load_encoder
    from indexer.models.export import export_bundle

    encoder = load_encoder(model, pretrained=str(ckpt), device="cpu")
    identity = encoder.identity
    vectors = clustered_vectors(n, identity.dim) if clustered else isotropic_vectors(n, identity.dim)
    store.mkdir(parents=True, exist_ok=True)
    write_metadata(store / "metadata.sqlite", n, store / "images")
    config = index_config(factory)
    start = time.perf_counter()
    files = export_bundle(encoder, store, onnx_cache)
    published = publish_version(store, np.arange(1, n + 1, dtype=np.int64), vectors, store / "metadata.sqlite",
                                identity, store / "images", config, {"indexed": n, "failed": 0, "deleted": 0}, {},
                                encoder_files=files)
    return published.name, time.perf_counter() - start


def index_config(factory: str | None, shards: int = 1) -> Any:
    """The index settings of the benchmark stores (configs/index.yaml with the given factory, a shorter recall and
    latency tuning, CPU, one version kept), as an IndexConfig; `shards` parts (serving_store.sharded_copy)."""
    from indexer.index.index_select import IndexConfig

    config = IndexConfig.load(ROOT / "configs" / "index.yaml")
    return IndexConfig.from_dict({**config.to_dict(), "factory": factory, "recall_queries": 200,
                                  "latency_queries": 50, "use_gpu": False, "keep_versions": 1, "shards": shards})


def isotropic_vectors(n: int, dim: int, seed: int = 0) -> Any:
    """N unit vectors drawn uniformly on the sphere (float16)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vectors = np.empty((n, dim), np.float16)
    for begin in range(0, n, 100_000):  # float16 in chunks: 1M x 512 float32 at once is 2 GB
        chunk = rng.standard_normal((min(100_000, n - begin), dim), dtype=np.float32)
        vectors[begin:begin + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


def clustered_vectors(n: int, dim: int, seed: int = 0, centres: int = 1000, spread: float = 0.8) -> Any:
    """N unit vectors around `centres` random unit centres (cosine to the centre ~0.78 at spread 0.8): the
    shape of a photo collection's embeddings, where an IVF index needs few probes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, dim), dtype=np.float32)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    vectors = np.empty((n, dim), np.float16)
    for begin in range(0, n, 100_000):
        rows = min(100_000, n - begin)
        chunk = centre[rng.integers(0, centres, rows)] \
            + spread / np.sqrt(dim) * rng.standard_normal((rows, dim), dtype=np.float32)
        vectors[begin:begin + rows] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def start_service(store: Path, config: Path, queries: int = 0) -> dict[str, Any]:
    """Spawn the service, time it to startup complete, one query; then `queries` distinct queries and its RSS."""
    import httpx

    from search.settings import ReloadSettings, Settings

    settings = Settings(reload=ReloadSettings(watch=False))  # no model settings: the encoder is the store's
    config.write_text(json.dumps(settings.model_dump(mode="json", exclude={"store"})))
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "search", "serve", "--store", str(store), "--config", str(config),
                             "--port", str(port), "--log-level", "info"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        log = []
        for line in proc.stderr:  # the server's own log says when startup is complete
            log.append(line)
            if "Application startup complete" in line:
                break
        else:
            raise RuntimeError("service exited during startup:\n" + "".join(log[-30:]))
        ready_s = time.perf_counter() - start
        # keep draining the server's log: a full stderr pipe would block the server mid-benchmark
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            ready = client.get("/readyz").json()
            q = time.perf_counter()
            response = client.get("/search", params={"q": "a large red circle on a grass background", "k": 10})
            first_query_ms = (time.perf_counter() - q) * 1000
            response.raise_for_status()
            result: dict[str, Any] = {"startup_s": round(ready_s, 2), "vectors": ready.get("vectors"),
                                      "first_query_ms": round(first_query_ms, 1), "hits": len(response.json()["hits"]),
                                      "rss_mb_at_ready": _rss_mb(proc.pid)}
            if queries:
                words = ["red", "green", "blue", "circle", "square", "star", "sand", "grass", "sky", "small",
                         "large", "striped", "dotted", "crescent", "triangle", "on", "a", "background"]
                rng = random.Random(0)
                q = time.perf_counter()
                for i in range(queries):  # distinct texts: every one is encoded (cache misses)
                    text = " ".join(rng.choice(words) for _ in range(6)) + f" {i}"
                    client.get("/search", params={"q": text, "k": 10}).raise_for_status()
                result["queries"] = queries
                result["queries_s"] = round(time.perf_counter() - q, 1)
                result["rss_mb_after_queries"] = _rss_mb(proc.pid)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _du_mb(path: Path) -> float:
    done = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return round(int(done.stdout.split()[0]) / 1024, 1)


def install_sizes(work: Path) -> dict[str, Any]:
    """A fresh virtualenv with only the `serve` extra (pip, from the registry) beside this environment."""
    import sysconfig
    import venv

    env_dir, source = work / "serve-venv", work / "serve-src"
    shutil.rmtree(source, ignore_errors=True)  # a copy: building the wheel writes build/ beside the sources
    for package in ("search", "indexer"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    if not (env_dir / "bin" / "python").is_file():
        venv.EnvBuilder(with_pip=True).create(env_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"{source}[serve,cpu]"], check=True, env=env)
    serve_site = next((env_dir / "lib").glob("python3*/site-packages"))
    full_site = Path(sysconfig.get_paths()["purelib"])
    heavy = {name: _du_mb(full_site / name) for name in ("torch", "torchvision", "open_clip", "nvidia", "triton")
             if (full_site / name).exists()}
    return {"serve_only_site_packages_mb": _du_mb(serve_site), "full_site_packages_mb": _du_mb(full_site),
            "full_env": "this benchmark's environment (index, serve, test and distributed extras)",
            "heaviest_in_full_mb": heavy}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--factory", default="auto",
                        help="index factory; auto (default): the index_select pick under configs/index.yaml")
    parser.add_argument("--rebuild", action="store_true", help="publish again even if the store has a version")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="ViT-B-32", help="tiny | an open_clip model (random init)")
    parser.add_argument("--queries", type=int, default=1000, help="distinct queries before reading the RSS")
    parser.add_argument("--install-sizes", action="store_true", help="also build a serve-only virtualenv")
    parser.add_argument("--work", type=Path, default=OUT / "cold_start")
    args = parser.parse_args()
    ckpt = checkpoint(args.model)
    store = args.work / f"store-{args.model}-{args.n}-{args.factory.replace(',', '_')}"
    from search.artifact.version import current_path

    if args.rebuild or not current_path(store).is_dir():
        factory = None if args.factory == "auto" else args.factory
        version, publish_s = publish(store, args.n, factory, args.model, ckpt, args.work / "onnx-cache")
    else:  # the store is the same seeded build: publishing it again only costs minutes
        version, publish_s = current_path(store).resolve().name, float("nan")
    factory = json.loads((current_path(store) / "manifest.json").read_text())["index"]["factory"]

    floor_s, done = timed_run([sys.executable, "-c", FLOOR, str(current_path(store))])
    stack_floor_s, _ = timed_run([sys.executable, "-c", FLOOR_STACK, str(current_path(store))])
    imports_s, _ = timed_run([sys.executable, "-c", "import onnxruntime, tokenizers, fastapi, uvicorn, faiss"])
    torch_imports_s, _ = timed_run([sys.executable, "-c",
                                    "import torch, open_clip, onnxruntime, fastapi, uvicorn, faiss"])
    starts = [start_service(store, args.work / "service.json") for _ in range(args.repeats)]
    starts.append(start_service(store, args.work / "service.json", queries=args.queries))
    warm = min(s["startup_s"] for s in starts[1:])
    result = {"benchmark": "cold_start", "machine": machine(), "model": args.model, "vectors": args.n,
              "factory": factory,
              "version": version, "publish_s": round(publish_s, 1),
              "floor_process_s": round(floor_s, 2), "floor_load_s": round(float(done.stdout.strip()), 3),
              "imports_process_s": round(imports_s, 2), "imports_with_torch_process_s": round(torch_imports_s, 2),
              "stack_floor_process_s": round(stack_floor_s, 2),
              "starts": starts, "startup_s": warm, "ratio_to_floor": round(warm / floor_s, 2),
              "ratio_to_stack_floor": round(warm / stack_floor_s, 2),
              "rss_mb_after_queries": starts[-1].get("rss_mb_after_queries"),
              "targets": {"startup_s_max": 1.5, "ratio_to_floor_max": 1.6},
              "load_average_at_end": round(os.getloadavg()[0], 2)}
    if args.install_sizes:
        result["install"] = install_sizes(args.work)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
