"""Service area: the page's fast-then-exact swap in headless Debian Chromium against a real uvicorn. The full
answer is held back (Playwright routing) so the fast grid is seen first; then it is released and the full
grid replaces the fast one with every card keeping its place (no layout jump)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.service_support import running_server, settings_for

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

BOXES = "() => [...document.querySelectorAll('#grid li.hit')].map(li => {" \
        " const r = li.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })"


def test_fast_grid_first_then_full_grid_in_place(world, chromium: Path, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    query = world.queries[5]["query"]
    with running_server(settings_for(world), tmp_path / "service.json") as server, sync_playwright() as pw:
        fast_ids = [str(h["id"]) for h in httpx.get(server.url + "/search", params={
            "q": query, "k": 24, "phase": "fast"}, timeout=60).json()["hits"]]
        full_ids = [str(h["id"]) for h in httpx.get(server.url + "/search", params={
            "q": query, "k": 24}, timeout=60).json()["hits"]]
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(chromium), headless=True, args=ARGS,
            viewport={"width": 1000, "height": 700})
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)  # a deadline for a loaded machine, not a timing assertion
            held = []
            page.route(lambda url: "/search?" in url and "phase=fast" not in url, lambda route: held.append(route))
            page.goto(server.url + "/")
            page.fill("#q", query)
            page.press("#q", "Enter")
            fast = page.locator("#grid[data-phase=fast] li.hit")
            expect(fast).to_have_count(24)
            assert [fast.nth(i).get_attribute("data-id") for i in range(24)] == fast_ids
            before = page.evaluate(BOXES)
            assert len(held) == 1
            held[0].continue_()
            full = page.locator("#grid[data-phase=full] li.hit")
            expect(full).to_have_count(24)
            assert [full.nth(i).get_attribute("data-id") for i in range(24)] == full_ids
            assert page.evaluate(BOXES) == before  # same places, same sizes: the swap moves nothing
        finally:
            context.close()
