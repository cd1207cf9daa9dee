"""Service area, bounded resources and operability: id range (422, never 500), 405 with Allow, queries that
clean to nothing, request ids, the body cap over real uvicorn under chunked encoding (413, the connection
closed, nothing read or spooled past the cap), header/body/idle timeouts, the decode gate, and the query log
carrying the request id."""

from __future__ import annotations

import asyncio
import io
import json
import select
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from search.http.app import create_app
from search.http.bodies import UPLOAD_FRAMING
from search.http.multipart import read_file_part
from search.query.log import read_query_log
from search.runtime.uploads import UploadRejected, release_memory
from search.settings import LimitSettings, ServerSettings, TrafficSettings
from tests.service_support import running_server, runtime_for, settings_for


@pytest.fixture(scope="module")
def client(world, tmp_path_factory):
    log = tmp_path_factory.mktemp("qlog") / "queries.jsonl"
    settings = settings_for(world, query_log=log)
    with TestClient(create_app(settings, encoder=runtime_for(world)),
                    raise_server_exceptions=False) as client:
        client.query_log = log  # type: ignore[attr-defined]
        yield client


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, (width, height), "gray").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("path", [
    "/images/99999999999999999999", "/images/9223372036854775808", "/images/99999999999999999999?thumb=1",
    "/images/9223372036854775808?thumb=1", "/images/-1", "/search/similar/99999999999999999999",
    "/search/similar/9223372036854775808",
])
def test_ids_outside_the_id_range_are_422(client, path):
    r = client.get(path)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid request"


@pytest.mark.parametrize("path", ["/images/9223372036854775807", "/images/9223372036854775807?thumb=1",
                                  "/search/similar/9223372036854775807", "/images/0"])
def test_ids_inside_the_range_but_unknown_are_404(client, path):
    assert client.get(path).status_code == 404


def test_405_carries_allow(client):
    r = client.get("/admin/reload")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "error" in r.json()
    r = client.delete("/search")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST"}


@pytest.mark.parametrize("query", ["\u200b", "\u200b\u200d\ufeff", "\ufffd", "\x00", "\x00 \t\n", "\u2028"])
def test_queries_that_clean_to_nothing_are_422(client, query):
    for r in (client.get("/search", params={"q": query}), client.post("/search", json={"query": query})):
        assert r.status_code == 422, r.text
        assert "empty" in r.json()["error"]


def test_a_query_with_stray_control_characters_searches_its_text(client, world):
    text = world.queries[0]["query"]
    clean = client.get("/search", params={"q": text}).json()["hits"]
    dirty = client.get("/search", params={"q": "\u200b" + text.replace(" ", " \x00", 1)}).json()["hits"]
    assert [h["id"] for h in dirty] == [h["id"] for h in clean]


