"""Search-service test support (service area): a small synthetic-world store published with the real
publish function, the real tiny encoder, settings, and a real uvicorn subprocess.

The store is built once per test session and shared read-only; tests that publish or corrupt versions copy it
first. When the trained tiny checkpoint is absent, a seeded random-init checkpoint file stands in for it, so
the indexing side and a server subprocess load byte-identical weights.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.models import registry
from indexer.models.clip import ClipEncoder, load_encoder
from search.runtime.towers import RuntimeEncoder, RuntimeOptions
from search.settings import AccessSettings, ReloadSettings, RuntimeSettings, Settings
from tests.metadata_support import MetaRow, write_metadata

ROOT = Path(__file__).resolve().parent.parent
GALLERY = 96
IMAGE_SIZE = (64, 48)  # landscape, so the orientation filter has something to say
# Host names the service allows in tests: the loopback default plus the in-process clients' own names
# (Starlette's TestClient sends `Host: testserver`, httpx's ASGITransport the base URL's host).
TEST_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver", "test"]


@dataclass(frozen=True)
class WorldStore:
    store: Path
    image_root: Path
    checkpoint: Path
    onnx_cache: Path
    queries: list[dict]
    ids_by_path: dict[str, int]


_ENCODERS: dict[str, ClipEncoder] = {}
_RUNTIME: dict[str, RuntimeEncoder] = {}
_STORE: list[WorldStore] = []


def tiny_checkpoint(base: Path) -> Path:
    """The trained checkpoint when it exists, else a seeded random-init one written under `base`."""
    trained = registry.tiny_checkpoint_path()
    if trained.is_file():
        return trained
    path = base / "tiny-random.pt"
    if not path.is_file():
        import torch

        torch.manual_seed(0)
        encoder = load_encoder("tiny", pretrained="random", device="cpu")
        torch.save(encoder.model.state_dict(), path)
    return path


def encoder_for(checkpoint: Path) -> ClipEncoder:
    key = str(checkpoint)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_encoder("tiny", pretrained=key, device="cpu")
    return _ENCODERS[key]


def _write_metadata(db: Path, image_root: Path, records: list[dict]) -> list[int]:
    """The world's records as indexed rows (the indexer's schema and writers); ids are not row numbers."""
    ids = [10 + 3 * i for i in range(len(records))]  # catches id/row mix-ups
    write_metadata(db, [
        MetaRow(image_id, rec["path"], IMAGE_SIZE[0], IMAGE_SIZE[1],
                {"caption": rec["caption"], "tags": rec["tags"], "licence": rec["licence"],
                 "popularity": rec["popularity"]},
                created_at=f"2024-{1 + i % 12:02d}-15T00:00:00+00:00")
        for i, (image_id, rec) in enumerate(zip(ids, records, strict=True))
    ], meta={"image_root": str(image_root)})
    return ids


def publish(store: Path, image_root: Path, encoder: ClipEncoder, db: Path, ids: list[int],
            vectors: np.ndarray, factory: str | None = None, onnx_cache: Path | None = None, shards: int = 1) -> str:
    """Publish one version (`shards` parts), with its encoder files, by the indexer's own functions; returns the
    version name."""
    from indexer.index.index_select import IndexConfig
    from indexer.index.publish import publish_version
    from indexer.models.export import export_bundle

    config = IndexConfig(recall_queries=40, latency_queries=10, use_gpu=False, rerank_candidates=(50,),
                         keep_versions=10, factory=factory, shards=shards)
    published = publish_version(store, np.asarray(ids, np.int64), vectors, db, encoder.identity, image_root,
                                config, {"indexed": len(ids), "failed": 0, "deleted": 0}, {},
                                encoder_files=export_bundle(encoder, store, onnx_cache or store.parent / "onnx-cache"))
    return published.name


def world_store(base: Path) -> WorldStore:
    """Build (once per session) world images -> encoder -> metadata -> published version."""
    if _STORE:
        return _STORE[0]
    from PIL import Image

    from indexer.lab.world import write_world

    write_world(base / "world", seed=0, gallery=GALLERY, size=IMAGE_SIZE)
    image_root = base / "world" / "gallery"
    records = [json.loads(line) for line in (image_root / "metadata.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (base / "world" / "queries.jsonl").read_text().splitlines()]
    checkpoint = tiny_checkpoint(base)
    encoder = encoder_for(checkpoint)
    images = [Image.open(image_root / r["path"]).convert("RGB") for r in records]
    vectors = encoder.encode_images(images)
    store = base / "store"
    store.mkdir()
    ids = _write_metadata(store / "metadata.sqlite", image_root, records)
    np.save(store / "vectors.npy", vectors)
    publish(store, image_root, encoder, store / "metadata.sqlite", ids, vectors, onnx_cache=base / "onnx-cache")
    _STORE.append(WorldStore(store, image_root, checkpoint, base / "onnx-cache", queries,
                             {r["path"]: i for r, i in zip(records, ids, strict=True)}))
    return _STORE[0]


def copy_store(world: WorldStore, target: Path) -> Path:
    """A private copy of the shared store (tests that publish or break versions work on this)."""
    shutil.copytree(world.store, target, symlinks=True)
    for path in (target / "versions").iterdir():
        path.chmod(0o755)
    return target


def sharded_copy(world: WorldStore, target: Path, shards: int) -> Path:
    """A private copy of the shared store whose current version is the same catalogue in `shards` parts."""
    from search.artifact.version import open_current

    store = copy_store(world, target)
    with open_current(world.store) as artifact:
        ids = [int(i) for i in artifact.ids]
    publish(store, world.image_root, encoder_for(world.checkpoint), store / "metadata.sqlite", ids,
            np.load(store / "vectors.npy"), onnx_cache=world.onnx_cache, shards=shards)
    return store


def runtime_for(world: WorldStore) -> RuntimeEncoder:
    """The runtime encoder of the shared store's current version (loaded once; shared by in-process apps)."""
    key = str(world.store)
    if key not in _RUNTIME:
        from search.artifact.version import open_current

        with open_current(world.store) as artifact:
            assert artifact.encoder_bundle is not None
            _RUNTIME[key] = RuntimeEncoder.load(artifact.encoder_bundle, RuntimeOptions(text_precision="fp32"))
    return _RUNTIME[key]


