"""Project model registry (offline side): open_clip JSON configs in this folder, registered lazily, plus aliases.

`tiny` is the project's own small CLIP (config `photostock-tiny.json`), trained on the synthetic world by
`python -m indexer train`. `local-dir:DIR` and `hf-hub:org/repo` are model folders in open_clip's own layout
(config, weights, tokenizer files: what downloading a model repository gives), checked here so a missing file
is one line naming it. Any other name is passed to open_clip unchanged (e.g. `ViT-B-32`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.artifact.encoder import WeightsUnavailableError, file_sha256

MODELS_DIR = Path(__file__).resolve().parent
TINY_MODEL_NAME = "photostock-tiny"
TINY_ALIASES = {"tiny", TINY_MODEL_NAME}
# The committed checkpoint; PHOTOSTOCK_TINY_CHECKPOINT points elsewhere (e.g. a freshly trained one).
TINY_CHECKPOINT = MODELS_DIR / f"{TINY_MODEL_NAME}.pt"
TINY_BPE = MODELS_DIR / f"{TINY_MODEL_NAME}-bpe.txt.gz"

# The tiny multilingual model (indexer.lab.tiny_multilingual): a committed model folder in open_clip's layout.
TINY_MULTILINGUAL_NAME = "photostock-tiny-multilingual"
TINY_MULTILINGUAL_ALIASES = {"tiny-multilingual", TINY_MULTILINGUAL_NAME}
TINY_MULTILINGUAL_DIR = MODELS_DIR / TINY_MULTILINGUAL_NAME
FOLDER_WEIGHTS = "open_clip_pytorch_model.bin"
# hf_model_name of a committed folder: the folder itself (placed_folder makes it absolute)
HF_MODEL_HERE = "."

_registered = False


def cache_dir() -> Path:
    """Where trained models and placed folders are kept between runs (PHOTOSTOCK_CACHE overrides)."""
    return Path(os.environ.get("PHOTOSTOCK_CACHE", Path.home() / ".cache" / "photostock"))


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


LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
CONFIG_FILE = "open_clip_config.json"
# Files an HF tokenizer folder may hold; each present one is part of the encoder's identity.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
HUB_PATTERNS = [CONFIG_FILE, "open_clip_*.bin", "open_clip_*.safetensors", *TOKENIZER_FILES]


def is_model_folder(model: str) -> bool:
    """`local-dir:`, `hf-hub:` or the tiny multilingual model: a folder of files, not a name in open_clip's
    registry."""
    return model.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX)) or model in TINY_MULTILINGUAL_ALIASES


def _with_hf_model_name(folder: Path, name: str) -> None:
    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["model_cfg"]["text_cfg"]["hf_model_name"] = name
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def relocatable_copy(src: Path, dst: Path) -> Path:
    """Copy a model folder whose HF text config sits in the folder itself, its hf_model_name written as "." so
    the copy can be committed and moved (placed_folder undoes it)."""
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    _with_hf_model_name(dst, HF_MODEL_HERE)
    return dst


def placed_folder(src: Path) -> Path:
    """A relocatable folder copied under the cache with hf_model_name set to the copy's absolute path:
    transformers resolves a relative name against the working directory, not the folder. The copy's name holds
    a digest of the source files, so an updated folder is placed anew and an unchanged one is reused."""
    import shutil

    digest = hashlib.sha256()
    for file in sorted(p for p in src.iterdir() if p.is_file()):
        digest.update(f"{file.name}:{file_sha256(file)}\n".encode())
    dst = cache_dir() / "folders" / f"{src.name}-{digest.hexdigest()[:16]}"
    if (dst / CONFIG_FILE).is_file():
        return dst
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    _with_hf_model_name(tmp, str(dst))
    try:
        os.replace(tmp, dst)
    except OSError:  # placed meanwhile by another process: theirs is the same bytes
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def tiny_multilingual_folder() -> Path:
    """The committed multilingual folder (PHOTOSTOCK_TINY_MULTILINGUAL points elsewhere), placed for loading."""
    src = Path(os.environ.get("PHOTOSTOCK_TINY_MULTILINGUAL", TINY_MULTILINGUAL_DIR))
    if not (src / CONFIG_FILE).is_file():
        return src
    config = json.loads((src / CONFIG_FILE).read_text(encoding="utf-8"))
    relocatable = config["model_cfg"]["text_cfg"].get("hf_model_name") == HF_MODEL_HERE
    return placed_folder(src) if relocatable else src


@dataclass(frozen=True)
class ModelFolder:
    """A checked model folder: open_clip's config, the weights file open_clip will load, the tokenizer files."""

    label: str  # what the identity records: `local-dir:<folder name>` or `hf-hub:org/repo`
    path: Path
    config: dict[str, Any]
    weights: Path
    tokenizer_files: tuple[Path, ...]
    hf_config: Path | None = None  # an HF text tower's transformers config, when `hf_model_name` is a local folder

    @property
    def open_clip_name(self) -> str:
        return f"{LOCAL_DIR_PREFIX}{self.path}"

    def checksum(self) -> str:
        """One digest over the config, weights and tokenizer files (and a local HF text config): a change to any
        is another encoder."""
        digest = hashlib.sha256()
        extra = (self.hf_config,) if self.hf_config is not None else ()
        for file in (self.path / CONFIG_FILE, self.weights, *self.tokenizer_files, *extra):
            digest.update(f"{file.name}:{file_sha256(file)}\n".encode())
        return digest.hexdigest()


