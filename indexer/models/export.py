"""Export of an open_clip encoder for the torch-free runtime: ONNX towers, tokenizer files, preprocess spec.

Two places keep exports. `export_text_tower`/`export_image_tower` write `<cache>/<export key>/<name>.onnx`
once (the indexer's own ONNX image backend uses them). `export_bundle` assembles a store's encoder folder
(`STORE/encoders/<bundle key>/`, search.artifact.bundle documents it) from those exports, hard-linked when the
cache is on the same file system: a folder that already exists for the encoder is reused as it is, so a
nightly run with an unchanged model writes no model file. Everything is written to a temporary name and
renamed into place, so concurrent readers never see a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from search.artifact.bundle import (
    BUNDLE_FORMAT,
    ENCODERS_DIR,
    IMAGE_FILE,
    SPEC_FILE,
    TEXT_FILE,
    TEXT_INT8_FILE,
    TOKENIZER_FILE,
    TextSpec,
)
from search.artifact.checksums import file_entry
from search.artifact.encoder import EncoderNotServableError
from search.artifact.manifest import EncoderFiles, FileEntry
from search.artifact.specs import AnyTokenizerSpec, HFTokenizerSpec, PreprocessSpec, TokenizerSpec
from search.runtime.towers import token_lengths

__all__ = [
    "EXPORT_COSINE_FLOOR",
    "bundle_key",
    "check_exports",
    "check_servable",
    "default_cache_dir",
    "export_bundle",
    "export_image_tower",
    "export_key",
    "export_text_tower",
    "export_tower",
    "hf_int8_reduce_range",
    "hf_text_encoder",
    "preprocess_spec",
    "quantize_int8",
    "text_parts",
    "text_spec",
    "tokenizer_spec",
    "trim_is_exact",
    "write_tokenizer",
]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/photostock/onnx (~/.cache/photostock/onnx)."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "photostock" / "onnx"


def export_key(encoder: Any) -> str:
    """Directory name for an encoder's exports: its identity key, or a digest of the weights themselves when
    the identity cannot tell weights apart (random init: every such encoder shares one identity)."""
    identity = encoder.identity
    if identity.checksum != "random-init":
        return str(identity.key)
    digest = hashlib.sha256(identity.key.encode())
    for name, tensor in sorted(encoder.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return "random-" + digest.hexdigest()[:16]


def bundle_key(encoder: Any) -> str:
    """Name of the store's encoder folder: the export key and the bundle format (a format change re-exports).

    Known without loading the model unless the weights are a random init (search.artifact.encoder identity rules)."""
    return hashlib.sha256(f"{export_key(encoder)}/format-{BUNDLE_FORMAT}".encode()).hexdigest()[:20]


def export_tower(encoder: Any, cache_dir: Path, name: str, tower: Callable[[Any], Any], sample: tuple[Any, ...],
                 input_names: Sequence[str], output_names: Sequence[str],
                 dynamic_axes: Mapping[str, Mapping[int, str]]) -> Path:
    """Export `tower(model)` once to `cache_dir/<export key>/<name>.onnx`; an existing export is reused.

    The tower is built from the encoder's model in float32 on the CPU; the model goes back to its device after.
    """
    import torch

    target = Path(cache_dir) / export_key(encoder) / f"{name}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        module = tower(encoder.model.float().cpu())
        # grad stays enabled: under no_grad nn.MultiheadAttention takes a fused fast path ONNX cannot export
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter (advanced indexing, constant shapes) on exact graphs
            torch.onnx.export(
                module, sample, str(tmp), dynamo=False, input_names=list(input_names),
                output_names=list(output_names), dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                opset_version=17,
            )
    finally:
        encoder.model.to(encoder.device)
    os.replace(tmp, target)  # atomic: concurrent exporters never see a half-written file
    return target


# -- text tower ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextParts:
    """The pieces of an open_clip text tower the export runs, whichever model class holds them: CLIP keeps them
    on the model itself (`text_pool_type`, `text_eos_id`), CustomTextCLIP (SigLIP, SigLIP2, MobileCLIP) on
    `model.text`."""

    source: Any  # the module holding token_embedding, positional_embedding, transformer, ln_final, text_projection
    pool_type: str
    eos_id: int | None
    attn_mask: Any  # the causal mask, or None for a bidirectional tower


POOL_TYPES = ("argmax", "eos", "last", "first")


def text_parts(model: Any) -> TextParts:
    """The tower's parts, or EncoderNotServableError naming what this runtime cannot reproduce exactly."""
    import torch
    from open_clip.transformer import ResidualAttentionBlock, TextTransformer

    text = getattr(model, "text", None)
    if text is None and hasattr(model, "token_embedding"):  # open_clip.CLIP: the tower's parts on the model
        parts = TextParts(model, str(getattr(model, "text_pool_type", "argmax")), getattr(model, "text_eos_id", None),
                          getattr(model, "attn_mask", None))
    elif isinstance(text, TextTransformer):
        if text.cls_emb is not None:
            raise EncoderNotServableError("text tower with a class token (CoCa-style) cannot be served by this "
                                          "runtime")
        if text.use_pad_mask:
            raise EncoderNotServableError("text tower with a padding attention mask cannot be served by this "
                                          "runtime yet (attention-mask inputs)")
        eos = text.eos_id if text.pool_type == "eos" else None
        parts = TextParts(text, str(text.pool_type), None if eos is None else int(eos), text.attn_mask)
    else:
        name = type(text).__name__ if text is not None else type(model).__name__
        raise EncoderNotServableError(f"text tower {name} cannot be served exactly by this runtime")
    if parts.pool_type not in POOL_TYPES:
        raise EncoderNotServableError(f"text pooling {parts.pool_type!r} cannot be served (known: {POOL_TYPES})")
    for block in parts.source.transformer.resblocks:
        if type(block) is not ResidualAttentionBlock or not isinstance(block.attn, torch.nn.MultiheadAttention):
            raise EncoderNotServableError(f"text block {type(block).__name__} with {type(block.attn).__name__} "
                                          "attention cannot be exported exactly by this runtime")
    if parts.attn_mask is not None and not _is_causal(parts.attn_mask):
        raise EncoderNotServableError("text tower with an attention mask other than causal cannot be served")
    return parts


