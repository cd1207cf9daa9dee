"""Service area: the HTTP API through FastAPI's TestClient against a real published store and the real
tiny encoder (search, cache hits, filters, similar/image search, images, health, readiness, metrics, docs)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from search.artifact.version import open_current
from search.http.app import create_app
from tests.service_support import copy_store, encoder_for, publish, runtime_for, settings_for


@pytest.fixture(scope="module")
def client(world):
    app = create_app(settings_for(world), encoder=runtime_for(world))
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        yield client


def _caption(world, i=0):
    return world.queries[i]["query"]


def test_get_search_returns_hits_timings_and_server_timing(client, world):
    r = client.get("/search", params={"q": _caption(world), "k": 7})
    assert r.status_code == 200
    body = r.json()
    assert len(body["hits"]) == 7 and body["k"] == 7 and body["total"] >= 7
    assert body["version"] == open_current(world.store).version
    hit = body["hits"][0]
    assert set(hit) >= {"id", "score", "path", "url", "width", "height", "caption"}
    assert hit["path"] in world.ids_by_path and world.ids_by_path[hit["path"]] == hit["id"]
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert {"embed", "ann", "rerank", "total"} <= set(body["timings_ms"])
    assert "ann;dur=" in r.headers["server-timing"] and "total;dur=" in r.headers["server-timing"]


def test_results_equal_exact_search_over_the_artifact(client, world):
    """Flat index + exact rerank: the service's top-k is the exact top-k of the float16 vectors."""
    encoder = encoder_for(world.checkpoint)
    with open_current(world.store) as artifact:
        for query in [q["query"] for q in world.queries[:5]]:
            _, ids = artifact.exact_search(encoder.encode_texts([query]), 10)
            got = [h["id"] for h in client.get("/search", params={"q": query, "k": 10}).json()["hits"]]
            assert got == ids[0].tolist()


def test_repeated_query_is_a_cache_hit_with_identical_results(client, world):
    query = _caption(world, 1) + " (cache test)"
    first = client.get("/search", params={"q": query}).json()
    second = client.get("/search", params={"q": "  " + query.upper() + " "}).json()  # same normalised key
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert second["hits"] == first["hits"]
    assert "encode" in first["timings_ms"] and "encode" not in second["timings_ms"]


def test_pagination_continues_the_ranking(client, world):
    full = client.get("/search", params={"q": _caption(world), "k": 12}).json()["hits"]
    page2 = client.get("/search", params={"q": _caption(world), "k": 6, "offset": 6}).json()["hits"]
    assert [h["id"] for h in page2] == [h["id"] for h in full[6:12]]


def test_post_search_filters_are_applied_without_starving_k(client, world):
    body = {"query": _caption(world), "k": 10, "filters": {"licence": ["CC0-1.0"], "orientation": "landscape"}}
    r = client.post("/search", json=body)
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert len(hits) == 10 and all(h["licence"] == "CC0-1.0" for h in hits)
    none = client.post("/search", json={**body, "filters": {"orientation": "portrait"}}).json()
    assert none["hits"] == [] and none["total"] == 0


def test_post_search_tags_min_score_dedup_diversity(client, world):
    tag = client.get("/search", params={"q": "x", "k": 1}).json()["hits"][0]["tags"][0]
    hits = client.post("/search", json={"query": "x", "k": 5, "filters": {"tags": [tag]}}).json()["hits"]
    assert hits and all(tag in h["tags"] for h in hits)
    base = client.post("/search", json={"query": _caption(world), "k": 10}).json()["hits"]
    cutoff = base[4]["score"]
    cut = client.post("/search", json={"query": _caption(world), "k": 10, "min_score": cutoff}).json()["hits"]
    assert [h["id"] for h in cut] == [h["id"] for h in base if h["score"] >= cutoff]


