"""Service area: index updates without downtime. A real uvicorn subprocess serves a request stream while new
versions are published and reloaded; no request is lost, a corrupt version is refused and the old keeps
serving. Plus the lease rule in-process: the old artifact is released only after its last request."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from indexer.index.publish import flip_current
from search.artifact.reload import ArtifactHolder
from search.artifact.version import open_current
from search.settings import ReloadSettings
from tests.service_support import (
    copy_store,
    encoder_for,
    publish,
    running_server,
    settings_for,
)


def _republish(world, store: Path, factory: str | None = None) -> str:
    vectors = np.load(world.store / "vectors.npy")
    ids = sorted(world.ids_by_path.values())
    return publish(store, world.image_root, encoder_for(world.checkpoint), store / "metadata.sqlite", ids,
                   vectors, factory=factory)


def _corrupt_copy(store: Path, version: str) -> Path:
    bad = store / "versions" / (version + "-corrupt")
    shutil.copytree(store / "versions" / version, bad)
    index = bad / "index.faiss"
    index.chmod(0o644)
    index.write_bytes(index.read_bytes()[:100])  # truncated: the manifest's size check catches it
    return bad


class Stream:
    """Client threads sending searches back to back until stopped; records (status, version) of each."""

    def __init__(self, url: str, queries: list[str], threads: int = 3):
        self.url, self.queries = url, queries
        self.results: list[tuple[int, str | None]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = seed
            while not self.stop.is_set():
                r = client.get("/search", params={"q": self.queries[i % len(self.queries)], "k": 5})
                version = r.json().get("version") if r.status_code == 200 else None
                with self.lock:
                    self.results.append((r.status_code, version))
                i += 1

    def versions_seen(self) -> set[str | None]:
        with self.lock:
            return {v for _, v in self.results}

    def __enter__(self) -> Stream:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def _until(condition, client: httpx.Client, deadline_s: float = 60.0) -> None:
    """Wait for a server-side condition by making requests (each one is real work), bounded by a deadline."""
    import time

    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not reached before the deadline"
        client.get("/healthz")


def test_reload_under_load_loses_no_request_and_refuses_corrupt(world, tmp_path):
    store = copy_store(world, tmp_path / "store")
    old = open_current(store).version
    settings = settings_for(world, store=store, reload=ReloadSettings(watch=True, poll_s=0.2))
    queries = [q["query"] for q in world.queries[:8]]
    with running_server(settings, tmp_path / "service.json") as server:
        with httpx.Client(base_url=server.url, timeout=30) as admin, Stream(server.url, queries) as stream:
            _until(lambda: len(stream.results) >= 10, admin)
            # 1. publish + explicit reload while requests are in flight
            new = _republish(world, store, factory="HNSW16")
            r = admin.post("/admin/reload", json={})
            assert r.status_code == 200 and r.json()["version"] == new
            _until(lambda: new in stream.versions_seen(), admin)
            # 2. a corrupt version is refused; the new one keeps serving
            flip_current(store, _corrupt_copy(store, new))
            refused = admin.post("/admin/reload", json={})
            assert refused.status_code == 409 and "truncated" in refused.json()["error"]
            ready = admin.get("/readyz").json()
            assert ready["ready"] and ready["version"] == new and "truncated" in ready["last_reload_error"]
            metrics = admin.get("/metrics").text
            assert "photostock_reload_failed 1.0" in metrics and 'photostock_reload_error{reason="' in metrics
            # 3. the watcher picks up the next good version by itself
            newest = _republish(world, store)
            _until(lambda: admin.get("/readyz").json()["version"] == newest, admin)
            _until(lambda: newest in stream.versions_seen(), admin)
            count_before_stop = len(stream.results)
        log = server.stop()
    statuses = Counter(status for status, _ in stream.results)
    assert statuses == Counter({200: len(stream.results)}), statuses
    assert {old, new, newest} <= stream.versions_seen()
    assert count_before_stop > 20
    assert "Traceback" not in log


def test_old_artifact_released_after_its_last_lease(world, tmp_path):
    store = copy_store(world, tmp_path / "store")
    holder = ArtifactHolder(store, encoder_for(world.checkpoint).identity)
    assert holder.reload().loaded
    with holder.lease() as old:
        new_version = _republish(world, store)
        assert holder.reload().version == new_version
        assert old.metadata([int(old.ids[0])])  # the in-flight request still reads the old version
        assert old._connections  # noqa: SLF001 - still open while leased
    assert not old._connections  # noqa: SLF001 - closed once the lease ended
    with holder.lease() as current:
        assert current.version == new_version
    holder.close()


def test_reload_of_same_target_is_a_no_op_and_missing_current_is_reported(world, tmp_path):
    store = copy_store(world, tmp_path / "store")
    holder = ArtifactHolder(store, encoder_for(world.checkpoint).identity)
    first = holder.reload()
    assert first.loaded and not holder.reload().loaded and holder.version == first.version
    (store / "current").unlink()
    outcome = holder.reload()
    assert outcome.error and "does not exist" in outcome.error and holder.version == first.version
    holder.close()


def test_configured_ann_params_that_do_not_fit_the_index_are_refused(world, tmp_path):
    store = copy_store(world, tmp_path / "store")  # the shared store's index is Flat: it takes no parameters
    holder = ArtifactHolder(store, encoder_for(world.checkpoint).identity, ann_params={"nprobe": 8})
    outcome = holder.reload()
    assert not outcome.loaded and "ann_params" in outcome.error and holder.version is None
    hnsw = _republish(world, store, factory="HNSW16")
    holder.ann_params = {"efSearch": 64}
    assert holder.reload().version == hnsw
    holder.close()