def _is_causal(mask: Any) -> bool:
    import torch

    upper = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    return bool(torch.isinf(mask[upper]).all() and (mask[upper] < 0).all() and (mask[~upper] == 0).all())


def trim_is_exact(model: Any) -> bool:
    """True when dropping trailing padding cannot change the pooled feature (causal mask + EOT pooling: CLIP,
    MobileCLIP-B). Without a causal mask every position attends to the padding, so the padding length is part
    of the model and the tower is fed the full context (SigLIP's last pool, MobileCLIP-S*/MobileCLIP2's EOT)."""
    text = getattr(model, "text", None)
    source = model if text is None else text
    mask = getattr(source, "attn_mask", None)
    pool = getattr(model, "text_pool_type", None) or getattr(source, "pool_type", None)
    if mask is None or pool not in {"argmax", "eos"}:
        return False
    return _is_causal(mask)


def _block_forward(block: Any, x: Any, mask: Any) -> Any:
    """One open_clip residual block with attention written out (batch-first), so ONNX keeps shapes dynamic."""
    import torch.nn.functional as F

    attn = block.attn
    heads = attn.num_heads
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    shape = (x.shape[0], x.shape[1], heads, -1)
    q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(attn.out_proj(out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def text_tower_module(model: Any, explicit_attention: bool = False) -> Any:
    """A standalone module computing normalised text features for tokens of any length <= context.

    `explicit_attention` writes attention out by hand (for ONNX export: nn.MultiheadAttention's traced graph
    bakes in the example's batch and sequence sizes). A bidirectional tower (no mask) is only exact at the
    full context: its export fixes the sequence axis there (`export_text_tower`).
    """
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    if hf_text_encoder(model) is not None:
        return _hf_tower_module(model.text)
    parts = text_parts(model)

    class TrimmedTextTower(torch.nn.Module):
        def __init__(self, src: Any):
            super().__init__()
            self.token_embedding = src.token_embedding
            self.positional_embedding = src.positional_embedding
            self.transformer = src.transformer
            self.ln_final = src.ln_final
            self.text_projection = src.text_projection
            self.pool_type = parts.pool_type
            self.eos_id = parts.eos_id
            self.register_buffer("attn_mask", parts.attn_mask, persistent=False)

        def forward(self, text: torch.Tensor) -> torch.Tensor:
            length = text.shape[1]
            mask = None if self.attn_mask is None else self.attn_mask[:length, :length]  # type: ignore[index]
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

    return TrimmedTextTower(parts.source).eval()


def export_text_tower(encoder: Any, cache_dir: Path) -> Path:
    """Export (once) the text tower to `cache_dir/<export key>/text.onnx`: dynamic batch axis, and a dynamic
    sequence axis where trimming is exact (CLIP, HF towers); a tower fed the full context (SigLIP) takes only
    that. HF towers take `attention_mask` beside `tokens`."""
    import torch

    tokens = np.asarray(encoder.tokenize(["a photo of a cat", "x", "a photo of a dog on the grass"]))
    hf = hf_text_encoder(encoder.model)
    if hf is not None:
        pad = int(hf.config.pad_token_id)
        cut = tokens[:, : int(token_lengths(tokens, mask_pad_id=pad).max())]
        # every sample row ends in a masked position: transformers drops an all-ones mask while tracing, and
        # the graph must apply the mask whatever it is fed
        ids = torch.as_tensor(np.concatenate([cut, np.full((len(cut), 1), pad)], axis=1).astype(np.int64))
        both = {0: "batch", 1: "seq"}
        return export_tower(encoder, cache_dir, "text", text_tower_module, (ids, (ids != pad).long()),
                            ["tokens", "attention_mask"], ["features"],
                            {"tokens": both, "attention_mask": both, "features": {0: "batch"}})
    trim = trim_is_exact(encoder.model)
    sample = torch.as_tensor((tokens[:2, :8] if trim else tokens).astype(np.int64))
    axes: dict[str, dict[int, str]] = {"tokens": {0: "batch", 1: "seq"} if trim else {0: "batch"},
                                       "features": {0: "batch"}}
    return export_tower(encoder, cache_dir, "text", lambda model: text_tower_module(model, explicit_attention=True),
                        (sample,), ["tokens"], ["features"], axes)


def text_spec(encoder: Any) -> TextSpec:
    """What the runtime needs to feed the exported tower; EncoderNotServableError for a tower it cannot serve."""
    model = encoder.model
    hf = hf_text_encoder(model)
    if hf is not None:
        return hf_text_spec(hf, encoder.tokenizer)
    parts = text_parts(model)
    if getattr(model, "text", None) is None:  # CLIP: exactly what format 1 has always written
        eos = getattr(model, "text_eos_id", None)
        return TextSpec(trim=trim_is_exact(model), pool_type=str(getattr(model, "text_pool_type", "argmax")),
                        eos_id=None if eos is None else int(eos))
    return TextSpec(trim=trim_is_exact(model), pool_type=parts.pool_type, eos_id=parts.eos_id)


# -- HF text towers -----------------------------------------------------------------------------------------
# open_clip's HFTextEncoder poolers served exactly (the pooler module itself runs in the graph) and the
# transformers architectures whose export is checked against open_clip (tests/test_hf_text_towers.py)
HF_POOLERS = {"MeanPooler": "mean", "ClsPooler": "cls", "ClsLastHiddenStatePooler": "cls"}
HF_ARCHITECTURES = ("xlm-roberta", "m2m_100")


def hf_text_encoder(model: Any) -> Any | None:
    """The model's open_clip HFTextEncoder (XLM-R, NLLB, ... text towers), or None for any other tower."""
    from open_clip.hf_model import HFTextEncoder

    text = getattr(model, "text", None)
    return text if isinstance(text, HFTextEncoder) else None


def hf_text_spec(text: Any, tokenizer: Any) -> TextSpec:
    """The TextSpec of an HF text tower, or EncoderNotServableError with the reason.

    open_clip masks every position holding the config's pad id; where the tokenizer pads with that id, the
    padding is hidden from attention, positions and pooler, so a batch may be cut after its longest real row
    (`trim`); where it pads with another id, the padding is part of the model and every row is fed whole."""
    pooler = type(text.pooler).__name__
    if pooler not in HF_POOLERS:
        raise EncoderNotServableError(f"HF text tower pooler {pooler} cannot be served exactly by this runtime "
                                      f"(served: {', '.join(HF_POOLERS)})")
    arch = str(getattr(text.config, "model_type", ""))
    if arch not in HF_ARCHITECTURES:
        raise EncoderNotServableError(f"HF text tower architecture {arch!r} is not one this runtime's export is "
                                      f"checked for (served: {', '.join(HF_ARCHITECTURES)})")
    pad = getattr(text.config, "pad_token_id", None)
    if pad is None:
        raise EncoderNotServableError(f"HF text tower {arch} has no pad_token_id: open_clip's attention mask is "
                                      "undefined")
    padded_with = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
    return TextSpec(trim=padded_with == pad, pool_type=HF_POOLERS[pooler], eos_id=None, mask_pad_id=int(pad))


def hf_int8_reduce_range(encoder: Any) -> bool:
    """Whether the text tower's int8 graph takes 7-bit weights (`quantize_int8`): HF towers do."""
    return hf_text_encoder(encoder.model) is not None


def _hf_tower_module(text: Any) -> Any:
    """open_clip's HFTextEncoder.forward with the attention mask as an input, normalised: tokens and mask of any
    length <= context in, unit features out (the tower's own transformer, pooler and projection)."""
    import torch
    import torch.nn.functional as F

    class MaskedHFTextTower(torch.nn.Module):
        def __init__(self, tower: Any):
            super().__init__()
            self.tower = tower

        def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = self.tower.transformer(input_ids=tokens, attention_mask=attention_mask)
            return F.normalize(self.tower.proj(self.tower.pooler(out, attention_mask)), dim=-1)

    return MaskedHFTextTower(text).eval()


# -- image tower --------------------------------------------------------------------------------------------
def _image_tower_module(model: Any) -> Any:
    import torch
    import torch.nn.functional as F

    class NormalisedImageTower(torch.nn.Module):
        def __init__(self, visual: torch.nn.Module):
            super().__init__()
            self.visual = visual

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.visual(pixels), dim=-1)

    return NormalisedImageTower(_inference_form(model.visual)).eval()


def _inference_form(visual: Any) -> Any:
    """A timm trunk with re-parameterisable blocks (MobileOne/FastViT branches: MobileCLIP's image towers) as a
    fused copy: each block's parallel convolutions and batch norms folded into one convolution, the same function
    to float rounding (the publish check holds the export to open_clip's own encode_image) at fewer operations.
    Every other tower is exported as it is."""
    from open_clip.timm_model import TimmModel

    if not isinstance(visual, TimmModel) or not any(hasattr(m, "reparameterize") for m in visual.modules()):
        return visual
    from timm.utils.model import reparameterize_model

    return reparameterize_model(visual)


def _image_size(encoder: Any) -> tuple[int, int]:
    """(height, width) the image tower takes (open_clip towers keep an int or a pair)."""
    size = getattr(encoder.model.visual, "image_size", 224)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def export_image_tower(encoder: Any, cache_dir: Path) -> Path:
    """Export (once) the image tower to `cache_dir/<export key>/image.onnx` with a dynamic batch axis."""
    import torch

    height, width = _image_size(encoder)
    # batch 3 in the example: a batch of 1 or 2 can let the tracer fold the batch size into reshapes
    sample = torch.zeros((3, 3, height, width), dtype=torch.float32)
    return export_tower(encoder, cache_dir, "image", _image_tower_module, (sample,), ["pixels"], ["features"],
                        {"pixels": {0: "batch"}, "features": {0: "batch"}})


def preprocess_spec(encoder: Any) -> PreprocessSpec:
    """The model's evaluation transform as data (open_clip's preprocess_cfg); refuses what the runtime cannot
    reproduce exactly."""
    cfg = dict(getattr(encoder.model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", getattr(encoder.model.visual, "image_size", 224))
    spec = PreprocessSpec.from_dict({
        "size": size, "resize_mode": cfg.get("resize_mode") or "shortest",
        "interpolation": cfg.get("interpolation") or "bicubic",
        "mean": cfg.get("mean") or (0.48145466, 0.4578275, 0.40821073),
        "std": cfg.get("std") or (0.26862954, 0.26130258, 0.27577711),
    })
    if cfg.get("fill_color", 0) not in (0, None) and spec.resize_mode != "squash":
        raise ValueError("preprocess fill_color other than 0 is not supported by the runtime")
    return spec


# -- tokenizer ----------------------------------------------------------------------------------------------
def tokenizer_spec(tokenizer: Any) -> AnyTokenizerSpec:
    """Settings of the encoder's open_clip tokenizer (SimpleTokenizer or HFTokenizer); other kinds are refused
    with the reason."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if isinstance(tokenizer, HFTokenizer):
        return _hf_tokenizer_spec(tokenizer)
    if not isinstance(tokenizer, SimpleTokenizer):
        raise EncoderNotServableError(
            f"tokenizer {type(tokenizer).__name__} cannot be exported for the runtime (open_clip SimpleTokenizer "
            "or HFTokenizer with a tokenizer.json; for SigLIP pass the model folder: --model local-dir:DIR)")
    if tokenizer.reduction_fn is not None:
        raise EncoderNotServableError("tokenizers with a reduction mask cannot be exported for the runtime")
    clean = {"_clean_lower": "lower", "_clean_whitespace": "whitespace",
             "_clean_canonicalize": "canonicalize"}.get(getattr(tokenizer.clean_fn, "__name__", ""))
    if clean is None:
        raise EncoderNotServableError(f"unknown tokenizer clean function {tokenizer.clean_fn!r}")
    specials = {tokenizer.decoder[i]: int(i) for i in tokenizer.all_special_ids}
    return TokenizerSpec(context_length=int(tokenizer.context_length), sot_id=int(tokenizer.sot_token_id),
                         eot_id=int(tokenizer.eot_token_id), clean=clean, pattern=tokenizer.pat.pattern,
                         special_tokens=specials)


def _hf_tokenizer_spec(tokenizer: Any) -> HFTokenizerSpec:
    """open_clip's HFTokenizer in its standard mode over a fast (`tokenizers`) backend."""
    if tokenizer.tokenizer_mode:
        raise EncoderNotServableError(f"HFTokenizer mode {tokenizer.tokenizer_mode!r} cannot be served by this "
                                      "runtime (standard mode only)")
    hf = tokenizer.tokenizer
    if getattr(hf, "backend_tokenizer", None) is None:
        raise EncoderNotServableError(f"tokenizer {type(hf).__name__} has no tokenizer.json (fast) form the "
                                      "runtime can run")
    clean = {"_clean_lower": "lower", "_clean_whitespace": "whitespace",
             "_clean_canonicalize": "canonicalize"}.get(getattr(tokenizer.clean_fn, "__name__", ""))
    if clean is None:
        raise EncoderNotServableError(f"unknown tokenizer clean function {tokenizer.clean_fn!r}")
    if hf.pad_token_id is None:
        raise EncoderNotServableError("HF tokenizer without a pad token cannot pad to the context")
    sep = getattr(hf, "sep_token_id", None)
    spec = HFTokenizerSpec(context_length=int(tokenizer.context_length), clean=clean, pad_id=int(hf.pad_token_id),
                           pad_token=str(hf.pad_token), padding_side=str(hf.padding_side),
                           truncation_side=str(hf.truncation_side), strip_sep_token=bool(tokenizer.strip_sep_token),
                           sep_id=None if sep is None else int(sep))
    if hasattr(tokenizer, "set_lang_fn"):
        return replace(spec, **_source_languages(hf))
    return spec


_LANGUAGE_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")  # FLORES-200: ISO 639-3 + ISO 15924 script


def _source_languages(hf: Any) -> dict[str, Any]:
    """NLLB's source-language template as data (its `set_src_lang_special_tokens`: `<lang> text </s>`, or
    `text </s> <lang>` in legacy mode); other tokenizers with a source language are refused with the reason."""
    if not type(hf).__name__.startswith("Nllb"):
        raise EncoderNotServableError(f"tokenizer {type(hf).__name__} takes a source language in a way this runtime "
                                      "does not reproduce (served: NLLB's)")
    specials = [str(t) for t in hf.all_special_tokens]
    languages = tuple(sorted(t for t in specials if _LANGUAGE_CODE.match(t) and hf.convert_tokens_to_ids(t) is not None
                             and hf.convert_tokens_to_ids(t) != hf.unk_token_id))
    if str(hf.src_lang) not in languages:
        raise EncoderNotServableError(f"NLLB tokenizer's source language {hf.src_lang!r} is not among its tokens")
    return {"languages": languages, "default_language": str(hf.src_lang),
            "language_position": "suffix" if getattr(hf, "legacy_behaviour", False) else "prefix",
            "eos_id": int(hf.eos_token_id)}


def write_tokenizer(tokenizer: Any, path: Path) -> None:
    """The tokenizer as a `tokenizers` JSON for search.runtime.tokenizer: open_clip's vocabulary and merges as a
    byte-level BPE, or an HF tokenizer's own backend (its padding and truncation left to the spec)."""
    from open_clip.tokenizer import HFTokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers

    if isinstance(tokenizer, HFTokenizer):
        backend = Tokenizer.from_str(tokenizer.tokenizer.backend_tokenizer.to_str())
        backend.no_padding()
        backend.no_truncation()
        backend.save(str(path))
        return
    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])]
    bpe = models.BPE(vocab=dict(tokenizer.encoder), merges=merges, end_of_word_suffix="</w>")
    hf = Tokenizer(bpe)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.save(str(path))