def model_folder(model: str) -> ModelFolder:
    """Resolve and check `local-dir:DIR` or `hf-hub:org/repo` (fetched through huggingface_hub's cache), or the
    tiny multilingual model's committed folder."""
    if model in TINY_MULTILINGUAL_ALIASES:
        path = tiny_multilingual_folder()
        if not (path / FOLDER_WEIGHTS).is_file():
            raise WeightsUnavailableError(f"The tiny multilingual model's folder {path} has no {FOLDER_WEIGHTS}: "
                                          "run `python -m indexer train --multilingual`")
        return check_model_folder(path, TINY_MULTILINGUAL_NAME, model)
    if model.startswith(LOCAL_DIR_PREFIX):
        path = Path(model[len(LOCAL_DIR_PREFIX):]).expanduser()
        return check_model_folder(path.resolve(), f"{LOCAL_DIR_PREFIX}{path.resolve().name}", model)
    repo = model[len(HF_HUB_PREFIX):]
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise WeightsUnavailableError(f"{model}: expected hf-hub:org/repo")
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # network, hub and auth failures all mean the same thing to the user
        raise WeightsUnavailableError(
            f"Could not fetch {model} ({type(exc).__name__}: {exc}). No model hub is reachable from this "
            "machine: download the model repository elsewhere and pass its folder instead, e.g. "
            f"--model local-dir:/path/to/{repo.split('/')[-1]}"
        ) from exc
    return check_model_folder(path, model, model)


def check_model_folder(path: Path, label: str, model: str) -> ModelFolder:
    """WeightsUnavailableError naming the first file the folder lacks (open_clip would otherwise fall back to
    random weights or a default tokenizer without a word)."""
    if not path.is_dir():
        raise WeightsUnavailableError(f"{model}: {path} is not a folder")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise WeightsUnavailableError(f"{model}: missing {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model_cfg = config["model_cfg"]
        text_cfg = dict(model_cfg.get("text_cfg", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsUnavailableError(f"{model}: {CONFIG_FILE} in {path} is not an open_clip config "
                                      f"({type(exc).__name__}: {exc})") from exc
    from open_clip.factory import _find_checkpoint_in_dir  # the file open_clip itself will load

    weights = _find_checkpoint_in_dir(path)
    if weights is None:
        raise WeightsUnavailableError(f"{model}: missing weights file open_clip_pytorch_model.bin (or "
                                      "open_clip_model.safetensors)")
    if text_cfg.get("hf_tokenizer_name") and not (path / "tokenizer.json").is_file():
        raise WeightsUnavailableError(f"{model}: missing tokenizer.json (the model's HF tokenizer, which the "
                                      "runtime runs)")
    tokenizer_files = tuple(path / n for n in TOKENIZER_FILES if (path / n).is_file())
    hf_name = str(text_cfg.get("hf_model_name") or "")
    hf_config = Path(hf_name) / "config.json" if hf_name and (Path(hf_name) / "config.json").is_file() else None
    return ModelFolder(label, path, config, Path(weights), tokenizer_files, hf_config)