def test_request_id_is_accepted_or_created_echoed_and_logged(client, world):
    given = client.get("/search", params={"q": world.queries[2]["query"]}, headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = client.get("/search", params={"q": world.queries[3]["query"]})
    assert len(made.headers["x-request-id"]) == 32
    hostile = client.get("/healthz", headers={"X-Request-ID": "evil\tvalue with spaces" + "x" * 200})
    assert hostile.headers["x-request-id"] != "evil\tvalue with spaces" and len(hostile.headers["x-request-id"]) == 32
    error = client.get("/search", params={"q": ""}, headers={"X-Request-ID": "err-1"})
    assert error.json()["request_id"] == "err-1" and error.headers["x-request-id"] == "err-1"
    ids = [r.get("request_id") for r in read_query_log(client.query_log)]
    assert "abc-123" in ids and made.headers["x-request-id"] in ids


def _multipart(data: bytes, boundary: str = "b0undary") -> tuple[str, list[bytes]]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    body = head + data + tail
    return f"multipart/form-data; boundary={boundary}", [body[i:i + 4096] for i in range(0, len(body), 4096)]


def test_streamed_reader_stops_at_the_cap_without_reading_the_rest():
    content_type, chunks = _multipart(b"\x01" * 1_000_000)
    pulled = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal pulled
        for chunk in chunks:
            pulled += 1
            yield chunk

    with pytest.raises(UploadRejected) as info:
        asyncio.run(read_file_part(content_type, stream(), max_bytes=50_000))
    assert info.value.status == 413
    assert pulled * 4096 <= 50_000 + 2 * 4096  # stopped at the chunk that crossed the cap
    small_type, small = _multipart(b"\x02" * 10_000)

    async def small_stream() -> AsyncIterator[bytes]:
        for chunk in small:
            yield chunk

    assert asyncio.run(read_file_part(small_type, small_stream(), max_bytes=50_000)) == b"\x02" * 10_000


def _kernel_buffer_bound() -> int:
    """Bytes a client can hand to loopback TCP that the server process never read: its socket's largest
    receive buffer (tcp_rmem max) plus the client's own send buffer (set to 64 kB below) and some slack."""
    rmem_max = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    return rmem_max + 64 * 1024 + 1024 * 1024


@dataclass
class Refusal:
    response: bytes  # what the server answered (status line, headers, body)
    sent: int  # body bytes the kernel accepted from us before the server closed the connection
    closed: bool  # the server closed the connection (EOF or reset) before the whole body was sent


def _send_until_refused(port: int, path: str, content_type: str, body_bytes: int, chunked: bool = True,
                        declared: int | None = None, prefix: bytes = b"", deadline_s: float = 120.0) -> Refusal:
    """Send a request of `body_bytes` body (`prefix`, then filler) over a raw socket (chunked, or with
    Content-Length `declared`), reading whenever the server answers; stop at the server's close or when
    everything is sent."""
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Type: {content_type}"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {declared or body_bytes}")
    sock = socket.create_connection(("127.0.0.1", port), timeout=deadline_s)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    sock.setblocking(False)
    piece = b"\x03" * 65536
    pending, sent, response, closed = b"", 0, b"", False
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            if not pending and sent < body_bytes:
                data = prefix if sent == 0 and prefix else piece[: body_bytes - sent]
                pending = (b"%x\r\n" % len(data) + data + b"\r\n") if chunked else data
                sent += len(data)
            elif not pending and chunked and sent == body_bytes:
                pending, sent = b"0\r\n\r\n", sent + 1
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 1.0)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    closed = True
                    break
                if not data:
                    closed = True
                    break
                response += data
            elif writable:
                try:
                    pending = pending[sock.send(pending):]
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
    finally:
        sock.close()
    return Refusal(response, sent, closed)


@pytest.mark.parametrize("path,cap_field,body_mb", [("/search/image", "upload", 200), ("/search", "json", 200)])
def test_a_body_over_the_cap_is_413_and_the_connection_closed_not_drained(world, tmp_path, monkeypatch, path,
                                                                           cap_field, body_mb):
    """Real uvicorn, Transfer-Encoding: chunked (no Content-Length): the 413 arrives, the server closes the
    connection instead of reading the rest, and nothing big lands in TMPDIR. The bytes the kernel took from us
    before the close bound what the server read: the cap plus socket buffers, far below the body."""
    spool = tmp_path / "server-tmp"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    settings = settings_for(world, limits=LimitSettings(max_upload_bytes=200_000, max_body_bytes=100_000))
    cap = 200_000 + UPLOAD_FRAMING if cap_field == "upload" else 100_000
    content_type, parts = _multipart(b"") if cap_field == "upload" else ("application/json", [b'{"query": "'])
    prefix = parts[0].split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" if cap_field == "upload" else parts[0]
    with running_server(settings, tmp_path / "service.json") as server:
        refusal = _send_until_refused(server.port, path, content_type, body_mb * 2**20, prefix=prefix)
        head = refusal.response.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 413"), refusal.response[:300]
        assert b"connection: close" in head
        assert json.loads(refusal.response.split(b"\r\n\r\n", 1)[1])["error"] == f"request body exceeds {cap} bytes"
        assert refusal.closed, "the server kept the connection open after its 413"
        assert refusal.sent <= cap + _kernel_buffer_bound(), refusal.sent  # 200 MB were drained before this fix
        declared = _send_until_refused(server.port, path, content_type, 0, chunked=False, declared=10**9)
        assert declared.response.lower().startswith(b"http/1.1 413") and declared.closed  # refused unread
        with httpx.Client(base_url=server.url, timeout=60) as http:
            ok = http.post("/search/image", files={"file": ("x.png", _png(64, 48), "image/png")})
            assert ok.status_code == 200
        spooled = [p for p in spool.rglob("*") if p.is_file() and p.stat().st_size > 200_000]
        assert spooled == []  # Starlette's form parser would have spooled the upload here


