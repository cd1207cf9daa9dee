"""BCP-47 language tags (what browsers and clients send: `de`, `ja-JP`, `zh-Hant`, `pt-BR`) to the source-language
codes a multilingual tokenizer takes (NLLB's FLORES-200 codes: ISO 639-3 language + ISO 15924 script, such as
`deu_Latn`). The language subtag picks the language (its ISO 639-3 code, and the macrolanguage member NLLB
uses where they differ: `ar` -> `arb`, `fa` -> `pes`, `ms` -> `zsm`), a script subtag picks the script, else the
language's usual one (Chinese: Traditional for TW, HK and MO); a code the model lists may also be given as is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["resolve_language"]

# ISO 639-1 -> (NLLB's ISO 639-3 code, usual script)
_LANGUAGES: dict[str, tuple[str, str]] = {
    "af": ("afr", "Latn"), "am": ("amh", "Ethi"), "ar": ("arb", "Arab"), "az": ("azj", "Latn"),
    "be": ("bel", "Cyrl"), "bg": ("bul", "Cyrl"), "bn": ("ben", "Beng"), "bs": ("bos", "Latn"),
    "ca": ("cat", "Latn"), "cs": ("ces", "Latn"), "cy": ("cym", "Latn"), "da": ("dan", "Latn"),
    "de": ("deu", "Latn"), "el": ("ell", "Grek"), "en": ("eng", "Latn"), "eo": ("epo", "Latn"),
    "es": ("spa", "Latn"), "et": ("est", "Latn"), "eu": ("eus", "Latn"), "fa": ("pes", "Arab"),
    "fi": ("fin", "Latn"), "fr": ("fra", "Latn"), "ga": ("gle", "Latn"), "gl": ("glg", "Latn"),
    "gu": ("guj", "Gujr"), "he": ("heb", "Hebr"), "hi": ("hin", "Deva"), "hr": ("hrv", "Latn"),
    "hu": ("hun", "Latn"), "hy": ("hye", "Armn"), "id": ("ind", "Latn"), "is": ("isl", "Latn"),
    "it": ("ita", "Latn"), "ja": ("jpn", "Jpan"), "ka": ("kat", "Geor"), "kk": ("kaz", "Cyrl"),
    "km": ("khm", "Khmr"), "kn": ("kan", "Knda"), "ko": ("kor", "Hang"), "lt": ("lit", "Latn"),
    "lv": ("lvs", "Latn"), "mk": ("mkd", "Cyrl"), "ml": ("mal", "Mlym"), "mr": ("mar", "Deva"),
    "ms": ("zsm", "Latn"), "my": ("mya", "Mymr"), "nb": ("nob", "Latn"), "ne": ("npi", "Deva"),
    "nl": ("nld", "Latn"), "nn": ("nno", "Latn"), "no": ("nob", "Latn"), "pa": ("pan", "Guru"),
    "pl": ("pol", "Latn"), "pt": ("por", "Latn"), "ro": ("ron", "Latn"), "ru": ("rus", "Cyrl"),
    "sk": ("slk", "Latn"), "sl": ("slv", "Latn"), "sq": ("als", "Latn"), "sr": ("srp", "Cyrl"),
    "sv": ("swe", "Latn"), "sw": ("swh", "Latn"), "ta": ("tam", "Taml"), "te": ("tel", "Telu"),
    "th": ("tha", "Thai"), "tl": ("tgl", "Latn"), "tr": ("tur", "Latn"), "uk": ("ukr", "Cyrl"),
    "ur": ("urd", "Arab"), "uz": ("uzn", "Latn"), "vi": ("vie", "Latn"), "zh": ("zho", "Hans"),
}
_TRADITIONAL_REGIONS = {"TW", "HK", "MO"}
_TAG = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$")  # BCP-47's shape (ASCII subtags)


def resolve_language(tag: str, known: Sequence[str]) -> str:
    """The code in `known` for a BCP-47 tag (or one of `known` itself); ValueError saying why otherwise."""
    tag = tag.strip()
    if tag in known:
        return tag
    if not _TAG.match(tag):
        raise ValueError(f"lang {tag!r} is not a BCP-47 language tag (e.g. 'de', 'ja-JP', 'zh-Hant')")
    parts = tag.replace("_", "-").split("-")
    primary = parts[0].lower()
    language, script = _LANGUAGES.get(primary, (primary, ""))
    if len(primary) == 2 and primary not in _LANGUAGES:
        raise ValueError(f"lang {tag!r}: language {primary!r} is not one this service maps to the model's codes")
    subtags = parts[1:]
    scripts = [p.title() for p in subtags if len(p) == 4 and p.isalpha()]
    regions = {p.upper() for p in subtags if len(p) == 2 or (len(p) == 3 and p.isdigit())}
    if scripts:
        script = scripts[0]
    elif language == "zho" and regions & _TRADITIONAL_REGIONS:
        script = "Hant"
    candidates = [f"{language}_{script}"] if script else sorted(c for c in known if c.startswith(f"{language}_"))
    if len(candidates) == 1 and candidates[0] in known:
        return candidates[0]
    raise ValueError(f"lang {tag!r} is not a language this model takes ({len(known)} known, e.g. "
                     f"{', '.join(sorted(known)[:3])})")
