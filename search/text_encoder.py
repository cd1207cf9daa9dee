"""Online text encoding: CLIP's text tower run only up to the batch's longest real token length.

CLIP's text transformer is causal and pools at the end-of-text token, so positions after the EOT token can
never influence the pooled feature: cutting the padded context down to the longest real sequence of the batch
is exact, and much cheaper. A tower without a causal mask (or pooling that reads padding) falls back to the
full context. Two backends share that trimming: torch (eager) and ONNX Runtime (the same tower exported once
with dynamic batch and sequence axes, cached on disk by encoder identity).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from search.encoder import ClipEncoder
from search.onnx_runtime import export_tower, ort_session

if TYPE_CHECKING:  # torch is imported lazily at run time
    import torch

log = logging.getLogger(__name__)

__all__ = [
    "TextEncoder",
    "TorchTextEncoder",
    "OnnxTextEncoder",
    "build_text_encoder",
    "token_lengths",
    "trim_is_exact",
]


class TextEncoder(Protocol):
    """What the service needs from a text backend."""

    context_length: int
    dim: int

    def tokenize(self, texts: Sequence[str]) -> np.ndarray: ...

    def lengths(self, tokens: np.ndarray) -> np.ndarray: ...

    def encode_token_ids(self, tokens: np.ndarray) -> np.ndarray: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def trim_is_exact(model: Any) -> bool:
    """True when dropping trailing padding cannot change the pooled feature (causal mask + EOT pooling)."""
    mask = getattr(model, "attn_mask", None)
    pool = getattr(model, "text_pool_type", None)
    if mask is None or pool not in {"argmax", "eos"}:
        return False
    import torch

    upper = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    return bool(torch.isinf(mask[upper]).all() and (mask[upper] < 0).all() and (mask[~upper] == 0).all())


def token_lengths(tokens: np.ndarray, pool_type: str = "argmax", eos_id: int | None = None) -> np.ndarray:
    """Real length of each row (position of the end-of-text token + 1)."""
    if pool_type == "eos" and eos_id is not None:
        return np.asarray((tokens == eos_id).argmax(axis=1) + 1)
    return np.asarray(tokens.argmax(axis=1) + 1)


def _block_forward(block: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One open_clip residual block with attention written out (batch-first), so ONNX keeps shapes dynamic."""
    import torch.nn.functional as F

    attn = block.attn
    heads = attn.num_heads
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    shape = (x.shape[0], x.shape[1], heads, -1)
    q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5) + mask
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(attn.out_proj(out))
    result: torch.Tensor = x + block.ls_2(block.mlp(block.ln_2(x)))
    return result


def _text_tower_module(model: Any, explicit_attention: bool = False) -> torch.nn.Module:
    """A standalone module computing normalised text features for tokens of any length <= context.

    `explicit_attention` writes attention out by hand (for ONNX export: nn.MultiheadAttention's traced graph
    bakes in the example's batch and sequence sizes).
    """
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    class TrimmedTextTower(torch.nn.Module):
        def __init__(self, clip: Any):
            super().__init__()
            self.token_embedding = clip.token_embedding
            self.positional_embedding = clip.positional_embedding
            self.transformer = clip.transformer
            self.ln_final = clip.ln_final
            self.text_projection = clip.text_projection
            self.pool_type = clip.text_pool_type
            self.eos_id = getattr(clip, "text_eos_id", None)
            self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

        def forward(self, text: torch.Tensor) -> torch.Tensor:
            length = text.shape[1]
            attn_mask: torch.Tensor = self.attn_mask  # type: ignore[assignment]  # a registered buffer
            mask = attn_mask[:length, :length]
            x = self.token_embedding(text) + self.positional_embedding[:length]
            if explicit_attention:
                for block in self.transformer.resblocks:
                    x = _block_forward(block, x, mask)
            else:
                x = self.transformer(x, attn_mask=mask)
            x = self.ln_final(x)
            x = text_global_pool(x, text, self.pool_type, eos_token_id=self.eos_id)
            if isinstance(self.text_projection, torch.nn.Linear):
                x = self.text_projection(x)
            elif self.text_projection is not None:
                x = x @ self.text_projection
            return F.normalize(x, dim=-1)

    return TrimmedTextTower(model).eval()


