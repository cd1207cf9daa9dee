"""Service area: every bad input gets its 4xx status and a JSON error, never a 500, and the server keeps
serving; no index -> 503; an artifact from another encoder is refused with a clear reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.models.clip import load_encoder
from search.http.app import create_app
from search.settings import EncoderSettings, LimitSettings, ReloadSettings
from tests.service_support import copy_store, publish, runtime_for, settings_for

MAX_BYTES = 20_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def client(world):
    settings = settings_for(world, limits=LimitSettings(max_upload_bytes=MAX_BYTES, max_upload_pixels=MAX_PIXELS,
                                                        max_query_chars=64, max_k=50, max_offset=100))
    with TestClient(create_app(settings, encoder=runtime_for(world)),
                    client=("203.0.113.9", 4000), raise_server_exceptions=False) as client:
        yield client


def _png(width: int, height: int, mode: str = "1") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, format="PNG", optimize=True)
    return out.getvalue()


BAD_GETS = [
    ("/search", {}),                                 # q missing
    ("/search", {"q": ""}),
    ("/search", {"q": " \t "}),
    ("/search", {"q": "x" * 65}),                    # over max_query_chars
    ("/search", {"q": "cat", "k": 0}),
    ("/search", {"q": "cat", "k": 51}),              # over max_k
    ("/search", {"q": "cat", "k": "ten"}),
    ("/search", {"q": "cat", "offset": -1}),
    ("/search", {"q": "cat", "offset": 101}),        # over max_offset
    ("/search/similar/notanid", {}),
    ("/images/abc", {}),
]


@pytest.mark.parametrize("path,params", BAD_GETS)
def test_invalid_get_parameters_are_422_json(client, path, params):
    r = client.get(path, params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/json") and "error" in r.json()


BAD_POSTS = [
    {"k": 5},                                                   # query missing
    {"query": ""},
    {"query": "x" * 65},
    {"query": "cat", "k": 0},
    {"query": "cat", "filters": {"colour": "red"}},             # unknown filter
    {"query": "cat", "filters": {"orientation": "diagonal"}},
    {"query": "cat", "filters": {"created_after": "not a date"}},
    {"query": "cat", "diversity": 1.5},
    {"query": "cat", "min_score": "high"},
    {"query": "cat", "surprise": True},                         # unknown field
    {"query": 42},
]


@pytest.mark.parametrize("body", BAD_POSTS)
def test_invalid_post_bodies_are_422_json(client, body):
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert "error" in r.json()


def test_malformed_json_is_422(client):
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()


@pytest.mark.parametrize("payload,status", [
    (b"\x00" * (MAX_BYTES + 1), 413),                   # oversized: refused while reading the part
    (b"\x00" * (MAX_BYTES + 100_000), 413),             # far over: refused from Content-Length, unparsed
    (b"this is not an image at all", 400),
    (b"", 400),
    (_png(6_000, 6_000), 413),                           # bomb: a few kB, 36 Mpx, refused from the header
    (_png(64, 64, "RGB")[:60], 400),                      # truncated
])
def test_bad_uploads(client, payload, status):
    r = client.post("/search/image", files={"file": ("x.png", payload, "image/png")})
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_upload_without_file_is_422(client):
    assert client.post("/search/image").status_code == 422
    assert client.post("/search/image", files={"other": ("x.png", b"abc", "image/png")}).status_code == 422
    assert client.post("/search/image", json={"file": "abc"}).status_code == 422
    broken = client.post("/search/image", content=b"--xyz\r\nnonsense",
                         headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert broken.status_code in (400, 422) and "error" in broken.json()


def test_unknown_ids_and_routes_are_404_json(client):
    for path in ("/search/similar/999999", "/images/999999", "/no/such/route", "/images/..%2F..%2Fetc%2Fpasswd"):
        r = client.get(path)
        assert r.status_code in (404, 422), path
        assert "error" in r.json()


def test_admin_reload_refused_from_elsewhere(client):
    r = client.post("/admin/reload", json={})
    assert r.status_code == 403 and "localhost" in r.json()["error"]


def _errors_422(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('photostock_errors_total{kind="422"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_server_keeps_serving_after_bad_input(client, world):
    """Its own bad requests first (alone or after any other test): each is counted, and the next good query
    is answered."""
    before = _errors_422(client)
    for path, params in BAD_GETS[:3]:
        assert client.get(path, params=params).status_code == 422
    r = client.get("/search", params={"q": world.queries[0]["query"]})
    assert r.status_code == 200 and r.json()["hits"]
    assert _errors_422(client) == before + 3
    assert 'status="500"' not in client.get("/metrics").text


def test_no_index_is_503(world, tmp_path):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    with TestClient(create_app(settings_for(world, store=empty), encoder=runtime_for(world))) as c:
        r = c.get("/search", params={"q": "cat"})
        assert r.status_code == 503 and "no index" in r.json()["error"]
        assert c.post("/search", json={"query": "cat"}).status_code == 503
        assert c.get("/search/similar/10").status_code == 503
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "does not exist" in ready.json()["last_reload_error"]
        assert c.get("/healthz").status_code == 200


def _other_encoder(tmp_path):
    import torch

    torch.manual_seed(99)
    other = load_encoder("tiny", pretrained="random", device="cpu")
    path = tmp_path / "other.pt"
    torch.save(other.model.state_dict(), path)
    return load_encoder("tiny", pretrained=str(path), device="cpu")


def test_version_with_another_encoder_is_refused_while_the_old_keeps_serving(world, tmp_path):
    store = copy_store(world, tmp_path / "store")
    with TestClient(create_app(settings_for(world, store=store)), base_url="http://localhost",
                    client=("127.0.0.1", 5000)) as c:
        served = c.get("/readyz").json()["version"]
        other = _other_encoder(tmp_path)
        ids = sorted(world.ids_by_path.values())
        vectors = np.load(world.store / "vectors.npy")
        publish(store, world.image_root, other, store / "metadata.sqlite", ids, vectors, onnx_cache=tmp_path / "onnx")
        refused = c.post("/admin/reload", json={})
        assert refused.status_code == 409 and "another encoder" in refused.json()["error"]
        ready = c.get("/readyz").json()
        assert ready["version"] == served and "checksum" in ready["last_reload_error"]
        assert "photostock_reload_failed 1.0" in c.get("/metrics").text
        assert c.get("/search", params={"q": "cat"}).json()["version"] == served


def test_pinned_encoder_mismatch_is_a_clear_refusal(world):
    settings = settings_for(world, encoder=EncoderSettings(model="ViT-B-32"))
    with TestClient(create_app(settings)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert "does not have the configured encoder" in ready.json()["last_reload_error"]
        assert "ViT-B-32" in ready.json()["last_reload_error"]
        assert c.get("/search", params={"q": "cat"}).status_code == 503


def test_image_the_preprocess_cannot_read_is_a_400_with_its_reason(client):
    from PIL import Image

    from search.runtime.uploads import UploadRejected

    with pytest.raises(UploadRejected) as refused:
        client.app.state.service.encode_image(Image.new("RGB", (0, 5)))
    assert refused.value.status == 400 and "cannot be preprocessed" in str(refused.value)


@pytest.mark.parametrize("query", ["&nbsp;", " &nbsp; &#160; ", "&amp;nbsp;"])
def test_query_that_tokenizes_to_nothing_is_422(client, query):
    r = client.get("/search", params={"q": query})
    assert r.status_code == 422 and "tokenizes to nothing" in r.json()["error"]


def test_a_cached_query_skips_the_token_check(client, monkeypatch):
    assert client.get("/search", params={"q": "a red circle on grass"}).status_code == 200
    loaded = client.app.state.service.encoder.loaded
    checked: list[str] = []
    real = loaded.has_tokens

    def recording(text: str) -> bool:
        checked.append(text)
        return real(text)

    monkeypatch.setattr(loaded, "has_tokens", recording)
    assert client.get("/search", params={"q": "a  red circle on grass"}).status_code == 200  # same normalised key
    assert checked == []
    assert client.get("/search", params={"q": "a blue square"}).status_code == 200  # a miss still checks
    assert checked == ["a blue square"]


def test_admin_reload_token(world):
    settings = settings_for(world, reload=ReloadSettings(watch=False, admin_token="s3cret"))
    with TestClient(create_app(settings, encoder=runtime_for(world)), client=("203.0.113.9", 1)) as c:
        assert c.post("/admin/reload", json={}).status_code == 403
        assert c.post("/admin/reload", json={}, headers={"X-Admin-Token": "wrong"}).status_code == 403
        ok = c.post("/admin/reload", json={}, headers={"X-Admin-Token": "s3cret"})
        assert ok.status_code == 200 and ok.json()["loaded"]