def test_half_sent_and_stalled_requests_are_closed(world, tmp_path):
    """Real uvicorn with short timeouts: a connection that never completes its headers is closed (no header
    timeout before: held forever), a body that stalls is answered 408 and closed, an idle keep-alive
    connection is closed; a search on a fresh connection still answers meanwhile."""
    settings = settings_for(world, server=ServerSettings(header_timeout_s=0.5, body_timeout_s=0.5,
                                                         keep_alive_timeout_s=0.5))
    with running_server(settings, tmp_path / "service.json") as server:
        silent = socket.create_connection(("127.0.0.1", server.port))
        half = socket.create_connection(("127.0.0.1", server.port))
        half.sendall(b"GET /search?q=cat HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"query\"")
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/search", params={"q": "cat"}).status_code == 200
        for sock in (silent, half, stalled):
            sock.settimeout(60)  # a bound on the test, not a threshold: the server closes after 0.5 s
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            sock.close()
            if sock is stalled:
                assert received.startswith(b"HTTP/1.1 408") and b"connection: close" in received.lower()
            else:
                assert received == b""


def test_decode_gate_bounds_concurrent_decodes(world):
    """Twelve concurrent uploads of 2000x2000 PNGs: all answered, never more than `decode_concurrency` decoded
    at once, and an image over the pixel budget is refused from its header with 413."""
    settings = settings_for(world, limits=LimitSettings(decode_concurrency=2, max_upload_pixels=5_000_000),
                            traffic=TrafficSettings(deadline_ms=600_000, entry_shedding=False))  # all admitted
    app = create_app(settings, encoder=runtime_for(world))
    image = _png(2000, 2000)

    async def run() -> list[int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as http:
                calls = [http.post("/search/image", files={"file": ("x.png", image, "image/png")})
                         for _ in range(12)]
                calls.append(http.post("/search/image", files={"file": ("x.png", _png(3000, 2000, "1"),
                                                                        "image/png")}))
                return [r.status_code for r in await asyncio.gather(*calls)]

    statuses = asyncio.run(run())
    assert statuses == [200] * 12 + [413]
    assert app.state.uploads.gate.peak == 2


def test_release_memory_works_on_glibc():
    assert release_memory() is True


def test_openapi_states_the_enforced_limits(world):
    limits = LimitSettings(max_query_chars=64, max_k=50, max_offset=100)
    with TestClient(create_app(settings_for(world, limits=limits), encoder=runtime_for(world))) as c:
        schema = c.get("/openapi.json").json()
    params = {p["name"]: p["schema"] for p in schema["paths"]["/search"]["get"]["parameters"]}
    assert (params["q"]["minLength"], params["q"]["maxLength"]) == (1, 64)
    assert [s["maximum"] for s in params["k"]["anyOf"] if s.get("type") == "integer"] == [50]
    assert params["offset"]["maximum"] == 100
    body = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert body["query"]["maxLength"] == 64 and body["offset"]["maximum"] == 100
    image_id = schema["paths"]["/images/{image_id}"]["get"]["parameters"][0]["schema"]
    assert (image_id["minimum"], image_id["maximum"]) == (0, 2**63 - 1)
    assert json.dumps(schema)  # serialisable as served


def test_json_logs_carry_the_request_id(world, tmp_path):
    from search.settings import LogSettings

    settings = settings_for(world, logging=LogSettings(format="json"))
    with running_server(settings, tmp_path / "service.json") as server:
        r = httpx.get(server.url + "/search", params={"q": "cat"}, headers={"X-Request-ID": "rid-json-1"}, timeout=60)
        assert r.status_code == 200
        output = server.stop()
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "name", "message"} <= set(rec) for rec in records)
    assert any(rec.get("request_id") == "rid-json-1" and "/search" in rec["message"] for rec in records), output[-2000:]
