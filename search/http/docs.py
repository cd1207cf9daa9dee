"""The API documentation page, /docs (Swagger UI), from assets installed with the service (the
`fastapi-offline` package's copy of swagger-ui-dist 5), never from a CDN: it works without internet access.

FastAPI's own pages are switched off (`docs_url=None, redoc_url=None`) and /docs is rebuilt here with FastAPI's
`get_swagger_ui_html` pointed at /docs-assets/: no online spec validator, no OAuth2 redirect page (the API's
keys are headers, not OAuth2). /redoc stays off: ReDoc's standalone bundle loads its logo from cdn.redoc.ly
(tests/test_docs_offline.py caught it), so it cannot be served offline as it is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_URL", "assets_dir", "install_docs"]

ASSETS_URL = "/docs-assets"


def assets_dir() -> Path:
    """swagger-ui-bundle.js, swagger-ui.css and favicon.png, as the package ships them."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the fastapi-offline package (API docs assets) is missing: reinstall the [serve] extra")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install_docs(app: FastAPI) -> None:
    """Mount the assets and add GET /docs (not in the schema)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    def prefix(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})
