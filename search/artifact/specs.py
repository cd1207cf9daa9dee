"""The encoder's input specs a version carries (encoder.json): how text is tokenized and how images are
preprocessed. Data only: the indexer writes them at export, the artifact reader checks them, the runtime
executes them (search.runtime.tokenizer, search.runtime.preprocess)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "AnyTokenizerSpec",
    "HFTokenizerSpec",
    "INTERPOLATIONS",
    "PreprocessSpec",
    "SUPPORTED_RESIZE_MODES",
    "TokenizerSpec",
    "tokenizer_spec_from_dict",
]

SUPPORTED_RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class PreprocessSpec:
    """Input size (height, width), resize mode, interpolation, per-channel mean and std."""

    size: tuple[int, int]
    resize_mode: str
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "resize_mode": self.resize_mode, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        size = data["size"]
        height, width = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        mean = tuple(float(v) for v in data["mean"])
        std = tuple(float(v) for v in data["std"])
        spec = cls(size=(height, width), resize_mode=str(data["resize_mode"]),
                   interpolation=str(data["interpolation"]),
                   mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]))
        spec.check()
        return spec

    def check(self) -> None:
        """Refuse what this runtime cannot reproduce exactly (rather than silently differ from open_clip)."""
        if self.resize_mode not in SUPPORTED_RESIZE_MODES:
            raise ValueError(f"resize mode {self.resize_mode!r} is not supported (use {SUPPORTED_RESIZE_MODES})")
        if self.resize_mode == "shortest" and self.size[0] != self.size[1]:
            raise ValueError("resize mode 'shortest' is supported for square input sizes only")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not supported (use {INTERPOLATIONS})")


@dataclass(frozen=True)
class TokenizerSpec:
    """The tokenizer settings stored beside the vocabulary (encoder.json, key "tokenizer")."""

    context_length: int
    sot_id: int
    eot_id: int
    clean: str  # open_clip clean rule: 'lower' | 'whitespace' | 'canonicalize'
    pattern: str  # open_clip's split expression (compiled with IGNORECASE)
    special_tokens: dict[str, int]
    kind: str = "open_clip.SimpleTokenizer"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "context_length": self.context_length, "sot_id": self.sot_id,
                "eot_id": self.eot_id, "clean": self.clean, "pattern": self.pattern,
                "special_tokens": dict(self.special_tokens)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerSpec:
        kind = str(data.get("kind", "open_clip.SimpleTokenizer"))
        if kind != "open_clip.SimpleTokenizer":
            raise ValueError(f"tokenizer kind {kind!r} is not supported by this runtime")
        return cls(context_length=int(data["context_length"]), sot_id=int(data["sot_id"]),
                   eot_id=int(data["eot_id"]), clean=str(data["clean"]), pattern=str(data["pattern"]),
                   special_tokens={str(k): int(v) for k, v in data["special_tokens"].items()}, kind=kind)


CLEAN_RULES = ("lower", "whitespace", "canonicalize")
SIDES = ("right", "left")


@dataclass(frozen=True)
class HFTokenizerSpec:
    """open_clip's HFTokenizer (standard mode) as data: clean the text with one of open_clip's rules, run the
    `tokenizers` JSON (its normalizer, pre-tokenizer, model and post-processor add the special tokens), truncate
    to the context keeping the special tokens, pad every row to the full context ('max_length'), and set the
    separator id to 0 when `strip_sep_token` (open_clip zeroes it).

    A tokenizer with a source language (NLLB) lists the language tokens it knows (`languages`, FLORES-200 codes
    such as `deu_Latn`), the one it uses unless a query says otherwise (`default_language`) and where the token
    goes (`language_position`: 'prefix' = `<lang> text </s>`, 'suffix' = `text </s> <lang>`, NLLB's legacy)."""

    context_length: int
    clean: str
    pad_id: int
    pad_token: str
    padding_side: str = "right"
    truncation_side: str = "right"
    strip_sep_token: bool = False
    sep_id: int | None = None
    kind: str = "open_clip.HFTokenizer"
    languages: tuple[str, ...] = ()
    default_language: str | None = None
    language_position: str = "prefix"
    eos_id: int | None = None  # the end token a language template closes with

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind, "context_length": self.context_length, "clean": self.clean,
               "padding": "max_length", "truncation": "longest_first", "pad_id": self.pad_id,
               "pad_token": self.pad_token, "padding_side": self.padding_side,
               "truncation_side": self.truncation_side, "strip_sep_token": self.strip_sep_token,
               "sep_id": self.sep_id}
        if self.languages:  # absent for tokenizers without a source language: their encoder.json is unchanged
            out.update(languages=list(self.languages), default_language=self.default_language,
                       language_position=self.language_position, eos_id=self.eos_id)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HFTokenizerSpec:
        if data.get("padding", "max_length") != "max_length" or data.get("truncation") != "longest_first":
            raise ValueError("HF tokenizer spec: only padding 'max_length' with 'longest_first' truncation is run")
        sep = data.get("sep_id")
        spec = cls(context_length=int(data["context_length"]), clean=str(data["clean"]), pad_id=int(data["pad_id"]),
                   pad_token=str(data["pad_token"]), padding_side=str(data.get("padding_side", "right")),
                   truncation_side=str(data.get("truncation_side", "right")),
                   strip_sep_token=bool(data.get("strip_sep_token", False)), sep_id=None if sep is None else int(sep),
                   languages=tuple(str(code) for code in data.get("languages", ())),
                   default_language=data.get("default_language"),
                   language_position=str(data.get("language_position", "prefix")),
                   eos_id=None if data.get("eos_id") is None else int(data["eos_id"]))
        spec.check()
        return spec

    def check(self) -> None:
        if self.clean not in CLEAN_RULES:
            raise ValueError(f"HF tokenizer spec: unknown clean rule {self.clean!r} (use {CLEAN_RULES})")
        if self.padding_side not in SIDES or self.truncation_side not in SIDES:
            raise ValueError("HF tokenizer spec: padding/truncation side must be 'right' or 'left'")
        if self.strip_sep_token and self.sep_id is None:
            raise ValueError("HF tokenizer spec: strip_sep_token needs sep_id")
        if self.context_length < 1:
            raise ValueError("HF tokenizer spec: context_length must be positive")
        if self.languages and (self.default_language not in self.languages or self.eos_id is None
                               or self.language_position not in ("prefix", "suffix")):
            raise ValueError("HF tokenizer spec: languages need a listed default_language, an eos_id and a "
                             "language_position of 'prefix' or 'suffix'")


AnyTokenizerSpec = TokenizerSpec | HFTokenizerSpec


def tokenizer_spec_from_dict(data: dict[str, Any]) -> AnyTokenizerSpec:
    """The spec for encoder.json's "tokenizer" by its kind (absent: open_clip's SimpleTokenizer, format 1)."""
    kind = str(data.get("kind", "open_clip.SimpleTokenizer"))
    if kind == "open_clip.HFTokenizer":
        return HFTokenizerSpec.from_dict(data)
    return TokenizerSpec.from_dict(data)
