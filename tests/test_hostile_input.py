"""Service area, hostile input in process: every JSON and query route driven by hypothesis with lone
surrogates, NaN/Infinity, out-of-range numbers, deep nesting and huge strings answers a 4xx (or 2xx) JSON body
of bounded size, never a 5xx; the exact probes of issue 21 (surrogate query, NaN and 1e309 min_score, 10 MB
echo), canonical ids, pixel bombs of every size, and security advertised only as configured."""

from __future__ import annotations

import io
import json
from urllib.parse import quote_from_bytes

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.http.app import create_app
from search.http.errors import MAX_ECHO_CHARS
from search.settings import AccessSettings, LimitSettings, ReloadSettings
from tests.service_support import copy_store, runtime_for, settings_for

MAX_ERROR_BYTES = 16 * 1024  # an error body describes what was wrong; it never carries the input back


@pytest.fixture(scope="module")
def client(world, tmp_path_factory):
    store = copy_store(world, tmp_path_factory.mktemp("hostile") / "store")  # admin calls may write takedowns
    settings = settings_for(world, store=store, limits=LimitSettings(max_body_bytes=64 * 1024))
    with TestClient(create_app(settings, encoder=runtime_for(world)), base_url="http://localhost",
                    client=("127.0.0.1", 5000), raise_server_exceptions=False) as c:
        yield c


def _sane(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()  # strict UTF-8 JSON, whatever came in
        assert "error" in body and len(r.content) <= MAX_ERROR_BYTES, len(r.content)


# -- the probes of the issue -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,what", [
    (b'{"query": "red \\ud800 star"}', "surrogate"),
    (b'{"query": "red star", "min_score": NaN}', "NaN"),
    (b'{"query": "red star", "min_score": Infinity}', "Infinity"),
    (b'{"query": "red star", "min_score": 1e309}', "out of range"),
    (b'{"query": "red star", "k": ' + b"9" * 5000 + b"}", "out of range"),
    (b'{"query": "red star", "filters": {"tags": ["\\udfff"]}}', "surrogate"),
    (b'{"\\ud800": 1}', "surrogate"),
    (b"[" * 20_000 + b"]" * 20_000, "nested too deeply"),
    (b'{"query": "caf\xe9"}', "not UTF-8"),
])
def test_unrepresentable_json_is_422_with_a_description(client, raw, what):
    r = client.post("/search", content=raw, headers={"content-type": "application/json"})
    _sane(r)
    assert r.status_code == 422, r.text
    assert what in json.dumps(r.json()["detail"]), r.json()


def test_out_of_range_values_are_described_not_echoed(client):
    r = client.post("/search", json={"query": "x" * 20_000})
    _sane(r)
    assert r.status_code == 422
    r = client.post("/search", json={"query": "red star", "diversity": 2.5, "surprise": "y" * 40_000})
    _sane(r)
    echoed = [e.get("input") for e in r.json()["detail"] if isinstance(e, dict)]
    assert any(isinstance(i, str) and i.endswith("(40000 chars)") and len(i) < MAX_ECHO_CHARS + 40 for i in echoed)


def test_a_body_past_the_cap_is_413_before_parsing(client):
    r = client.post("/search", json={"query": "x" * 70_000})
    assert r.status_code == 413 and r.json()["detail"]["limit"] == 64 * 1024
    assert r.headers["connection"] == "close"


# -- properties: every JSON and query route ----------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
NASTY_TEXT = st.one_of(st.text(alphabet=st.one_of(SURROGATES, st.characters()), max_size=40),
                       st.integers(1_000, 100_000).map(lambda n: "z" * n))
RAW_NUMBERS = st.sampled_from(["NaN", "-Infinity", "Infinity", "1e309", "-1e309", "1e-400", "9" * 400,
                               "-0", "0.0", "1.5", "-1", "2e0", "1" * 40])


def _json_values(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(NASTY_TEXT, inner, max_size=4)), max_leaves=12)


LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), NASTY_TEXT,
                   RAW_NUMBERS.map(lambda t: ("raw", t)))
FIELDS = ["query", "k", "offset", "filters", "min_score", "dedup", "diversity", "ids", "paths", "reason",
          "restore", "orientation", "tags", "licence", "created_after"]


def _encode(value: object) -> str:
    """JSON text with `("raw", token)` leaves written verbatim (numbers json.dumps would refuse or round)."""
    if isinstance(value, tuple) and value[:1] == ("raw",):
        return str(value[1])
    if isinstance(value, list):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + _encode(v) for k, v in value.items()) + "}"
    return json.dumps(value)  # ensure_ascii: lone surrogates leave as \\udXXX escapes, as an attacker sends them


BODIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), _json_values(LEAVES), max_size=6),
    _json_values(LEAVES),
    st.integers(1, 40_000).map(lambda n: ("raw", "[" * n + "]" * n)),
)
PROPERTY = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@PROPERTY
@given(path=st.sampled_from(["/search", "/search?phase=fast", "/admin/takedown", "/admin/reload"]), body=BODIES)
def test_json_routes_never_answer_5xx(client, path, body):
    r = client.post(path, content=_encode(body).encode("utf-8", "surrogatepass"),
                    headers={"content-type": "application/json"})
    _sane(r)


QUERY_VALUES = st.one_of(st.binary(max_size=60), RAW_NUMBERS.map(str.encode),
                         st.integers(1_000, 20_000).map(lambda n: b"q" * n),
                         st.sampled_from([b"\xed\xa0\x80", b"\xff\xfe", b"%", b"\x00", b" 1", b"+1", b"01"]))
PARAMS = st.lists(st.tuples(st.sampled_from([b"q", b"k", b"offset", b"phase", b"thumb", b"x"]), QUERY_VALUES),
                  max_size=4)


@PROPERTY
@given(path=st.sampled_from(["/search", "/search/similar/{id}", "/images/{id}", "/healthz", "/readyz"]),
       image_id=QUERY_VALUES, params=PARAMS)
def test_query_routes_never_answer_5xx(client, path, image_id, params):
    query = "&".join(quote_from_bytes(k) + "=" + quote_from_bytes(v) for k, v in params)
    url = path.replace("{id}", quote_from_bytes(image_id, safe="") or "0") + ("?" + query if query else "")
    _sane(client.get(url))


@PROPERTY
@given(params=PARAMS)
def test_upload_route_query_never_answers_5xx(client, params):
    query = "&".join(quote_from_bytes(k) + "=" + quote_from_bytes(v) for k, v in params)
    r = client.post("/search/image?" + query, files={"file": ("x.png", _png(32, 32), "image/png")})
    _sane(r)


# -- ids, pixel bombs, the schema --------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["%201", "+1", "1.0", "01", "1%20", "0x1", "1e0", "%EF%BC%91", "-0", "00"])
def test_ids_are_canonical_decimal_only(client, raw):
    for path in (f"/images/{raw}", f"/search/similar/{raw}", f"/images/{raw}?thumb=1"):
        r = client.get(path)
        assert r.status_code == 422, (path, r.text)
        assert "canonical decimal" in json.dumps(r.json()["detail"])


def test_canonical_ids_still_work(client, world):
    some_id = next(iter(world.ids_by_path.values()))
    assert client.get(f"/images/{some_id}").status_code == 200
    assert client.get(f"/search/similar/{some_id}").status_code == 200
    assert client.get("/images/0").status_code == 404


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG")
    return out.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data needed: the header alone must refuse it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [6_400, 10_000, 13_500, 20_000, 50_000, 65_535])
def test_pixel_bombs_are_413_at_every_size(client, side):
    r = client.post("/search/image", files={"file": ("bomb.png", _png_header(side, side), "image/png")})
    assert r.status_code == 413, r.text
    assert "pixel" in r.json()["error"]


def _schema(world, **sections: object) -> dict:
    with TestClient(create_app(settings_for(world, **sections), encoder=runtime_for(world))) as c:
        return c.get("/openapi.json").json()


def _schemes(schema: dict) -> tuple[set[str], dict[str, set[str]]]:
    per_path = {path: {name for op in ops.values() for r in op.get("security", []) for name in r}
                for path, ops in schema["paths"].items()}
    return set(schema.get("components", {}).get("securitySchemes", {})), per_path


def test_openapi_advertises_security_only_as_configured(world, tmp_path):
    declared, used = _schemes(_schema(world))
    assert declared == set() and not any(used.values())
    keys = tmp_path / "keys"
    keys.write_text("0" * 64 + "\n")
    declared, used = _schemes(_schema(world, access=AccessSettings(api_keys_file=keys)))
    assert declared == {"ApiKey", "Bearer"} and used["/search"] == {"ApiKey", "Bearer"}
    assert used["/admin/reload"] == set() and used["/healthz"] == set()
    declared, used = _schemes(_schema(world, reload=ReloadSettings(watch=False, admin_token="t")))
    assert declared == {"AdminToken", "Bearer"} and used["/admin/reload"] == {"AdminToken", "Bearer"}
    assert used["/search"] == set()