@pytest.fixture(scope="module")
def near_copies(world, tmp_path_factory):
    """A private copy of the world store whose best image for query 0 has three near-copies (cosine ~0.997
    to it, above the 0.98 dedup threshold): the three images least like the query get its vector plus a
    little seeded noise. Returns (a client on that store, the best id, the copies' ids)."""
    store = copy_store(world, tmp_path_factory.mktemp("near-copies") / "store")
    encoder = encoder_for(world.checkpoint)
    vectors = np.load(world.store / "vectors.npy").astype(np.float32)
    ids = sorted(world.ids_by_path.values())
    order = np.argsort(-(vectors @ encoder.encode_texts([_caption(world)])[0]))
    best, copies = int(order[0]), [int(row) for row in order[-3:]]
    rng = np.random.default_rng(0)
    for row in copies:
        v = vectors[best] + 0.01 * rng.standard_normal(vectors.shape[1])
        vectors[row] = v / np.linalg.norm(v)
    publish(store, world.image_root, encoder, store / "metadata.sqlite", ids, vectors, onnx_cache=world.onnx_cache)
    app = create_app(settings_for(world, store=store), encoder=runtime_for(world))
    with TestClient(app, client=("127.0.0.1", 5000)) as near:
        yield near, ids[best], {ids[row] for row in copies}


def test_dedup_collapses_near_copies_and_diversity_reorders(near_copies, world):
    """The request's `dedup` and `diversity` reach the rerank: without them the image and its near-copies
    crowd the top of the page; dedup keeps the first of them and the ranking of the rest; MMR (diversity 0.9)
    keeps the first and pushes the others off the page."""
    client, best, copies = near_copies
    group = copies | {best}
    search = lambda **extra: [h["id"] for h in client.post(  # noqa: E731
        "/search", json={"query": _caption(world), "k": 10, **extra}).json()["hits"]]
    plain, longer = search(), search(k=20)
    assert group <= set(plain), "the near-copies should rank with their original"
    first = next(i for i in plain if i in group)
    deduped = search(dedup=True)
    assert group & set(deduped) == {first} and len(deduped) == 10
    assert deduped == [i for i in longer if i in set(deduped)]  # the survivors keep their order
    diverse = search(diversity=0.9)
    assert diverse[0] == plain[0] and group & set(diverse) <= {first} and len(diverse) == 10


def test_similar_uses_stored_embedding_and_excludes_itself(client, world):
    image_id = next(iter(world.ids_by_path.values()))
    with open_current(world.store) as artifact:
        _, ids = artifact.exact_search(artifact.vectors_for([image_id]), 6)
    body = client.get(f"/search/similar/{image_id}", params={"k": 5}).json()
    assert [h["id"] for h in body["hits"]] == [i for i in ids[0].tolist() if i != image_id][:5]


def test_image_upload_search_finds_the_uploaded_image(client, world):
    path, image_id = next(iter(world.ids_by_path.items()))
    data = (world.image_root / path).read_bytes()
    r = client.post("/search/image", files={"file": ("q.jpg", data, "image/jpeg")}, params={"k": 3})
    assert r.status_code == 200
    assert r.json()["hits"][0]["id"] == image_id


def test_uploads_encode_through_the_artifacts_onnx_tower_like_the_torch_tower(client, world):
    from PIL import Image

    state = client.app.state.service
    path = next(iter(world.ids_by_path))
    with Image.open(world.image_root / path) as im:
        rgb = im.convert("RGB")
    torch_vector = encoder_for(world.checkpoint).encode_images([rgb])[0]
    np.testing.assert_allclose(state.encode_image(rgb), torch_vector, atol=1e-5, rtol=0)


def test_images_and_thumbnails_are_served_by_id(client, world):
    from PIL import Image

    path, image_id = next(iter(world.ids_by_path.items()))
    full = client.get(f"/images/{image_id}")
    assert full.status_code == 200 and full.content == (world.image_root / path).read_bytes()
    thumb = client.get(f"/images/{image_id}", params={"thumb": 1})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 256
    assert client.get("/images/999999").status_code == 404


