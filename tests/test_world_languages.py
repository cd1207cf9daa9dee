"""The synthetic world's captions in five languages (indexer/lab/languages.py): every composition has one caption
per language, no two compositions share one, English is the gallery's own caption, and the queries file carries
every language."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from indexer.lab.languages import LANGUAGES, NON_LATIN, caption, captions
from indexer.lab.world import all_compositions, write_world


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_composition_has_its_own_caption_in_each_language(lang: str) -> None:
    comps = all_compositions()
    texts = [caption(c.size, c.colour, c.shape, c.background, lang) for c in comps]
    assert len(set(texts)) == len(comps)
    assert all(t == t.strip() and "  " not in t for t in texts)


def test_english_is_the_gallery_caption() -> None:
    for c in all_compositions():
        assert caption(c.size, c.colour, c.shape, c.background, "en") == c.caption


def test_at_least_five_languages_and_two_non_latin_scripts() -> None:
    assert len(LANGUAGES) >= 5 and len(NON_LATIN) >= 2
    sample = captions("small", "red", "star", "grass")
    for lang in NON_LATIN:
        letters = [ch for ch in sample[lang] if ch.isalpha()]
        assert letters and not any("LATIN" in unicodedata.name(ch) for ch in letters), sample[lang]


@pytest.mark.parametrize(("lang", "comp", "expected"), [
    ("de", ("small", "red", "circle", "grass"), "ein kleiner roter Kreis auf einem Grashintergrund"),
    ("de", ("large", "white", "triangle", "wood"), "ein großes weißes Dreieck auf einem Holzhintergrund"),
    ("es", ("small", "red", "star", "sand"), "una pequeña estrella roja sobre un fondo de arena"),
    ("es", ("large", "orange", "circle", "sky"), "un gran círculo naranja sobre un fondo de cielo"),
    ("ja", ("small", "red", "circle", "grass"), "草の背景に小さい赤い円"),
    ("ru", ("small", "red", "star", "grass"), "маленькая красная звезда на фоне травы"),
    ("ru", ("large", "blue", "cross", "night"), "большой синий крест на фоне ночи"),
])
def test_gender_agreement_and_word_order(lang: str, comp: tuple[str, str, str, str], expected: str) -> None:
    assert caption(*comp, lang) == expected


def test_an_unknown_language_is_named() -> None:
    with pytest.raises(KeyError, match="'fr'"):
        caption("small", "red", "circle", "grass", "fr")


def test_the_queries_file_carries_every_language(tmp_path: Path) -> None:
    summary = write_world(tmp_path / "world", seed=3, gallery=12, size=(32, 32))
    records = [json.loads(line) for line in Path(summary["queries_file"]).read_text("utf-8").splitlines()]
    assert records
    for record in records:
        assert set(record["translations"]) == set(LANGUAGES)
        assert record["translations"]["en"] == record["query"]