class _TrimmingBase:
    """Tokenisation and the trim decision, shared by both backends."""

    def __init__(self, encoder: ClipEncoder):
        self.encoder = encoder
        self.context_length = encoder.context_length
        self.dim = encoder.dim
        self.trim = trim_is_exact(encoder.model)
        self.pool_type = getattr(encoder.model, "text_pool_type", "argmax")
        self.eos_id = getattr(encoder.model, "text_eos_id", None)
        if not self.trim:
            log.warning("text tower is not causal with EOT pooling: encoding at full context")

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.encoder.tokenize(texts).numpy(), dtype=np.int64)

    def lengths(self, tokens: np.ndarray) -> np.ndarray:
        return token_lengths(tokens, self.pool_type, self.eos_id)

    def trimmed(self, tokens: np.ndarray) -> np.ndarray:
        if not self.trim or tokens.shape[0] == 0:
            return tokens
        return tokens[:, : int(self.lengths(tokens).max())]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_token_ids(self.tokenize(texts))

    def encode_token_ids(self, tokens: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TorchTextEncoder(_TrimmingBase):
    """Eager torch backend (the reference the ONNX backend is checked against)."""

    def __init__(self, encoder: ClipEncoder):
        super().__init__(encoder)
        self.tower = _text_tower_module(encoder.model) if self.trim else None

    def encode_token_ids(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        if self.tower is None:
            return self.encoder.encode_tokens(torch.from_numpy(tokens))
        batch = torch.from_numpy(np.ascontiguousarray(self.trimmed(tokens))).to(self.encoder.device)
        with torch.inference_mode():
            out = self.tower(batch)
        return np.asarray(out.float().cpu().numpy())


class OnnxTextEncoder(_TrimmingBase):
    """ONNX Runtime backend: the text tower exported once with dynamic (batch, sequence) axes."""

    def __init__(self, encoder: ClipEncoder, cache_dir: Path, threads: int = 0):
        super().__init__(encoder)
        self.path = export_text_tower(encoder, cache_dir)
        self.session = ort_session(self.path, threads)

    def encode_token_ids(self, tokens: np.ndarray) -> np.ndarray:
        tokens = tokens if self.trim else tokens[:, : self.context_length]
        (out,) = self.session.run(None, {"tokens": np.ascontiguousarray(self.trimmed(tokens))})
        return np.asarray(out, dtype=np.float32)


def export_text_tower(encoder: ClipEncoder, cache_dir: Path) -> Path:
    """Export (once) the text tower to `cache_dir/<export key>/text.onnx`; reuses an existing export."""
    import torch

    sample = torch.from_numpy(encoder.tokenize(["a photo of a cat", "x"]).numpy()[:, :8].astype(np.int64))
    return export_tower(encoder, cache_dir, "text", lambda model: _text_tower_module(model, explicit_attention=True),
                        (sample,), ["tokens"], ["features"],
                        {"tokens": {0: "batch", 1: "seq"}, "features": {0: "batch"}})


def build_text_encoder(encoder: ClipEncoder, backend: str, cache_dir: Path | None = None,
                       threads: int = 0) -> TextEncoder:
    """Pick the backend named in config ('torch' or 'onnx')."""
    if backend == "torch":
        return TorchTextEncoder(encoder)
    if backend == "onnx":
        if cache_dir is None:
            raise ValueError("the onnx backend needs a cache_dir for the exported text tower")
        return OnnxTextEncoder(encoder, cache_dir, threads)
    raise ValueError(f"unknown text backend {backend!r} (expected 'torch' or 'onnx')")
