"""open_clip's tokenizers, rebuilt from the files an artifact carries (no torch, no open_clip, no transformers).

`ClipTokenizer` is open_clip's CLIP `SimpleTokenizer`; `HFTextTokenizer` is open_clip's `HFTokenizer` (SigLIP,
SigLIP2 and the HF text towers) run from the model's own `tokenizer.json`. `load_tokenizer` picks by the spec.

The rules are open_clip's `SimpleTokenizer`: clean (ftfy, HTML entities unescaped twice, whitespace collapsed,
lower-cased for `clean="lower"`), split with its regular expression, map UTF-8 bytes to unicode, byte-pair
encode with `</w>` ending each word, wrap in start/end ids, truncate to the context with the end id kept last.
The byte-pair encoding itself is the `tokenizers` library's BPE model over the exported vocabulary and merges.

HFTokenizer: the same clean rules, then the tokenizer JSON does everything transformers' fast tokenizer does
for `tokenizer(texts, max_length=context, padding="max_length", truncation=True)`: normalise, pre-tokenize,
encode, add the special tokens (post-processor), truncate keeping them, pad every row to the full context.
"""

from __future__ import annotations

import html
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.artifact.specs import AnyTokenizerSpec, HFTokenizerSpec, TokenizerSpec

__all__ = ["ClipTokenizer", "HFTextTokenizer", "TextTokenizer", "clean_function", "load_tokenizer"]


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


class HFTextTokenizer:
    """Texts -> (N, context_length) int64 ids, equal to open_clip's HFTokenizer token for token."""

    def __init__(self, spec: HFTokenizerSpec, plain: Any, padded: Any):
        spec.check()
        self.spec = spec
        self.context_length = spec.context_length
        self._clean = clean_function(spec.clean)
        self._plain = plain  # no special tokens, truncation or padding: what a query has to say (`encode`)
        padded.no_truncation()
        padded.no_padding()
        padded.enable_truncation(max_length=spec.context_length, strategy="longest_first",
                                 direction=spec.truncation_side)
        padded.enable_padding(direction=spec.padding_side, pad_id=spec.pad_id, pad_token=spec.pad_token,
                              length=spec.context_length)
        self._padded = padded

    @classmethod
    def load(cls, spec: HFTokenizerSpec, tokenizer_file: Path) -> HFTextTokenizer:
        from tokenizers import Tokenizer

        plain = Tokenizer.from_file(str(tokenizer_file))
        plain.no_truncation()
        plain.no_padding()
        tokenizer = cls(spec, plain, Tokenizer.from_file(str(tokenizer_file)))
        tokenizer(["warm up"])  # ftfy's import and pattern compilation happen at load time, not in a query
        return tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of one text without special tokens; [] when the text cleans to nothing."""
        ids: list[int] = self._plain.encode(self._clean(text), add_special_tokens=False).ids
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.context_length), dtype=np.int64)
        # one text at a time: `encode_batch` fans out over a rayon pool of every core, outside the service's
        # thread budget (search.runtime.threads), for texts that take microseconds each
        encodings = [self._padded.encode(self._clean(t)) for t in texts]
        out = np.asarray([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), self.context_length)
        if self.spec.strip_sep_token and self.spec.sep_id is not None:
            out[out == self.spec.sep_id] = 0  # open_clip zeroes the separator (not the pad id)
        return out


TextTokenizer = ClipTokenizer | HFTextTokenizer


def load_tokenizer(spec: AnyTokenizerSpec, tokenizer_file: Path) -> TextTokenizer:
    """The runtime tokenizer for an encoder.json "tokenizer" spec and its tokenizer.json."""
    if isinstance(spec, HFTokenizerSpec):
        return HFTextTokenizer.load(spec, tokenizer_file)
    return ClipTokenizer.load(spec, tokenizer_file)
