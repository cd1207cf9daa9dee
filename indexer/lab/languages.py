"""The synthetic world's captions in five languages: English, German, Spanish, Japanese and Russian.

Why: a marketplace sells worldwide, and a query in German, Japanese or Russian must find a photo captioned in
English. The world's vocabulary is small (2 sizes, 8 colours, 6 shapes, 6 backgrounds), so the team writes each
word's translation and each language's grammar here (gender agreement in German, Spanish and Russian, the
background first in Japanese) instead of machine-translating. Images stay captioned in English; these captions
are the queries of the multilingual evaluation and the mixed-language training text of a multilingual model.

`caption(composition, lang)` is a pure function of what the image shows, and different compositions never
share a caption within one language (tests/test_world_languages.py checks every composition).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LANGUAGES", "NON_LATIN", "Grammar", "caption", "captions"]

# BCP-47 codes, English first (the language the gallery's sidecar captions are written in).
LANGUAGES: tuple[str, ...] = ("en", "de", "es", "ja", "ru")
NON_LATIN: frozenset[str] = frozenset({"ja", "ru"})


@dataclass(frozen=True)
class Grammar:
    """One language's words for the world's vocabulary and how a caption is put together from them."""

    sizes: dict[str, str | tuple[str, str]]  # (masculine/neuter form, feminine or neuter form) where it agrees
    colours: dict[str, str | tuple[str, str]]
    shapes: dict[str, tuple[str, str]]  # word, gender key ("m", "f", "n", or "" where nothing agrees)
    backgrounds: dict[str, str]
    build: Callable[[str, str, str, str], str]  # (size, colour, shape, background) words -> caption


def _agree(word: str | tuple[str, str], gender: str, second: str) -> str:
    """The form of an adjective for a noun of `gender`: the second form when the gender is `second`."""
    if isinstance(word, str):
        return word
    return word[1] if gender == second else word[0]


_EN = Grammar(
    sizes={"small": "small", "large": "large"},
    colours={c: c for c in ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")},
    shapes={s: (s, "") for s in ("circle", "square", "triangle", "star", "cross", "crescent")},
    backgrounds={b: b for b in ("grass", "sand", "sky", "brick", "night", "wood")},
    build=lambda size, colour, shape, bg: f"a {size} {colour} {shape} on a {bg} background",
)

# German: "ein" + adjectives ending -er (masculine) or -es (neuter) in the nominative.
_DE = Grammar(
    sizes={"small": ("kleiner", "kleines"), "large": ("großer", "großes")},
    colours={"red": ("roter", "rotes"), "green": ("grüner", "grünes"), "blue": ("blauer", "blaues"),
             "yellow": ("gelber", "gelbes"), "purple": ("violetter", "violettes"),
             "orange": ("orangefarbener", "orangefarbenes"), "white": ("weißer", "weißes"),
             "black": ("schwarzer", "schwarzes")},
    shapes={"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
            "star": ("Stern", "m"), "cross": ("Kreuz", "n"), "crescent": ("Halbmond", "m")},
    backgrounds={"grass": "Grashintergrund", "sand": "Sandhintergrund", "sky": "Himmelshintergrund",
                 "brick": "Backsteinhintergrund", "night": "Nachthintergrund", "wood": "Holzhintergrund"},
    build=lambda size, colour, shape, bg: f"ein {size} {colour} {shape} auf einem {bg}",
)

# Spanish: article and adjectives agree with the shape's gender; colour after the noun.
_ES = Grammar(
    sizes={"small": ("pequeño", "pequeña"), "large": "gran"},  # before the noun "grande" shortens to "gran"
    colours={"red": ("rojo", "roja"), "green": "verde", "blue": "azul", "yellow": ("amarillo", "amarilla"),
             "purple": ("morado", "morada"), "orange": "naranja", "white": ("blanco", "blanca"),
             "black": ("negro", "negra")},
    shapes={"circle": ("círculo", "m"), "square": ("cuadrado", "m"), "triangle": ("triángulo", "m"),
            "star": ("estrella", "f"), "cross": ("cruz", "f"), "crescent": ("media luna", "f")},
    backgrounds={"grass": "césped", "sand": "arena", "sky": "cielo", "brick": "ladrillo", "night": "noche",
                 "wood": "madera"},
    build=lambda size, colour, shape, bg: f"{size} {shape} {colour} sobre un fondo de {bg}",
)

# Japanese: the background first ("on a grass background, a small red circle"); no agreement.
_JA = Grammar(
    sizes={"small": "小さい", "large": "大きい"},
    colours={"red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い", "purple": "紫の",
             "orange": "オレンジ色の", "white": "白い", "black": "黒い"},
    shapes={"circle": ("円", ""), "square": ("正方形", ""), "triangle": ("三角形", ""), "star": ("星", ""),
            "cross": ("十字", ""), "crescent": ("三日月", "")},
    backgrounds={"grass": "草", "sand": "砂", "sky": "空", "brick": "レンガ", "night": "夜", "wood": "木目"},
    build=lambda size, colour, shape, bg: f"{bg}の背景に{size}{colour}{shape}",
)

# Russian: adjectives agree with the shape's gender (only "star" is feminine); background in the genitive.
_RU = Grammar(
    sizes={"small": ("маленький", "маленькая"), "large": ("большой", "большая")},
    colours={"red": ("красный", "красная"), "green": ("зелёный", "зелёная"), "blue": ("синий", "синяя"),
             "yellow": ("жёлтый", "жёлтая"), "purple": ("фиолетовый", "фиолетовая"),
             "orange": ("оранжевый", "оранжевая"), "white": ("белый", "белая"), "black": ("чёрный", "чёрная")},
    shapes={"circle": ("круг", "m"), "square": ("квадрат", "m"), "triangle": ("треугольник", "m"),
            "star": ("звезда", "f"), "cross": ("крест", "m"), "crescent": ("полумесяц", "m")},
    backgrounds={"grass": "травы", "sand": "песка", "sky": "неба", "brick": "кирпича", "night": "ночи",
                 "wood": "дерева"},
    build=lambda size, colour, shape, bg: f"{size} {colour} {shape} на фоне {bg}",
)

_GRAMMARS: dict[str, Grammar] = {"en": _EN, "de": _DE, "es": _ES, "ja": _JA, "ru": _RU}
# Which gender takes an adjective's second form, per language.
_SECOND_FORM = {"de": "n", "es": "f", "ru": "f"}


def caption(size: str, colour: str, shape: str, background: str, lang: str) -> str:
    """The caption of one composition in `lang`; KeyError names an unknown language or word."""
    if lang not in _GRAMMARS:
        raise KeyError(f"no captions for language {lang!r} (known: {', '.join(LANGUAGES)})")
    g = _GRAMMARS[lang]
    noun, gender = g.shapes[shape]
    second = _SECOND_FORM.get(lang, "")
    text = g.build(_agree(g.sizes[size], gender, second), _agree(g.colours[colour], gender, second), noun,
                   g.backgrounds[background])
    if lang == "es":  # the indefinite article agrees too
        text = ("una " if gender == "f" else "un ") + text
    return text


def captions(size: str, colour: str, shape: str, background: str) -> dict[str, str]:
    """The composition's caption in every language, English first."""
    return {lang: caption(size, colour, shape, background, lang) for lang in LANGUAGES}
