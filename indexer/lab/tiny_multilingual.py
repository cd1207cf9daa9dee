"""The project's tiny multilingual model: the tiny CLIP's image tower with an XLM-R-style HF text tower.

Why this shape: a query in German, Spanish, Japanese or Russian must find a photo captioned in English, the way
open_clip's xlm-roberta-*-ViT-* models do. The image tower is the committed tiny CLIP's, kept frozen (locked-image
tuning, LiT), so the gallery's vectors stay the ones the English model already ranks well and training only
teaches the text tower to put every language's caption next to them: a few minutes on two cores instead of
training both towers. The text tower is transformers' XLM-R at toy widths with open_clip's mean pooler, from a
config written in code; its tokenizer is a BPE vocabulary trained here with `tokenizers` on the training
compositions' captions in all five languages (Metaspace words; Japanese, written without spaces, is split into
runs of kanji, hiragana and katakana so a colour or a shape is a piece of its own). The folder is open_clip's
`local-dir:` layout, so it is loaded, exported and served like any model a user downloads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from indexer.lab import languages, world
from indexer.lab.tiny_hf_text import CONTEXT_LENGTH, SPECIALS, hf_text_cfg, hf_text_config
from indexer.models import registry

__all__ = ["TEXT_TOWER", "mixed_captions", "write_folder", "train_tokenizer"]

# transformers XLM-R sizes of the text tower (part of the training key)
TEXT_TOWER: dict[str, int] = {"width": 128, "layers": 2, "heads": 4, "vocab_size": 800}
_JAPANESE_RUNS = r"[\u4e00-\u9fff]+|[\u30a0-\u30ff]+|[\u3040-\u309f]+"  # kanji, katakana, hiragana runs


def mixed_captions() -> list[str]:
    """Every training composition's caption in every language (held-out compositions are not seen)."""
    return [languages.caption(**c.to_dict(), lang=lang) for c in world.training_compositions()
            for lang in languages.LANGUAGES]


def train_tokenizer(captions: list[str], vocab_size: int) -> Any:
    """HF fast tokenizer with XLM-R's special ids and `<s> ... </s>` template over a BPE vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_JAPANESE_RUNS), behavior="isolated"), pre_tokenizers.Metaspace()])
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                          show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", model_max_length=CONTEXT_LENGTH)


def write_folder(out: Path) -> Path:
    """Write the folder's configs and tokenizer files (no weights) to `out`; returns `out`.

    open_clip's config takes the tiny CLIP's embedding size and vision settings (and so its default preprocess),
    with an HF text tower whose transformers config sits in the same folder.
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    hf = train_tokenizer(mixed_captions(), TEXT_TOWER["vocab_size"])
    hf.save_pretrained(str(out))
    hf_text_config("xlm-roberta", len(hf), TEXT_TOWER["width"], TEXT_TOWER["layers"],
                   TEXT_TOWER["heads"]).save_pretrained(str(out))
    tiny = json.loads((registry.MODELS_DIR / f"{registry.TINY_MODEL_NAME}.json").read_text(encoding="utf-8"))
    config = {"model_cfg": {"embed_dim": tiny["embed_dim"], "vision_cfg": tiny["vision_cfg"],
                            "text_cfg": hf_text_cfg(out, "xlm-roberta")}}
    (out / registry.CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