def test_health_ready_docs_and_page(client, world):
    assert client.get("/healthz").json() == {"status": "ok", "pid": os.getpid()}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["vectors"] == len(world.ids_by_path) and ready["last_reload_error"] is None
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/search/image", "/search/similar/{image_id}", "/images/{image_id}"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text


def test_metrics_expose_stages_cache_batches_and_version(client, world):
    client.get("/search", params={"q": "metrics probe"})
    client.get("/search", params={"q": "metrics probe"})
    text = client.get("/metrics").text
    version = open_current(world.store).version
    assert f'photostock_index_info{{version="{version}"}} 1.0' in text
    assert 'photostock_query_cache_total{result="hit"}' in text
    assert 'photostock_stage_seconds_count{stage="ann"}' in text
    assert "photostock_encode_batch_size_count" in text
    assert 'photostock_request_seconds_count{route="/search",status="200"}' in text


def test_warm_up_file_fills_the_cache(world, tmp_path):
    warm = tmp_path / "frequent.txt"
    warm.write_text("warm query one\nWarm  Query one\nwarm query two\n")
    settings = settings_for(world)
    settings = settings.model_copy(update={"cache": settings.cache.model_copy(update={"warmup_file": warm})})
    with TestClient(create_app(settings, encoder=runtime_for(world))) as client:
        assert client.get("/search", params={"q": "warm query two"}).json()["cache"] == "hit"
        assert client.get("/search", params={"q": "WARM query ONE"}).json()["cache"] == "hit"


def test_serves_with_no_model_settings_and_reports_its_encoder(world):
    with TestClient(create_app(settings_for(world))) as client:  # the encoder comes from the artifact
        assert client.get("/readyz").json()["ready"]
        assert client.get("/search", params={"q": _caption(world)}).status_code == 200
        identity = client.app.state.service.identity
        assert identity == encoder_for(world.checkpoint).identity
        assert f'key="{identity.key}"' in client.get("/metrics").text


def test_optional_query_log_records_each_answered_search(world, tmp_path):
    from search.query.log import read_query_log

    log_path = tmp_path / "queries.jsonl"
    settings = settings_for(world).model_copy(update={"query_log": log_path})
    app = create_app(settings, encoder=runtime_for(world))
    query = _caption(world, 2)
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        first = client.get("/search", params={"q": query, "k": 5}).json()
        client.get("/search", params={"q": query, "k": 5})
        client.get(f"/search/similar/{first['hits'][0]['id']}", params={"k": 3})
        assert client.get("/search", params={"q": ""}).status_code == 422  # rejected: not logged
    records = list(read_query_log(log_path))
    assert [(r["kind"], r["query"], r["cache_hit"], r["results"]) for r in records] == [
        ("text", query, False, 5), ("text", query, True, 5), ("similar", None, None, 3)]
    assert all(r["version"] == first["version"] and r["total"] >= r.get("ann", 0) for r in records)


def test_int8_text_tower_is_a_runtime_option(world):
    from search.settings import RuntimeSettings

    settings = settings_for(world, runtime=RuntimeSettings(text_precision="int8"))
    with TestClient(create_app(settings)) as client:
        r = client.get("/search", params={"q": _caption(world), "k": 10})
        assert r.status_code == 200 and r.json()["hits"]
        state = client.app.state.service
        assert state.encoder.current.options.text_precision == "int8"
        texts = [q["query"] for q in world.queries[:20]]
        int8 = state.encoder.encode(texts)
        fp32 = runtime_for(world).encode_texts(texts)
        assert not np.array_equal(int8, fp32)  # really the quantised graph
        assert float(np.sum(int8 * fp32, axis=1).mean()) > 0.98
        assert 'precision="int8"' in client.get("/metrics").text