def check_servable(encoder: Any) -> None:
    """EncoderNotServableError when the runtime cannot serve `encoder` exactly (text tower, tokenizer or
    preprocess): checked when the model loads, so a build refuses before it encodes anything."""
    text_spec(encoder)
    tokenizer_spec(encoder.tokenizer)
    try:
        preprocess_spec(encoder)
    except ValueError as exc:
        raise EncoderNotServableError(str(exc)) from exc


# -- the exports checked against open_clip --------------------------------------------------------------------
EXPORT_COSINE_FLOOR = 0.9999
_CHECK_TEXTS = ("a photo of a cat", "A Small RED Circle 東京の夜景 مرحبا 😀", "x",
                "a large blue star on a sky background " * 9)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def check_exports(encoder: Any, text_path: Path, image_path: Path) -> None:
    """EncoderNotServableError when the fp32 graphs do not reproduce open_clip's own `encode_text` and
    `encode_image` (cosine below EXPORT_COSINE_FLOOR on a few texts fed as the runtime feeds them, and on random
    pixels): a tower whose export is not exact (an op the tracer fixed to its example, a stale export cache) is
    refused at publish, never served approximately. The reference runs in float32 on the CPU, as the export."""
    import torch

    from search.runtime.sessions import ort_session
    from search.runtime.towers import OnnxTextEncoder

    spec = text_spec(encoder)
    tokens = np.asarray(encoder.tokenize(list(_CHECK_TEXTS)), dtype=np.int64)
    text = OnnxTextEncoder(SimpleNamespace(context_length=tokens.shape[1]), ort_session(text_path, 1), encoder.dim,
                           spec.trim, spec.pool_type, spec.eos_id, spec.mask_pad_id)
    pixels = np.random.default_rng(0).standard_normal((3, 3, *_image_size(encoder))).astype(np.float32)
    model = encoder.model.float().cpu()
    try:
        with torch.no_grad():
            want_text = model.encode_text(torch.from_numpy(tokens)).numpy()
            want_image = model.encode_image(torch.from_numpy(pixels)).numpy()
    finally:
        encoder.model.to(encoder.device)
    got_image = ort_session(image_path, 1).run(None, {"pixels": pixels})[0]
    for tower, got, want, path in (("text", text.encode_token_ids(tokens), want_text, text_path),
                                   ("image", got_image, want_image, image_path)):
        cosine = _min_cosine(np.asarray(got, np.float64), np.asarray(want, np.float64))
        if not cosine >= EXPORT_COSINE_FLOOR:
            raise EncoderNotServableError(
                f"the exported {tower} tower ({path}) does not reproduce open_clip's encode_{tower} (cosine "
                f"{cosine:.5f} < {EXPORT_COSINE_FLOOR}): the runtime cannot serve it exactly")


