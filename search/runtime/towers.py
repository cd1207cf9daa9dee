"""The text and image towers the service runs: ONNX Runtime sessions over a verified encoder bundle.

Text: CLIP's text transformer is causal and pools at the end-of-text token, so positions after it can never
influence the pooled feature; the exported tower takes any sequence length, and a batch is cut to its longest
real token length (exact, and much cheaper than the full context). A tower without that property (the
bundle's `text.trim` is false: SigLIP's bidirectional tower pooled at the last position, where the padding is
part of the model) is fed every row padded to the full context, and its graph takes nothing else.

HF text towers (open_clip's HFTextEncoder: XLM-R mean pooler, NLLB CLS pooler) take an `attention_mask` input
beside the tokens, 1 where the token is not the model's pad id (what open_clip computes from the tokens); the
mask hides padding from attention, the positions and the pooler, so such a batch is cut after its longest
real row like CLIP's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from search.artifact.bundle import IMAGE_FILE, TEXT_FILE, TEXT_INT8_FILE, TOKENIZER_FILE, EncoderBundle
from search.artifact.encoder import EncoderIdentity, IdentityShape
from search.runtime.preprocess import ImagePreprocess
from search.runtime.sessions import DEFAULT_PROVIDERS, ort_session
from search.runtime.tokenizer import LangText, load_tokenizer

__all__ = [
    "ImageEncoder",
    "OnnxImageEncoder",
    "OnnxTextEncoder",
    "Precision",
    "RuntimeEncoder",
    "TextEncoder",
    "TrimmingTextEncoder",
    "text_feeds",
    "token_lengths",
]

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]


class TextEncoder(Protocol):
    """What the service needs from a text backend."""

    @property
    def context_length(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def tokenize(self, texts: Sequence[str]) -> np.ndarray: ...

    def lengths(self, tokens: np.ndarray) -> np.ndarray: ...

    def encode_token_ids(self, tokens: np.ndarray) -> np.ndarray: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class ImageEncoder(Protocol):
    """Preprocessed pixels (N, 3, H, W) in, unit vectors (N, D) out."""

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray: ...


def token_lengths(tokens: np.ndarray, pool_type: str = "argmax", eos_id: int | None = None,
                  mask_pad_id: int | None = None) -> np.ndarray:
    """Real length of each row: position of the end-of-text token + 1, or for a masked tower (`mask_pad_id`)
    the position of the last token that is not padding + 1."""
    if mask_pad_id is not None:
        real = tokens != mask_pad_id
        last = np.where(real.any(axis=1), tokens.shape[1] - real[:, ::-1].argmax(axis=1), 1)
        return np.asarray(last)  # a row of padding only keeps one position: the graph's shapes stay valid
    if pool_type == "eos" and eos_id is not None:
        return np.asarray((tokens == eos_id).argmax(axis=1) + 1)
    return np.asarray(tokens.argmax(axis=1) + 1)


def text_feeds(tokens: np.ndarray, mask_pad_id: int | None = None) -> dict[str, np.ndarray]:
    """A text graph's inputs for an already cut token batch: the tokens, and for a masked tower (HF towers)
    `attention_mask`, 1 where the token is not `mask_pad_id` (open_clip's HFTextEncoder rule)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    if mask_pad_id is None:
        return {"tokens": tokens}
    return {"tokens": tokens, "attention_mask": (tokens != mask_pad_id).astype(np.int64)}


class TrimmingTextEncoder:
    """What every text backend shares: each row's real length from its end token, and a batch cut after its
    longest real sequence when `trim` says that is exact for the tower (causal mask + EOT pooling)."""

    trim: bool
    pool_type: str
    eos_id: int | None
    mask_pad_id: int | None = None

    def lengths(self, tokens: np.ndarray) -> np.ndarray:
        """The length each row must be fed at: its real length when trimming is exact, else the whole row."""
        if not self.trim:
            return np.full(tokens.shape[0], tokens.shape[1], dtype=np.int64)
        return token_lengths(tokens, self.pool_type, self.eos_id, self.mask_pad_id)

    def trimmed(self, tokens: np.ndarray) -> np.ndarray:
        if not self.trim or tokens.shape[0] == 0:
            return tokens
        return tokens[:, : int(self.lengths(tokens).max())]

    def feeds(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's inputs for a token batch: the trimmed tokens, and for a masked tower its attention mask."""
        return text_feeds(self.trimmed(tokens), self.mask_pad_id)


class OnnxTextEncoder(TrimmingTextEncoder):
    """Tokenizer + text-tower session; `trim` cuts each batch to its longest real sequence; `mask_pad_id` (HF
    towers) feeds the attention mask too."""

    def __init__(self, tokenizer: Any, session: Any, dim: int, trim: bool = True, pool_type: str = "argmax",
                 eos_id: int | None = None, mask_pad_id: int | None = None):
        self.tokenizer = tokenizer
        self.session = session
        self.dim = dim
        self.context_length = int(tokenizer.context_length)
        self.trim = trim
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.mask_pad_id = mask_pad_id

    def tokenize(self, texts: Sequence[str | LangText]) -> np.ndarray:
        """Rows of token ids; a `LangText` row is tokenized in its source language (models that take one)."""
        return np.asarray(self.tokenizer(list(texts)), dtype=np.int64)


    def encode_token_ids(self, tokens: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, self.feeds(tokens))
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_token_ids(self.tokenize(texts))


class OnnxImageEncoder:
    """Image-tower session, `micro_batch` images per session call (ViT-B-32 on CPU is fastest in small ones)."""

    def __init__(self, session: Any, dim: int, micro_batch: int = 8):
        self.session = session
        self.dim = dim
        self.micro_batch = max(1, micro_batch)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = [self.session.run(None, {"pixels": pixels[i:i + self.micro_batch]})[0]
                 for i in range(0, len(pixels), self.micro_batch)]
        return np.concatenate(parts).astype(np.float32, copy=False)


@dataclass(frozen=True)
class RuntimeOptions:
    """What text and image sessions share (search.settings.RuntimeSettings, or an indexer's choice)."""

    threads: int = 0
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    text_precision: Precision = "int8"


class RuntimeEncoder(IdentityShape):
    """One artifact's encoder: tokenizer, preprocess, text session (at start) and image session (on first use)."""

    def __init__(self, bundle: EncoderBundle, options: RuntimeOptions):
        self.bundle = bundle
        self.identity: EncoderIdentity = bundle.identity
        self.options = options
        self.precision: Precision = options.text_precision  # what the text session really runs
        self.preprocess = ImagePreprocess(bundle.preprocess)
        self.text = OnnxTextEncoder(load_tokenizer(bundle.tokenizer, bundle.path(TOKENIZER_FILE)),
                                    self._session(self._text_file()), bundle.identity.dim, bundle.text.trim,
                                    bundle.text.pool_type, bundle.text.eos_id, bundle.text.mask_pad_id)
        self._image: OnnxImageEncoder | None = None
        self._image_lock = threading.Lock()

    def _text_file(self) -> Path:
        """The text graph for the configured precision; int8 falls back to fp32 (logged, and reported by
        `precision`) for an encoder folder that carries no int8 graph."""
        if self.options.text_precision == "int8":
            if TEXT_INT8_FILE in self.bundle.files:
                return self.bundle.path(TEXT_INT8_FILE)
            log.warning("encoder %s carries no %s: running the fp32 text tower", self.identity.key, TEXT_INT8_FILE)
        self.precision = "fp32"
        return self.bundle.path(TEXT_FILE)

    def _session(self, path: Path) -> Any:
        return ort_session(path, self.options.threads, self.options.providers)

    @property
    def image(self) -> OnnxImageEncoder:
        """The image tower, loaded on first use (text queries need not wait for it at start)."""
        with self._image_lock:
            if self._image is None:
                self._image = OnnxImageEncoder(self._session(self.bundle.path(IMAGE_FILE)), self.dim)
            return self._image

    @property
    def languages(self) -> tuple[str, ...]:
        """Source-language codes the text tower takes (NLLB's); empty for models that take none."""
        return tuple(getattr(self.bundle.tokenizer, "languages", ()))

    @property
    def default_language(self) -> str | None:
        """The language a query without `lang` is tokenized in (None: the model takes none)."""
        return getattr(self.bundle.tokenizer, "default_language", None)

    def has_tokens(self, text: str) -> bool:
        """False when `text` tokenizes to nothing (it cleans to no words): such a query has no meaning."""
        return bool(self.text.tokenizer.encode(text))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> unit vectors (offline evaluation calls this)."""
        return self.text.encode(texts)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images (any mode) -> unit vectors, through the artifact's preprocess and image tower."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.image.encode_pixels(np.stack([self.preprocess(im) for im in images]))

    @classmethod
    def load(cls, bundle: EncoderBundle, options: RuntimeOptions | None = None) -> RuntimeEncoder:
        return cls(bundle, options or RuntimeOptions())
