"""Offline tower backends over a loaded ClipEncoder: eager torch (the reference) and ONNX Runtime.

Image (bulk encoding): 'auto' is ONNX Runtime on a CPU encoder (faster than eager torch: benchmarks/image_units.py,
figures in benchmarks/README.md; micro-batches of 8) and torch with float16 autocast on CUDA. Text: the torch
backend trims padding like the service's ONNX one (search.runtime.towers) and is what that is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.models.clip import ClipEncoder
from indexer.models.export import (
    export_image_tower,
    export_text_tower,
    hf_int8_reduce_range,
    quantize_int8,
    text_spec,
    text_tower_module,
)
from search.runtime.sessions import ort_session
from search.runtime.tokenizer import LangText
from search.runtime.towers import ImageEncoder, OnnxImageEncoder, OnnxTextEncoder, Precision, TrimmingTextEncoder

__all__ = ["TorchImageEncoder", "TorchTextEncoder", "build_image_encoder", "onnx_image_encoder",
           "onnx_text_encoder"]


class _NumpyTokenizer:
    """open_clip's tokenizer answering numpy int64 (the runtime tower's interface)."""

    def __init__(self, encoder: ClipEncoder):
        self.encoder = encoder
        self.context_length = encoder.context_length

    def __call__(self, texts: Sequence[str | LangText]) -> np.ndarray:
        """ValueError for a `LangText` row: open_clip's tokenizers take no per-text source language, and encoding
        the text alone would answer for a language the caller did not ask for (the runtime's tokenizer applies
        them: search.runtime.tokenizer)."""
        plain: list[str] = []
        for text in texts:
            if isinstance(text, LangText):
                raise ValueError(f"the offline text tower of {self.encoder.identity.model} takes no source "
                                 f"language (got {text.language!r}): pass the text alone")
            plain.append(text)
        return np.asarray(self.encoder.tokenize(plain).numpy(), dtype=np.int64)

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens (open_clip's HFTokenizer has no `encode`: clean, then its HF tokenizer)."""
        tokenizer = self.encoder.tokenizer
        hf = getattr(tokenizer, "tokenizer", None)
        if hf is not None and hasattr(tokenizer, "clean_fn"):
            return list(hf(tokenizer.clean_fn(text), add_special_tokens=False)["input_ids"])
        return list(tokenizer.encode(text))


class TorchTextEncoder(TrimmingTextEncoder):
    """Eager torch text backend with the same padding trim as the runtime's ONNX one."""

    def __init__(self, encoder: ClipEncoder):
        self.encoder = encoder
        self.context_length = encoder.context_length
        self.dim = encoder.dim
        spec = text_spec(encoder)
        self.trim, self.pool_type, self.eos_id = spec.trim, spec.pool_type, spec.eos_id
        self.mask_pad_id = spec.mask_pad_id
        self.tower = text_tower_module(encoder.model) if self.trim else None
        self._tokenizer = _NumpyTokenizer(encoder)

    def tokenize(self, texts: Sequence[str | LangText]) -> np.ndarray:
        return self._tokenizer(texts)

    def encode_token_ids(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        if self.tower is None:
            return self.encoder.encode_tokens(torch.from_numpy(tokens))
        feeds = [torch.from_numpy(v).to(self.encoder.device) for v in self.feeds(tokens).values()]
        with torch.inference_mode():
            out = self.tower(*feeds)
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_token_ids(self.tokenize(texts))


def onnx_text_encoder(encoder: ClipEncoder, cache_dir: Path, threads: int = 0,
                      precision: Precision = "fp32") -> OnnxTextEncoder:
    """The runtime's ONNX text tower over this encoder's export (open_clip's own tokenizer)."""
    path = export_text_tower(encoder, cache_dir)
    if precision == "int8":
        int8 = path.with_name("text.int8.onnx")
        path = int8 if int8.is_file() else quantize_int8(path, int8, reduce_range=hf_int8_reduce_range(encoder))
    spec = text_spec(encoder)
    return OnnxTextEncoder(_NumpyTokenizer(encoder), ort_session(path, threads), encoder.dim, spec.trim,
                           spec.pool_type, spec.eos_id, spec.mask_pad_id)


class TorchImageEncoder:
    """The encoder's own torch path (AMP on CUDA)."""

    def __init__(self, encoder: ClipEncoder):
        self.encoder = encoder

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.encoder.encode_pixels(pixels)


def onnx_image_encoder(encoder: ClipEncoder, cache_dir: Path, threads: int = 0, micro_batch: int = 8,
                       precision: Precision = "fp32") -> OnnxImageEncoder:
    path = export_image_tower(encoder, cache_dir)
    if precision == "int8":
        int8 = path.with_name("image.int8.onnx")
        path = int8 if int8.is_file() else quantize_int8(path, int8)
    return OnnxImageEncoder(ort_session(path, threads), encoder.dim, micro_batch)


def build_image_encoder(encoder: Any, backend: str = "auto", cache_dir: Path | None = None, threads: int = 0,
                        micro_batch: int = 8, precision: Precision = "fp32") -> ImageEncoder:
    """'auto' is ONNX Runtime on a CPU encoder and torch on CUDA; 'torch' or 'onnx' force one."""
    if backend == "auto":
        backend = "torch" if encoder.device.type != "cpu" else "onnx"
    if backend == "torch":
        return TorchImageEncoder(encoder)
    if backend == "onnx":
        if encoder.device.type != "cpu":
            raise ValueError("the onnx image backend runs on the CPU; use 'torch' (or 'auto') on CUDA")
        if cache_dir is None:
            raise ValueError("the onnx image backend needs a cache_dir for the exported image tower")
        return onnx_image_encoder(encoder, cache_dir, threads, micro_batch, precision)
    raise ValueError(f"unknown image backend {backend!r} (expected 'auto', 'torch' or 'onnx')")
