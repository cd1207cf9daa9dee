"""Service area: /docs (Swagger UI) works offline: every asset it references is served by the service itself,
the page names no external URL, and in a browser it renders with no request leaving the service. /redoc is off
(ReDoc's bundle fetches its logo from a CDN)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from fastapi.testclient import TestClient

from search.http.app import create_app
from tests.service_support import running_server, settings_for

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# what the page can load: src/href attributes and Swagger UI's `url: '...'` (the schema)
REFERENCE = re.compile(r"""(?:src|href)=["']([^"']+)["']|\burl:\s*['"]([^'"]+)['"]""")


def test_docs_reference_only_local_assets(world):
    client = TestClient(create_app(settings_for(world)), base_url="http://localhost")  # no lifespan needed
    page = "/docs"
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", html), "an external URL in " + page
    references = [a or b for a, b in REFERENCE.findall(html)]
    assert len(references) >= 2  # the script and the spec, at least
    for ref in references:
        assert not urlsplit(ref).netloc, ref
        assert client.get(ref).status_code == 200, ref
    assert {"/openapi.json"} <= set(references)
    assert client.get("/redoc").status_code == 404


def test_docs_render_in_a_browser_without_leaving_the_service(world, chromium: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    outside: list[str] = []
    with running_server(settings_for(world), tmp_path / "service.json") as server, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(chromium), headless=True, args=ARGS)
        try:
            def guard(route) -> None:  # a request elsewhere is recorded and refused, as offline it would fail
                if route.request.url.startswith(server.url + "/"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", guard)
            page = context.new_page()
            page.set_default_timeout(60_000)  # a deadline for a loaded machine, not a timing assertion
            page.goto(server.url + "/docs")
            expect(page.locator(".swagger-ui .info .title")).to_contain_text("PhotoStock")
            expect(page.locator(".opblock-summary-path", has_text="/search").first).to_be_visible()
        finally:
            context.close()
    assert outside == []
