"""Tiny random-init models with HF text towers in open_clip's `local-dir:` layout, built offline (no hub).

open_clip's multilingual models put a transformers model behind `HFTextEncoder`: xlm-roberta-*-ViT-* (XLM-R,
mean pooler) and nllb-clip-* (NLLB's M2M100 encoder, CLS pooler). Each family here is that text tower at toy
widths, its transformers config written in code and saved beside open_clip's config (`config.json`, which
`hf_model_name` points at), an HF fast tokenizer trained here with `tokenizers` on the synthetic world's
captions with XLM-R's and NLLB's special ids (<s> 0, <pad> 1, </s> 2, <unk> 3, padded with <pad> to the
context), and random weights. XLM-R: a Unigram vocabulary over Metaspace pieces, each text wrapped as
`<s> ... </s>`. NLLB: transformers' own NllbTokenizer over a BPE vocabulary trained here, with NLLB's 202
source-language tokens (each text is `<language> ... </s>`, `eng_Latn` by default), so the CLS pooler reads
the language token's position as NLLB-CLIP's does.
The image tower is tiny_siglip's. Tests and benchmarks load them through open_clip's own `local-dir:` path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from indexer.lab.tiny_siglip import CONFIG_FILE, WEIGHTS_FILE, tiny_siglip_config, training_captions

__all__ = ["FAMILIES", "hf_text_cfg", "hf_text_config", "write_tiny_hf_text", "xlmr_tokenizer"]

CONTEXT_LENGTH = 64
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's and NLLB's ids 0-3
PAD_ID = 1
# family -> (open_clip pooler, transformers model_type)
FAMILIES = {"xlm-roberta": ("mean_pooler", "xlm-roberta"), "nllb": ("cls_pooler", "m2m_100")}


def hf_text_config(family: str, vocab_size: int, width: int = 32, layers: int = 2, heads: int = 2) -> Any:
    """The transformers config of the family's text model at the given sizes (positions for the context and
    XLM-R's pad offset)."""
    from transformers import M2M100Config, XLMRobertaConfig

    if family == "xlm-roberta":
        return XLMRobertaConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=2 * width,
                                max_position_embeddings=CONTEXT_LENGTH + 2, pad_token_id=PAD_ID, bos_token_id=0,
                                eos_token_id=2)
    if family == "nllb":
        return M2M100Config(vocab_size=vocab_size, d_model=width, encoder_layers=layers, decoder_layers=1,
                            encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * width,
                            decoder_ffn_dim=2 * width, max_position_embeddings=CONTEXT_LENGTH + 2,
                            scale_embedding=True, decoder_start_token_id=2, pad_token_id=PAD_ID, bos_token_id=0,
                            eos_token_id=2)
    raise ValueError(f"unknown HF text family {family!r} (expected one of {', '.join(FAMILIES)})")


def train_unigram_tokenizer(captions: list[str], vocab_size: int) -> Any:
    """XLM-R's layout: a Unigram vocabulary over Metaspace pieces, each text wrapped as `<s> ... </s>`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(captions, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def xlmr_tokenizer(captions: list[str], vocab_size: int) -> Any:
    """The HF fast tokenizer of an XLM-R-style tower, its vocabulary trained here on `captions`."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=train_unigram_tokenizer(captions, vocab_size), bos_token="<s>", eos_token="</s>",
        cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=CONTEXT_LENGTH)


def hf_text_cfg(folder: Path, family: str, pooler: str | None = None, clean: str = "whitespace") -> dict[str, Any]:
    """open_clip's text_cfg for the family's HF tower whose transformers config is in `folder`."""
    return {
        "context_length": CONTEXT_LENGTH, "hf_model_name": str(folder),
        "hf_tokenizer_name": f"photostock/tiny-{family}", "hf_pooler_type": pooler or FAMILIES[family][0],
        "hf_proj_type": "linear", "tokenizer_kwargs": {"clean": clean},
    }


def _nllb_tokenizer(captions: list[str], vocab_size: int) -> Any:
    """transformers' NllbTokenizer (fast) over a BPE vocabulary and merges trained here (no sentencepiece)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import NllbTokenizer  # the fast (`tokenizers`) class in transformers 5

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                          show_progress=False))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) for m in model["merges"]]  # pairs, as the `tokenizers` BPE model takes them
    return NllbTokenizer(vocab=model["vocab"], merges=merges, src_lang="eng_Latn",  # type: ignore[arg-type]
                         model_max_length=CONTEXT_LENGTH)


def write_tiny_hf_text(out: Path, family: str = "xlm-roberta", seed: int = 0, vocab_size: int = 300,
                       width: int = 32, layers: int = 2, heads: int = 2, pooler: str | None = None,
                       clean: str = "whitespace") -> Path:
    """Write the model folder (open_clip config, the HF text config, random-init weights, tokenizer files) to
    `out`; returns `out`. `pooler` overrides the family's open_clip pooler (refusal tests)."""
    import open_clip
    import torch
    if family not in FAMILIES:
        raise ValueError(f"unknown HF text family {family!r} (expected one of {', '.join(FAMILIES)})")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if family == "nllb":
        hf = _nllb_tokenizer(training_captions(), vocab_size)
    else:
        hf = xlmr_tokenizer(training_captions(), vocab_size)
    hf.save_pretrained(str(out))
    vocab = len(hf)  # the trained pieces and any added tokens (NLLB's languages)
    hf_text_config(family, vocab, width, layers, heads).save_pretrained(str(out))
    config = tiny_siglip_config(vocab, width=width, layers=layers, heads=heads)
    config["model_cfg"]["text_cfg"] = hf_text_cfg(out, family, pooler, clean)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{out}", device="cpu", pretrained_text=False)  # random init
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    return out
