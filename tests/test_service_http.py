"""Service area, real HTTP: held-out captions of the synthetic world through a real uvicorn process, on a
store built by the indexer pipeline and on an HNSW version.
R@10 over HTTP equals R@10 of exact search over the same artifact (within 0.5 points), and concurrent
micro-batched requests return what exact, unbatched search returns."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from search.artifact.version import open_current
from search.settings import BatchSettings, RankSettings
from tests.service_support import copy_store, encoder_for, publish, running_server, settings_for


def _hnsw_store(world, base):
    """The session store plus an HNSW version published on top (a real ANN stage)."""
    store = copy_store(world, base / "store")
    publish(store, world.image_root, encoder_for(world.checkpoint), store / "metadata.sqlite",
            sorted(world.ids_by_path.values()), np.load(world.store / "vectors.npy"), factory="HNSW16")
    return store


def _pipeline_store(world, base):
    """The same images indexed end to end by the indexer pipeline (scan, decode workers, encode, publish)."""
    from indexer.run.pipeline import run_build
    from indexer.settings import load_settings

    settings = load_settings(None, {"model": "tiny", "pretrained": str(world.checkpoint), "device": "cpu",
                                    "workers": 1})
    run_build(world.image_root, base / "store", settings, encoder_for(world.checkpoint))
    return base / "store"


@pytest.fixture(scope="module", params=["indexer-pipeline", "hnsw-publish"])
def server(world, tmp_path_factory, request):
    """`python -m search serve` on a store built by the indexer pipeline, or on an HNSW version."""
    base = tmp_path_factory.mktemp("http")
    store = _pipeline_store(world, base) if request.param == "indexer-pipeline" else _hnsw_store(world, base)
    # efSearch per call from config: with the random-init stand-in model (used when the trained checkpoint is
    # absent) vectors cluster so tightly that the tuned graph search would test that model, not the service.
    rank = RankSettings(ann_params={"efSearch": 128}) if request.param == "hnsw-publish" else RankSettings()
    settings = settings_for(world, store=store, batching=BatchSettings(window_ms=20, max_batch=16), rank=rank)
    with running_server(settings, base / "service.json") as proc:
        yield proc, store


def _recall_at_10(found_paths: list[str], relevant: list[str]) -> float:
    return len(set(found_paths[:10]) & set(relevant)) / min(10, len(relevant))


def test_held_out_recall_over_http_equals_exact_search(world, server):
    proc, store = server
    held_out = [q for q in world.queries if q["unseen"]] or world.queries
    encoder = encoder_for(world.checkpoint)
    with open_current(store) as artifact, httpx.Client(base_url=proc.url, timeout=30) as client:
        assert len(artifact.ids) == len(world.ids_by_path)
        _, exact_ids = artifact.exact_search(encoder.encode_texts([q["query"] for q in held_out]), 10)
        http_recall, exact_recall = [], []
        for q, ids in zip(held_out, exact_ids, strict=True):
            r = client.get("/search", params={"q": q["query"], "k": 10})
            assert r.status_code == 200
            http_recall.append(_recall_at_10([h["path"] for h in r.json()["hits"]], q["relevant"]))
            exact_paths = [m["path"] for m in artifact.metadata([int(i) for i in ids if i >= 0])]
            exact_recall.append(_recall_at_10(exact_paths, q["relevant"]))
    http_r10, exact_r10 = 100 * np.mean(http_recall), 100 * np.mean(exact_recall)
    print(f"held-out R@10 over HTTP {http_r10:.2f}, exact search {exact_r10:.2f} ({len(held_out)} queries, "
          f"{artifact.manifest.index.factory})")
    assert abs(http_r10 - exact_r10) <= 0.5, (http_r10, exact_r10)


def test_concurrent_batched_requests_equal_exact_unbatched(world, tmp_path):
    """On the shared Flat store, where the ANN stage is exact, so any difference would come from batching."""
    queries = [f"{q['query']} #{i}" for i, q in enumerate(world.queries[:16])]  # fresh: all cache misses
    encoder = encoder_for(world.checkpoint)

    def ask(query: str) -> list[int]:
        with httpx.Client(base_url=proc.url, timeout=30) as client:
            r = client.get("/search", params={"q": query, "k": 5})
            assert r.status_code == 200 and r.json()["cache"] == "miss"
            return [h["id"] for h in r.json()["hits"]]

    settings = settings_for(world, batching=BatchSettings(window_ms=20, max_batch=16))
    with running_server(settings, tmp_path / "service.json") as proc:
        with ThreadPoolExecutor(max_workers=len(queries)) as pool:
            got = list(pool.map(ask, queries))
        metrics = httpx.get(f"{proc.url}/metrics").text
    assert 'photostock_query_cache_total{result="miss"} 16.0' in metrics
    with open_current(world.store) as artifact:
        _, want = artifact.exact_search(encoder.encode_texts(queries), 5)
    assert got == want.tolist()