# -- int8 ---------------------------------------------------------------------------------------------------
# ONNX Runtime's quantizer logs this (on the root logger) for any model that has not been through its
# `quant_pre_process`. The int8 tower is measured as quantised here, without that step (benchmarks/int8_towers.py
# checks it against the fp32 tower), so the hint is noise in every build log; only this message is dropped.
_PREPROCESS_HINT = "Please consider to run pre-processing before quantization"


@contextlib.contextmanager
def _without_root_message(prefix: str) -> Iterator[None]:
    """Drop root-logger records starting with `prefix` for the duration of the block (nothing else)."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize_int8(source: Path, target: Path, reduce_range: bool = False) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised per call) of the MatMul/Gemm weights.

    `reduce_range` quantises weights to 7 bits: CPUs without VNNI (AVX2) sum u8 x s8 products in pairs into
    int16 and saturate when both sides are near their extremes; HF towers' projection (uniform init, wide
    activations) hit it (tiny XLM-R cosine to fp32 0.972 with 8 bits, 0.9999 with 7, on an AVX2 EPYC).
    CLIP's and SigLIP's int8 graphs keep 8 bits (`hf_int8_reduce_range`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    with _without_root_message(_PREPROCESS_HINT):
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         reduce_range=reduce_range)
    os.replace(tmp, target)
    return target


# -- the store's encoder folder -----------------------------------------------------------------------------
def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _entries(directory: Path, names: Sequence[str]) -> dict[str, FileEntry]:
    return {n: file_entry(directory / n) for n in names}


def _existing(store: Path, rel: str) -> EncoderFiles | None:
    spec_path = store / rel / SPEC_FILE
    if not spec_path.is_file():
        return None
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    files = {n: FileEntry.from_dict(e) for n, e in spec["files"].items()}
    files[SPEC_FILE] = file_entry(spec_path)
    return EncoderFiles(dir=rel, files=files)


def export_bundle(encoder: Any, store: Path, cache_dir: Path | None = None, int8_text: bool = True) -> EncoderFiles:
    """The store's encoder folder for `encoder` (exported now unless it exists); returns the manifest entry."""
    store = Path(store)
    rel = f"{ENCODERS_DIR}/{bundle_key(encoder)}"
    found = _existing(store, rel)
    if found is not None:
        return found
    check_servable(encoder)  # the reason, before any file is written
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = store / rel
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        text_path, image_path = export_text_tower(encoder, cache), export_image_tower(encoder, cache)
        check_exports(encoder, text_path, image_path)  # the reason, before the folder exists
        _link_or_copy(text_path, tmp / TEXT_FILE)
        _link_or_copy(image_path, tmp / IMAGE_FILE)
        names = [TEXT_FILE, IMAGE_FILE, TOKENIZER_FILE]
        if int8_text:
            quantize_int8(tmp / TEXT_FILE, tmp / TEXT_INT8_FILE, reduce_range=hf_int8_reduce_range(encoder))
            names.append(TEXT_INT8_FILE)
        write_tokenizer(encoder.tokenizer, tmp / TOKENIZER_FILE)
        files = _entries(tmp, names)
        spec = {"format": BUNDLE_FORMAT, "identity": encoder.identity.to_dict(),
                "tokenizer": tokenizer_spec(encoder.tokenizer).to_dict(),
                "preprocess": preprocess_spec(encoder).to_dict(), "text": text_spec(encoder).to_dict(),
                "files": {n: asdict(e) for n, e in files.items()}}
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for file in tmp.iterdir():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
            file.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        try:
            os.rename(tmp, target)
        except OSError:  # another exporter finished the same folder first: theirs is equal, keep it
            if not (target / SPEC_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            _remove_tree(tmp)
    found = _existing(store, rel)
    assert found is not None
    return found


def _remove_tree(path: Path) -> None:
    path.chmod(stat.S_IRWXU)
    shutil.rmtree(path)
