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
A tokenizer with a source language (NLLB) wraps each text in its language's template instead (what
transformers' NllbTokenizer does for `src_lang`): a row is a plain text (the model's default language) or a
`LangText` naming a language the spec lists.
"""

from __future__ import annotations

import html
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from search.artifact.specs import AnyTokenizerSpec, HFTokenizerSpec, TokenizerSpec

__all__ = ["ClipTokenizer", "HFTextTokenizer", "LangText", "TextTokenizer", "clean_function", "load_tokenizer"]


class LangText(NamedTuple):
    """A query text with its source language (a code from the tokenizer spec's `languages`, e.g. `deu_Latn`)."""

    text: str
    language: str


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

    def __call__(self, texts: Sequence[str | LangText]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            if isinstance(text, LangText):  # CLIP takes no source language: the text alone
                text = text.text
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
        self._language_ids: dict[str, int] = {}
        self._eos = int(spec.eos_id) if spec.eos_id is not None else spec.pad_id  # spec.check: set with languages
        for code in spec.languages:
            token = plain.token_to_id(code)
            if token is None:
                raise ValueError(f"HF tokenizer spec lists language {code!r}, which tokenizer.json does not hold")
            self._language_ids[code] = int(token)

    @property
    def languages(self) -> tuple[str, ...]:
        """The source languages this tokenizer takes (empty: it takes none)."""
        return self.spec.languages

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

    def _with_language(self, text: str, language: str) -> list[int]:
        """NLLB's template for one text: `<lang> ids </s>` (or `ids </s> <lang>`), the ids cut to leave room for
        the two special tokens (on the truncation side), padded to the context (on the padding side)."""
        spec = self.spec
        code = self._language_ids.get(language)
        if code is None:  # a caller's bad argument (the HTTP layer resolves `lang` before): never a KeyError
            raise ValueError(f"source language {language!r} is not one this tokenizer takes "
                             f"({len(self._language_ids)} codes, e.g. {spec.default_language!r})")
        prefix, suffix = ([code], [self._eos]) if spec.language_position == "prefix" else ([], [self._eos, code])
        ids = self.encode(text)
        room = max(0, self.context_length - len(prefix) - len(suffix))
        if len(ids) > room:
            ids = ids[:room] if spec.truncation_side == "right" else ids[len(ids) - room:]
        row = [*prefix, *ids, *suffix][: self.context_length]
        padding = [spec.pad_id] * (self.context_length - len(row))
        return row + padding if spec.padding_side == "right" else padding + row

    def __call__(self, texts: Sequence[str | LangText]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.context_length), dtype=np.int64)
        if self._language_ids:
            default = str(self.spec.default_language)
            rows = [self._with_language(t.text, t.language) if isinstance(t, LangText) else
                    self._with_language(t, default) for t in texts]
            return self._strip_sep(np.asarray(rows, dtype=np.int64).reshape(len(texts), self.context_length))
        plain = [t.text if isinstance(t, LangText) else t for t in texts]  # a model without languages ignores it
        # one text at a time: `encode_batch` fans out over a rayon pool of every core, outside the service's
        # thread budget (search.runtime.threads), for texts that take microseconds each
        encodings = [self._padded.encode(self._clean(t)) for t in plain]
        return self._strip_sep(np.asarray([e.ids for e in encodings], dtype=np.int64).reshape(len(texts),
                                                                                           self.context_length))

    def _strip_sep(self, out: np.ndarray) -> np.ndarray:
        if self.spec.strip_sep_token and self.spec.sep_id is not None:
            out[out == self.spec.sep_id] = 0  # open_clip zeroes the separator (not the pad id)
        return out


TextTokenizer = ClipTokenizer | HFTextTokenizer


def load_tokenizer(spec: AnyTokenizerSpec, tokenizer_file: Path) -> TextTokenizer:
    """The runtime tokenizer for an encoder.json "tokenizer" spec and its tokenizer.json."""
    if isinstance(spec, HFTokenizerSpec):
        return HFTextTokenizer.load(spec, tokenizer_file)
    return ClipTokenizer.load(spec, tokenizer_file)
