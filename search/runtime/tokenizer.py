"""open_clip's CLIP tokenizer, rebuilt from the files an artifact carries (no torch, no open_clip).

The rules are open_clip's `SimpleTokenizer`: clean (ftfy, HTML entities unescaped twice, whitespace collapsed,
lower-cased for `clean="lower"`), split with its regular expression, map UTF-8 bytes to unicode, byte-pair
encode with `</w>` ending each word, wrap in start/end ids, truncate to the context with the end id kept last.
The byte-pair encoding itself is the `tokenizers` library's BPE model over the exported vocabulary and merges.
"""

from __future__ import annotations

import html
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.artifact.specs import TokenizerSpec

__all__ = ["ClipTokenizer", "clean_function"]


def _basic_clean(text: str) -> str:
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split()).strip()


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _canonicalize(text: str) -> str:
    text = _basic_clean(text).replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split()).strip()


def clean_function(rule: str) -> Callable[[str], str]:
    """open_clip's clean rules by name."""
    rules: dict[str, Callable[[str], str]] = {
        "lower": lambda t: _whitespace_clean(_basic_clean(t)).lower(),
        "whitespace": lambda t: _whitespace_clean(_basic_clean(t)),
        "canonicalize": _canonicalize,
    }
    if rule not in rules:
        raise ValueError(f"unknown tokenizer clean rule {rule!r} (expected one of {', '.join(rules)})")
    return rules[rule]


class ClipTokenizer:
    """Texts -> (N, context_length) int64 token ids, equal to open_clip's tokenizer token for token."""

    def __init__(self, spec: TokenizerSpec, bpe: Any):
        import regex

        self.spec = spec
        self.context_length = spec.context_length
        self._bpe = bpe
        self._clean = clean_function(spec.clean)
        self._pattern = regex.compile(spec.pattern, regex.IGNORECASE)

    @classmethod
    def load(cls, spec: TokenizerSpec, tokenizer_file: Path) -> ClipTokenizer:
        """`tokenizer_file`: a `tokenizers` JSON file (byte-level BPE over the exported vocabulary/merges)."""
        from tokenizers import Tokenizer

        tokenizer = cls(spec, Tokenizer.from_file(str(tokenizer_file)))
        tokenizer.encode("warm up")  # imports ftfy and compiles its patterns now (load time), not in a query
        return tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of one text without start/end ids; [] when the text cleans to nothing."""
        out: list[int] = []
        run: list[str] = []
        for word in self._pattern.findall(self._clean(text)):
            special = self.spec.special_tokens.get(word)
            if special is None:
                run.append(word)
                continue
            out.extend(self._encode_words(run))
            run = []
            out.append(special)
        out.extend(self._encode_words(run))
        return out

    def _encode_words(self, words: list[str]) -> list[int]:
        if not words:
            return []
        ids: list[int] = self._bpe.encode(words, is_pretokenized=True, add_special_tokens=False).ids
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.spec.sot_id, *self.encode(text), self.spec.eot_id]
            if len(tokens) > self.context_length:
                tokens = tokens[: self.context_length]
                tokens[-1] = self.spec.eot_id
            out[row, : len(tokens)] = tokens
        return out
