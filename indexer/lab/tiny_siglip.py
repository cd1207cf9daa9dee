"""A tiny random-init SigLIP-style model in open_clip's `local-dir:` layout, built offline (no hub).

Modelled on open_clip's ViT-B-16-SigLIP config at toy widths: a bidirectional text transformer (no causal
mask) pooled at the last position of a 64-token context (so the padding length is part of the model), a
linear projection with bias, SigLIP's squash resize with mean/std 0.5, and an HF tokenizer (a Unigram
vocabulary trained here with `tokenizers` on the synthetic world's captions, an end-of-sequence token
appended, padded to the context) saved as a tokenizer folder beside the config and weights, as downloading
a model repository gives. Tests and benchmarks load it through open_clip's own `local-dir:` path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from indexer.lab import world

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "tiny_siglip_config", "training_captions", "write_tiny_siglip"]

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
CONTEXT_LENGTH = 64


def training_captions() -> list[str]:
    """The world's captions plus a few lines of other scripts, so the vocabulary is not English-only."""
    captions = [c.caption for c in world.all_compositions()]
    extra = ["ein kleiner roter Kreis auf Sand", "un gran cuadrado azul sobre ladrillo", "赤い星 夜空 小さい",
             "большой зелёный крест на траве", "نجمة حمراء صغيرة على الرمل", "Photo: Café at Night!"]
    return captions + extra


def tiny_siglip_config(vocab_size: int, clean: str = "canonicalize", width: int = 32, layers: int = 2,
                       image_size: int = 64, heads: int = 2, mlp_ratio: float = 2.0, vision_width: int | None = None,
                       vision_layers: int | None = None) -> dict[str, Any]:
    """open_clip_config.json: ViT-B-16-SigLIP's text settings, toy sizes by default, SigLIP's preprocess."""
    return {
        "model_cfg": {
            "embed_dim": width,
            "init_logit_bias": -10,
            "custom_text": True,
            "vision_cfg": {"image_size": image_size, "patch_size": 16, "width": vision_width or width,
                           "layers": vision_layers or layers, "head_width": 16, "mlp_ratio": 2.0},
            "text_cfg": {
                "context_length": CONTEXT_LENGTH, "vocab_size": vocab_size,
                # any non-empty name selects open_clip's HFTokenizer; local-dir: reads the files here
                "hf_tokenizer_name": "photostock/tiny-siglip",
                "tokenizer_kwargs": {"clean": clean},
                "width": width, "heads": heads, "layers": layers, "mlp_ratio": mlp_ratio,
                "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
            },
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                           "resize_mode": "squash"},
    }


def _train_tokenizer(captions: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(captions, trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return tok


def write_tiny_siglip(out: Path, seed: int = 0, clean: str = "canonicalize", vocab_size: int = 200,
                      safetensors: bool = False, width: int = 32, layers: int = 2, heads: int = 2,
                      text_vocab_size: int | None = None, vision_width: int | None = None,
                      vision_layers: int | None = None) -> Path:
    """Write the model folder (config, random-init weights, tokenizer files) to `out`; returns `out`.

    The defaults are the test model; `width=768, layers=12, heads=12, text_vocab_size=32000` gives a text tower
    of ViT-B-16-SigLIP's shape (benchmarks/text_families.py --large; the embedding table is sized by
    `text_vocab_size`, the trained vocabulary stays small)."""
    import open_clip
    import torch
    from transformers import PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(training_captions(), vocab_size)
    hf = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=CONTEXT_LENGTH)
    hf.save_pretrained(str(out))
    vocab = max(tok.get_vocab_size(), text_vocab_size or 0)
    config = tiny_siglip_config(vocab, clean, width=width, layers=layers, heads=heads,
                                mlp_ratio=4.0 if width >= 256 else 2.0, vision_width=vision_width,
                                vision_layers=vision_layers)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{out}", device="cpu")  # no weights yet: random init
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(out / "open_clip_model.safetensors"))
    else:
        torch.save(state, out / WEIGHTS_FILE)
    return out
