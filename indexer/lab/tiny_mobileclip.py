"""A tiny random-init MobileCLIP-shaped model in open_clip's `local-dir:` layout, built offline (no hub).

The config is open_clip's own MobileCLIP config for the chosen timm image tower (`fastvit_mci0`: MobileCLIP2-S0,
at its 256-pixel input), with the text tower cut to toy widths: a CLIP-style custom text tower over open_clip's
SimpleTokenizer (context 77, the full CLIP vocabulary), pooled at the end-of-text token (argmax) and, as in
MobileCLIP-S*/MobileCLIP2, without a causal mask, so the padding length is part of the model (`causal=True` gives
MobileCLIP-B's causal text tower instead). The preprocess is the one open_clip's pretrained config gives that
model (MobileCLIP: mean 0, std 1, bilinear, shortest-side resize), written into the folder's config as the
published OpenCLIP folders carry it. Tests and benchmarks load it through open_clip's own `local-dir:` path.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from indexer.lab.tiny_siglip import CONFIG_FILE, WEIGHTS_FILE

__all__ = ["MOBILECLIP_MODELS", "reference_model", "tiny_mobileclip_config", "write_tiny_mobileclip"]

# open_clip's MobileCLIP model configs (the family this runtime serves; MobileCLIP2-L-14's tower is a plain ViT)
MOBILECLIP_MODELS = ("MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP-B", "MobileCLIP2-B", "MobileCLIP2-S0",
                     "MobileCLIP2-S2", "MobileCLIP2-S3", "MobileCLIP2-S4", "MobileCLIP2-L-14")
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def reference_model(timm_model_name: str) -> str:
    """The open_clip MobileCLIP model whose image tower is `timm_model_name` (the smallest such, MobileCLIP2's
    first): its config and pretrained preprocess are the tiny model's."""
    import open_clip

    for name in sorted(MOBILECLIP_MODELS, key=lambda n: (not n.startswith("MobileCLIP2"), n)):
        if open_clip.get_model_config(name)["vision_cfg"].get("timm_model_name") == timm_model_name:
            return name
    raise ValueError(f"no open_clip MobileCLIP config uses the image tower {timm_model_name!r}")


def tiny_mobileclip_config(timm_model_name: str = "fastvit_mci0", causal: bool = False, width: int = 32,
                           layers: int = 2, heads: int = 2, embed_dim: int = 32,
                           image_size: int | None = None) -> dict[str, Any]:
    """open_clip_config.json: the reference MobileCLIP config with a toy text tower, and its preprocess.

    `image_size` overrides the input size (a FastViT tower is convolutional and takes any multiple of 32: a
    smaller one only makes a test that is about the text tower cheaper)."""
    import open_clip

    name = reference_model(timm_model_name)
    model_cfg = copy.deepcopy(open_clip.get_model_config(name))
    model_cfg["embed_dim"] = embed_dim
    if image_size is not None:
        model_cfg["vision_cfg"]["image_size"] = image_size
    model_cfg["text_cfg"].update({"width": width, "layers": layers, "heads": heads, "no_causal_mask": not causal})
    tag = open_clip.list_pretrained_tags_by_model(name)[0]
    pretrained = open_clip.get_pretrained_cfg(name, tag)
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in pretrained.items() if k in PREPROCESS_KEYS}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


def write_tiny_mobileclip(out: Path, seed: int = 0, timm_model_name: str = "fastvit_mci0", causal: bool = False,
                          width: int = 32, layers: int = 2, heads: int = 2, embed_dim: int = 32,
                          image_size: int | None = None) -> Path:
    """Write the model folder (config and random-init weights; the tokenizer is open_clip's built-in one, as in
    the published folders) to `out`; returns `out`.

    The defaults are the test model; `width=512, layers=12, heads=8, embed_dim=512` gives MobileCLIP-S*'s text
    tower shape (benchmarks/text_families.py --large)."""
    import open_clip
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_mobileclip_config(timm_model_name, causal, width, layers, heads, embed_dim, image_size)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{out}", device="cpu")  # no weights yet: random init
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    return out
