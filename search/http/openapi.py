"""The OpenAPI schema states the limits the service enforces, taken from the running settings (the routes are
declared once at import, the limits come from config), so clients and fuzzers see the real contract."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from search.settings import LimitSettings

__all__ = ["document_limits", "document_security"]

_SEARCH_PATHS = ("/search", "/search/image", "/search/similar/{image_id}")


def _integer_schemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The integer branch(es) of a parameter schema (`int | None` is an anyOf)."""
    options = schema.get("anyOf", [schema])
    return [s for s in options if s.get("type") == "integer"]


def _limit(schema: dict[str, Any], name: str, limits: LimitSettings) -> None:
    if name in ("q", "query"):
        schema.update(minLength=1, maxLength=limits.max_query_chars)
    elif name == "k":
        for s in _integer_schemas(schema):
            s.update(minimum=1, maximum=limits.max_k)
        schema["description"] = f"hits per page (default {limits.default_k}, at most {limits.max_k})"
    elif name == "offset":
        for s in _integer_schemas(schema):
            s.update(minimum=0, maximum=limits.max_offset)


def document_limits(app: FastAPI, limits: LimitSettings) -> None:
    """Wrap `app.openapi` so the generated schema carries `limits` on every parameter they apply to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path in _SEARCH_PATHS:
            for operation in schema.get("paths", {}).get(path, {}).values():
                for param in operation.get("parameters", []):
                    _limit(param["schema"], param["name"], limits)
        body = schema.get("components", {}).get("schemas", {}).get("SearchRequest", {})
        for name, prop in body.get("properties", {}).items():
            _limit(prop, name, limits)
        image = schema.get("paths", {}).get("/search/image", {}).get("post", {})
        content = image.get("requestBody", {}).get("content", {}).get("multipart/form-data", {})
        file_schema = content.get("schema", {}).get("properties", {}).get("file")
        if file_schema is not None:
            file_schema["maxLength"] = limits.max_upload_bytes
            file_schema["description"] = (f"an image of at most {limits.max_upload_bytes} bytes and "
                                          f"{limits.max_upload_pixels} pixels")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_SEARCH_SCHEMES = {"ApiKey", "Bearer"}  # search/http/security.py's scheme names
_ADMIN_SCHEMES = {"AdminToken", "Bearer"}


def document_security(app: FastAPI, api_keys: bool, admin_token: bool) -> None:
    """Wrap `app.openapi` so security is advertised only as configured: API-key schemes on the search
    operations only when keys are on, the admin token on /admin only when one is set (off: none at all)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        used: set[str] = set()
        for path, operations in schema.get("paths", {}).items():
            enabled = (_ADMIN_SCHEMES if admin_token else set()) if path.startswith("/admin") else (
                _SEARCH_SCHEMES if api_keys else set())
            for operation in operations.values():
                kept = [r for r in operation.get("security", []) if set(r) <= enabled]
                if kept:
                    operation["security"] = kept
                    used |= {name for r in kept for name in r}
                else:
                    operation.pop("security", None)
        components = schema.get("components", {})
        schemes = {k: v for k, v in components.get("securitySchemes", {}).items() if k in used}
        if schemes:
            components["securitySchemes"] = schemes
        else:
            components.pop("securitySchemes", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
