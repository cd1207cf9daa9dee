"""The OpenAPI schema states the limits the service enforces, taken from the running settings (the routes are
declared once at import, the limits come from config), so clients and fuzzers see the real contract."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from search.settings import LimitSettings

__all__ = ["document_limits"]

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
