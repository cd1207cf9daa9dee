"""Project model registry (offline side): open_clip JSON configs in this folder, registered lazily, plus aliases.

`tiny` is the project's own small CLIP (config `photostock-tiny.json`), trained on the synthetic world by
`python -m indexer train`. Any other name is passed to open_clip unchanged (e.g. `ViT-B-32`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.artifact.encoder import WeightsUnavailableError

MODELS_DIR = Path(__file__).resolve().parent
TINY_MODEL_NAME = "photostock-tiny"
TINY_ALIASES = {"tiny", TINY_MODEL_NAME}
# The committed checkpoint; PHOTOSTOCK_TINY_CHECKPOINT points elsewhere (e.g. a freshly trained one).
TINY_CHECKPOINT = MODELS_DIR / f"{TINY_MODEL_NAME}.pt"
TINY_BPE = MODELS_DIR / f"{TINY_MODEL_NAME}-bpe.txt.gz"

_registered = False


def register_project_models() -> None:
    """Add this folder's JSON configs to open_clip's registry (idempotent; done on first use, not import)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(MODELS_DIR)
    _registered = True


@dataclass(frozen=True)
class ModelSpec:
    model_name: str
    pretrained: str | None
    tokenizer: Callable[[], Any] | None = None


def tiny_checkpoint_path() -> Path:
    return Path(os.environ.get("PHOTOSTOCK_TINY_CHECKPOINT", TINY_CHECKPOINT))


def tiny_context_length() -> int:
    import json

    cfg = json.loads((MODELS_DIR / f"{TINY_MODEL_NAME}.json").read_text())
    return int(cfg["text_cfg"]["context_length"])


def tiny_tokenizer() -> Any:
    """open_clip's own BPE tokenizer; with the project's cut-down merges file when it exists."""
    from open_clip.tokenizer import SimpleTokenizer

    if TINY_BPE.is_file():
        return SimpleTokenizer(bpe_path=str(TINY_BPE), context_length=tiny_context_length())
    return SimpleTokenizer(context_length=tiny_context_length())


def resolve(model: str, pretrained: str | None) -> ModelSpec:
    if model in TINY_ALIASES:
        if pretrained is None:
            path = tiny_checkpoint_path()
            if not path.is_file():
                raise WeightsUnavailableError(
                    f"The tiny model's checkpoint {path} does not exist: run `python -m indexer train` "
                    "or pass --pretrained /path/to/checkpoint.pt"
                )
            pretrained = str(path)
        return ModelSpec(TINY_MODEL_NAME, pretrained, tiny_tokenizer)
    return ModelSpec(model, pretrained)
