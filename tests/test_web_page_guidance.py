"""Service area: what the page and the API tell a newcomer. Example queries come from the store (GET /examples:
captions its images share) and the page offers them; a text search whose best match is below the encoder's
calibrated floor says `weak: true` and the page shows a plain notice. Browser tests run headless Debian chromium
(Playwright, never a downloaded browser) against a real uvicorn; a missing chromium fails under CI=true."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from search.settings import GuidanceSettings
from tests.service_support import running_server, settings_for

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT = 60_000  # a deadline for a loaded machine, not a timing assertion
UNKNOWN = "dog on a beach"  # nothing in the synthetic world looks like it


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    with running_server(settings_for(world), tmp_path_factory.mktemp("guidance") / "service.json") as proc:
        yield proc


def _expected_examples(world, count: int) -> list[str]:
    records = [json.loads(line) for line in (world.image_root / "metadata.jsonl").read_text().splitlines()]
    by_id = sorted((world.ids_by_path[r["path"]], r["caption"]) for r in records)
    return [c for c, _ in Counter(c for _, c in by_id).most_common(count)]


def test_examples_are_the_captions_most_images_share(server, world):
    body = httpx.get(server.url + "/examples", timeout=60).json()
    assert body["examples"] == _expected_examples(world, GuidanceSettings().examples)
    assert body["score_floor"] == GuidanceSettings().score_floors["photostock-tiny"]


def test_weak_flag_on_text_searches_only(server, world):
    example = httpx.get(server.url + "/examples", timeout=60).json()["examples"][0]
    known = httpx.get(server.url + "/search", params={"q": example}, timeout=60).json()
    unknown = httpx.get(server.url + "/search", params={"q": UNKNOWN}, timeout=60).json()
    floor = GuidanceSettings().score_floors["photostock-tiny"]
    assert known["weak"] is False and known["score_floor"] == floor
    assert max(h["similarity"] for h in known["hits"]) >= floor
    assert unknown["weak"] is True and unknown["hits"]  # results are still shown, flagged
    assert max(h["similarity"] for h in unknown["hits"]) < floor
    similar = httpx.get(f"{server.url}/search/similar/{known['hits'][0]['id']}", timeout=60).json()
    assert similar["weak"] is None and similar["score_floor"] is None  # the floor is for text queries


def test_no_floor_for_an_uncalibrated_encoder(world, tmp_path: Path):
    settings = settings_for(world, guidance=GuidanceSettings(score_floors={"ViT-B-32": 0.25}))
    with running_server(settings, tmp_path / "service.json") as other:
        body = httpx.get(other.url + "/search", params={"q": UNKNOWN}, timeout=60).json()
        assert body["weak"] is None and body["score_floor"] is None
        assert httpx.get(other.url + "/examples", timeout=60).json()["score_floor"] is None


@pytest.fixture(scope="module")
def page(chromium: Path, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(chromium), headless=True,
            args=ARGS, viewport={"width": 1000, "height": 700})
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT)
            yield page
        finally:
            context.close()


def test_page_offers_examples_that_search(page, server, world):
    from playwright.sync_api import expect

    expected = _expected_examples(world, GuidanceSettings().examples)
    page.goto(server.url + "/")
    buttons = page.locator("#examples button.example")
    expect(buttons).to_have_count(len(expected))
    assert buttons.all_inner_texts() == expected
    expect(page.locator("#q")).to_be_focused()  # the examples do not take the focus from the search box
    buttons.nth(1).click()
    page.wait_for_url("**q=**")
    expect(page.locator("#q")).to_have_value(expected[1])
    page.wait_for_selector('#grid[data-phase="full"][aria-busy="false"]', state="attached")
    ids = httpx.get(server.url + "/search", params={"q": expected[1], "k": 24}, timeout=60).json()["hits"]
    assert page.locator("#grid li.hit").evaluate_all("els => els.map(e => e.dataset.id)") == [
        str(h["id"]) for h in ids]
    expect(page.locator("#weak")).to_be_hidden()


def test_page_says_when_the_best_match_is_weak(page, server):
    from playwright.sync_api import expect

    page.goto(server.url + "/?q=" + UNKNOWN)
    expect(page.locator("#weak")).to_be_visible()
    expect(page.locator("#weak")).to_contain_text("Weak match")
    expect(page.locator("#weak")).to_contain_text(UNKNOWN)
    expect(page.locator("#grid li.hit").first).to_be_visible()  # the hits are still there, under the notice
    page.locator("#examples button.example").first.click()  # a known query clears it
    page.wait_for_selector('#grid[data-phase="full"][aria-busy="false"]', state="attached")
    expect(page.locator("#weak")).to_be_hidden()
