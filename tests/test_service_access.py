"""Service area, access control: API keys (hashed at rest, header or Bearer), the admin guard (token off
loopback, no cross-origin, JSON only, no proxied 'local' clients), trusted proxies, CORS preflight, and the
per-client rate limit (429 + Retry-After)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from search.http.app import create_app
from search.http.auth import hash_key, is_loopback, load_api_keys
from search.settings import AccessSettings, ReloadSettings, TrafficSettings
from tests.service_support import runtime_for, settings_for


def _client(world, host: str = "127.0.0.1", **sections: object) -> TestClient:
    app = create_app(settings_for(world, **sections), encoder=runtime_for(world))
    return TestClient(app, base_url="http://localhost", client=(host, 5000), raise_server_exceptions=False)


def test_api_keys_from_a_file_of_digests(world, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team keys\n{hash_key('k-alpha')}\n{hash_key('k-beta')}  # beta\n")
    assert "k-alpha" not in keys.read_text()
    with _client(world, access=AccessSettings(api_keys_file=keys)) as c:
        params = {"q": world.queries[0]["query"]}
        missing = c.get("/search", params=params)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert c.get("/search", params=params, headers={"X-API-Key": "k-gamma"}).status_code == 401
        assert c.get("/search", params=params, headers={"X-API-Key": "k-alpha"}).status_code == 200
        assert c.get("/search", params=params, headers={"Authorization": "Bearer k-beta"}).status_code == 200
        assert c.post("/search", json={"query": "cat"}).status_code == 401
        assert c.get("/search/similar/10").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/images/10?thumb=1").status_code == 200


def test_api_keys_from_env_and_bad_entries(world, monkeypatch, tmp_path):
    monkeypatch.setenv("PHOTOSTOCK_KEYS", f"{hash_key('one')},{hash_key('two')}")
    assert load_api_keys(None, "PHOTOSTOCK_KEYS").check("two") == hash_key("two")
    with _client(world, access=AccessSettings(api_keys_env="PHOTOSTOCK_KEYS")) as c:
        assert c.get("/search", params={"q": "cat"}, headers={"X-API-Key": "one"}).status_code == 200
        assert c.get("/search", params={"q": "cat"}).status_code == 401
    plain = tmp_path / "plain.txt"
    plain.write_text("my-secret-key\n")
    with pytest.raises(ValueError, match="not a sha256"):
        load_api_keys(plain, None)
    monkeypatch.delenv("PHOTOSTOCK_KEYS")
    with pytest.raises(ValueError, match="not set"):
        load_api_keys(None, "PHOTOSTOCK_KEYS")


def test_api_keys_are_off_by_default(world):
    with _client(world) as c:
        assert c.get("/search", params={"q": "cat"}).status_code == 200


def test_admin_refuses_cross_origin_and_non_json_even_from_localhost(world):
    with _client(world) as c:
        assert c.post("/admin/reload", json={}).status_code == 200
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"}):
            r = c.post("/admin/reload", json={}, headers=headers)
            assert r.status_code == 403 and "cross-origin" in r.json()["error"], headers
        assert c.post("/admin/reload", json={}, headers={"Origin": "http://localhost",
                                                        "Sec-Fetch-Site": "same-origin"}).status_code == 200
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            r = c.post("/admin/reload", content=b"{}", headers={"Content-Type": content_type})
            assert r.status_code == 415, content_type
        assert c.post("/admin/reload").status_code == 415  # no body, no type: what a no-cors fetch sends


def test_admin_needs_a_token_when_not_bound_to_loopback(world):
    with _client(world, access=AccessSettings(bind_host="0.0.0.0")) as c:
        r = c.post("/admin/reload", json={})
        assert r.status_code == 403 and "admin_token" in r.json()["error"]
    token = ReloadSettings(watch=False, admin_token="s3cret")
    with _client(world, "198.51.100.7", access=AccessSettings(bind_host="0.0.0.0"), reload=token) as c:
        assert c.post("/admin/reload", json={}).status_code == 403
        assert c.post("/admin/reload", json={}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/admin/reload", json={}, headers={"X-Admin-Token": "s3cret",
                                                        "Origin": "https://evil.example"}).status_code == 403


def test_a_proxy_on_the_same_host_does_not_make_clients_local(world):
    with _client(world) as c:  # no trusted proxies: the forwarded header is not believed, but it marks a proxy
        r = c.post("/admin/reload", json={}, headers={"X-Forwarded-For": "203.0.113.5"})
        assert r.status_code == 403
    with _client(world, access=AccessSettings(trusted_proxies=["127.0.0.1"]),
                 traffic=TrafficSettings(rate_limit="2/minute")) as c:
        r = c.post("/admin/reload", json={}, headers={"X-Forwarded-For": "203.0.113.5"})
        assert r.status_code == 403
        # the rate limit counts the forwarded client, not the proxy
        for client_ip in ("203.0.113.5", "203.0.113.6"):
            statuses = [c.get("/search", params={"q": "cat"}, headers={"X-Forwarded-For": client_ip}).status_code
                        for _ in range(3)]
            assert statuses == [200, 200, 429], client_ip


def test_rate_limit_answers_429_with_retry_after(world, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(hash_key("a") + "\n" + hash_key("b") + "\n")
    with _client(world, access=AccessSettings(api_keys_file=keys), traffic=TrafficSettings(rate_limit="3/minute")) as c:
        got = [c.get("/search", params={"q": "cat"}, headers={"X-API-Key": "a"}) for _ in range(4)]
        assert [r.status_code for r in got] == [200, 200, 200, 429]
        assert 1 <= int(got[-1].headers["retry-after"]) <= 60 and "rate limit" in got[-1].json()["error"]
        assert c.get("/search", params={"q": "cat"}, headers={"X-API-Key": "b"}).status_code == 200  # per key
        assert c.get("/healthz").status_code == 200


def test_cors_allow_list_and_preflight(world):
    with _client(world, access=AccessSettings(cors_origins=["https://app.example"])) as c:
        pre = c.options("/search", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "content-type,x-api-key"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in pre.headers["access-control-allow-methods"]
        r = c.get("/search", params={"q": "cat"}, headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        other = c.get("/search", params={"q": "cat"}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        bad = c.options("/search", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert bad.status_code == 400


def test_loopback_detection():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "localhost", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "::", "example.com", None]))


def test_hash_key_cli_prints_the_digest_for_the_key_file():
    import subprocess
    import sys

    from tests.service_support import ROOT

    done = subprocess.run([sys.executable, "-m", "search", "hash-key"], input="k-alpha\n", capture_output=True,
                          text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == hash_key("k-alpha")


def test_rate_limit_storage_is_checked_at_start(world):
    with pytest.raises(ValueError, match="rate_limit_storage 'bogus://x'"):
        create_app(settings_for(world, traffic=TrafficSettings(rate_limit="3/minute", rate_limit_storage="bogus://x")))


def test_a_failing_rate_limit_storage_lets_requests_through_and_is_counted(world):
    """Fail open: a shared limiter store that is down must not take search down with it (fault injected into
    the `limits` storage, as a lost Redis connection would raise)."""
    with _client(world, traffic=TrafficSettings(rate_limit="1/minute")) as c:
        storage = c.app.state.access.limiter._limiter.storage  # type: ignore[attr-defined]

        def down(*args: object, **kwargs: object) -> None:
            raise ConnectionError("storage unreachable")

        storage.acquire_sliding_window_entry = down  # what a moving window's hit calls
        storage.acquire_entry = down
        statuses = [c.get("/search", params={"q": "cat"}).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        assert 'photostock_errors_total{kind="rate_limit_storage"} 3.0' in c.get("/metrics").text


def test_bound_to_loopback_only_loopback_host_names_are_served(world):
    with _client(world, access=AccessSettings(allowed_hosts=None)) as c:  # the default: by the bind address
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example:8000", "evil.example", "127.0.0.1.evil.example", "", "localhost.evil.example"):
            r = c.get("/search", params={"q": "cat"}, headers={"Host": host})
            assert r.status_code == 400 and "Host" in r.json()["error"], host
            assert r.headers["connection"] == "close"
        # DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 sends its own Host and a matching Origin
        rebound = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
        assert c.post("/admin/reload", json={}, headers=rebound).status_code == 400
        assert c.post("/admin/takedown", json={"ids": [10], "reason": "x"}, headers=rebound).status_code == 400
    with _client(world, access=AccessSettings(allowed_hosts=None, bind_host="0.0.0.0")) as c:
        assert c.get("/healthz", headers={"Host": "photos.example"}).status_code == 200  # any host off loopback


def test_admin_refuses_a_foreign_host_whatever_the_origin(world):
    with _client(world, access=AccessSettings(allowed_hosts=["*"])) as c:  # every host served, even so:
        rebound = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000", "Sec-Fetch-Site": "same-origin"}
        r = c.post("/admin/reload", json={}, headers=rebound)
        assert r.status_code == 403 and "loopback Host" in r.json()["error"]
        assert c.get("/healthz", headers=rebound).status_code == 200
        assert c.post("/admin/reload", json={}, headers={"Host": "127.0.0.1:8000"}).status_code == 200


def test_configured_allowed_hosts(world):
    hosts = ["photos.example", "*.cdn.example"]
    with _client(world, access=AccessSettings(bind_host="0.0.0.0", allowed_hosts=hosts)) as c:
        for host, status in (("photos.example", 200), ("PHOTOS.example:443", 200), ("a.cdn.example", 200),
                             ("cdn.example", 400), ("evil.example", 400), ("localhost", 400)):
            assert c.get("/healthz", headers={"Host": host}).status_code == status, host
