"""Route guards as FastAPI dependencies: `require_search_access` (API key + rate limit) on the search
endpoints, and `require_admin` on every /admin endpoint (one check, reused by all of them).

The admin rule: never a cross-origin request (Origin / Sec-Fetch-Site), never a body a plain HTML form or a
`no-cors` fetch can send (Content-Type must be application/json), and then either the configured admin
token, or - only when no token is configured and the service is bound to loopback - a loopback client that
did not come through a proxy and names a loopback Host (a rebound DNS name sends its own Host, whatever the
Origin says; search/http/hosts.py refuses hosts outside `access.allowed_hosts` for every route).
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from search.http.auth import ApiKeys, is_loopback
from search.http.hosts import is_loopback_name
from search.http.ratelimit import RateLimiter
from search.settings import Settings

__all__ = ["AccessControl", "require_search_access", "require_admin", "client_host"]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey",
                               description="API key (when keys are on)")
_bearer = HTTPBearer(auto_error=False, scheme_name="Bearer", description="API key or admin token as a Bearer token")
_admin_header = APIKeyHeader(name="X-Admin-Token", auto_error=False, scheme_name="AdminToken",
                             description="admin token")
_SAME_SITE = {"same-origin", "none"}


@dataclass
class AccessControl:
    """What the guards need at request time; built once in `create_app` and kept on `app.state.access`."""

    settings: Settings
    api_keys: ApiKeys
    limiter: RateLimiter | None


def _access(request: Request) -> AccessControl:
    access: AccessControl = request.app.state.access
    return access


def client_host(request: Request) -> str:
    """The client address as believed after the trusted-proxy middleware (never a raw X-Forwarded-For)."""
    return request.client.host if request.client is not None else "unknown"


async def require_search_access(
        request: Request,
        api_key: Annotated[str | None, Depends(_api_key_header)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> str:
    """401 without a valid key (when keys are on), 429 + Retry-After over the rate limit; returns the
    client identity the limit is counted against (the key's digest prefix, else the client address)."""
    access = _access(request)
    identity = f"ip:{client_host(request)}"
    if access.api_keys.enabled:
        digest = access.api_keys.check(api_key or (bearer.credentials if bearer is not None else None))
        if digest is None:
            raise HTTPException(401, "a valid API key is required (X-API-Key or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})
        identity = f"key:{digest[:16]}"
    if access.limiter is not None:
        retry_after = access.limiter.hit(identity)
        if retry_after is not None:
            raise HTTPException(429, f"rate limit {access.limiter.rate} exceeded",
                                headers={"Retry-After": str(max(1, math.ceil(retry_after)))})
    request.state.client_identity = identity
    return identity


def _same_origin(request: Request) -> bool:
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in _SAME_SITE:
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")


async def require_admin(
        request: Request,
        admin_token: Annotated[str | None, Depends(_admin_header)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> None:
    """The one admin check (403 / 415); use as `dependencies=[Depends(require_admin)]` on /admin routes."""
    if not _same_origin(request):
        raise HTTPException(403, "admin endpoints refuse cross-origin requests")
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, "admin endpoints accept only Content-Type: application/json")
    settings = _access(request).settings
    token = settings.reload.admin_token
    if token is not None:
        given = admin_token or (bearer.credentials if bearer is not None else None)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(403, "a valid X-Admin-Token header is required")
        return
    if not is_loopback(settings.access.bind_host):
        raise HTTPException(403, "admin endpoints need reload.admin_token when the service is not bound to "
                                 "localhost")
    proxied = "x-forwarded-for" in request.headers or "forwarded" in request.headers
    if proxied or not is_loopback(client_host(request)):
        raise HTTPException(403, "admin endpoints are only allowed from localhost without an admin token")
    if not is_loopback_name(request.headers.get("host", "")):
        raise HTTPException(403, "admin endpoints without an admin token need a loopback Host (localhost, "
                                 "127.0.0.1, [::1])")