def settings_for(world: WorldStore, store: Path | None = None, **sections: object) -> Settings:
    """No model settings: the service takes its encoder from the store. fp32 text tower: these tests compare
    the service with exact search over open_clip's own query vectors (int8: test_service_api)."""
    access = sections.pop("access", AccessSettings())
    if "allowed_hosts" not in access.model_fields_set:  # type: ignore[attr-defined]
        access = access.model_copy(update={"allowed_hosts": TEST_HOSTS})  # type: ignore[attr-defined]
    base = Settings(store=store or world.store, reload=ReloadSettings(watch=False),
                    runtime=RuntimeSettings(text_precision="fp32"), access=access)
    return base.model_copy(update=sections)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`python -m search serve` in a subprocess; started() returns once uvicorn says it is listening."""

    def __init__(self, settings: Settings, config_path: Path):
        config_path.write_text(json.dumps(settings.model_dump(mode="json", exclude={"store"})))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "search", "serve", "--store", str(settings.store), "--config",
             str(config_path), "--port", str(self.port), "--log-level", "info"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.log: list[str] = []

    def started(self) -> ServerProcess:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # blocks on the server's own log: no polling, no sleeps
            self.log.append(line)
            if "Uvicorn running on" in line:  # logged after the bind; startup-complete comes before it
                threading.Thread(target=self._drain, daemon=True).start()  # a full pipe would block the server
                return self
        raise RuntimeError("server exited during startup:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return "".join(self.log)


@contextmanager
def running_server(settings: Settings, config_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(settings, config_path).started()
    try:
        yield server
    finally:
        server.stop()
