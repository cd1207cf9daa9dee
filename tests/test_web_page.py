"""Service area: the search page in headless Debian Chromium (Playwright's Python API, never a downloaded
browser) against a real uvicorn: type a held-out caption, see the thumbnails exact search ranks first."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.artifact.version import open_current
from tests.service_support import encoder_for, running_server, settings_for

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.usefixtures("chromium")  # skipped locally without it, a failure under CI=true


def test_search_page_shows_the_right_thumbnails(world, chromium: Path, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    query = next(q for q in world.queries if q["unseen"])["query"]
    with open_current(world.store) as artifact:
        _, ids = artifact.exact_search(encoder_for(world.checkpoint).encode_texts([query]), 48)
    expected = [str(i) for i in ids[0].tolist()]

    with running_server(settings_for(world), tmp_path / "service.json") as server, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(chromium), headless=True, args=ARGS,
            viewport={"width": 1000, "height": 700})  # the grid overflows it: no auto-load before "More"
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)  # a deadline for a loaded machine, not a timing assertion
            page.goto(server.url + "/")
            page.fill("#q", query)
            page.press("#q", "Enter")
            hits = page.locator("#grid li.hit")
            expect(hits).to_have_count(24, timeout=60_000)
            assert [hits.nth(i).get_attribute("data-id") for i in range(24)] == expected[:24]
            expect(page.locator("#status")).to_contain_text("query time", timeout=60_000)
            first = hits.nth(0)
            expect(first.locator(".score")).to_contain_text("score", timeout=60_000)
            # the thumbnail has loaded
            expect(first.locator("img")).to_have_js_property("complete", True, timeout=60_000)
            assert first.locator("img").evaluate("img => img.naturalWidth") > 0
            # more results: the next page continues the ranking. The click is dispatched where the button is:
            # a real click scrolls it into view, where the page's own auto-load may append the next page (and
            # hide the button) between Playwright's scroll and its click, which then waits for a hidden button
            page.locator("#more").dispatch_event("click")
            page.wait_for_function("document.querySelectorAll('#grid li.hit').length >= 48")
            assert [hits.nth(i).get_attribute("data-id") for i in range(48)] == expected[:48]
        finally:
            context.close()
