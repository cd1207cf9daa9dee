"""The encoder files a version carries, and their verification before the version may open.

Layout (docs/contracts.md): `STORE/encoders/<key>/` holds `text.onnx`, `text.int8.onnx` (optional), `image.onnx`,
`tokenizer.json` (a `tokenizers` JSON: CLIP's byte-level BPE over open_clip's vocabulary and merges, or
the model's own HF tokenizer) and `encoder.json`
(identity, tokenizer settings, preprocess spec, text-tower facts, and the other files' checksums). The folder
is named by the encoder (content-addressed), so every version built with one encoder shares it; each
manifest lists the folder and every file's size and sha256.

Verification on every open: every required file present with its recorded size, the small files (tokenizer,
spec) hashed, the spec's identity equal to the manifest's. At the sampled or full level the ONNX files are
hashed too (search.artifact.checksums); at the size level a truncated or replaced graph is still caught by its
size or by ONNX Runtime refusing it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.artifact.checksums import CheckLevel, check_file
from search.artifact.encoder import EncoderIdentity, encoder_mismatch
from search.artifact.manifest import ArtifactError, EncoderFiles, FileEntry, Manifest
from search.artifact.specs import AnyTokenizerSpec, PreprocessSpec, tokenizer_spec_from_dict

__all__ = [
    "BUNDLE_FORMAT",
    "ENCODERS_DIR",
    "IMAGE_FILE",
    "SPEC_FILE",
    "TEXT_FILE",
    "TEXT_INT8_FILE",
    "TOKENIZER_FILE",
    "EncoderBundle",
    "TextSpec",
    "verify_encoder_files",
]

BUNDLE_FORMAT = 1
ENCODERS_DIR = "encoders"
SPEC_FILE = "encoder.json"
TOKENIZER_FILE = "tokenizer.json"
TEXT_FILE = "text.onnx"
TEXT_INT8_FILE = "text.int8.onnx"
IMAGE_FILE = "image.onnx"
REQUIRED_FILES = (SPEC_FILE, TOKENIZER_FILE, TEXT_FILE, IMAGE_FILE)


@dataclass(frozen=True)
class TextSpec:
    """Facts about the exported text tower the runtime needs to feed it."""

    trim: bool  # padding after each row's last real token may be cut off exactly (CLIP: causal mask + end-of-text
    # pooling; HF towers: the attention mask hides it); false: every row is fed padded to the full context
    # (SigLIP: the padding is part of the model)
    pool_type: str  # 'argmax' (highest id is the end token), 'eos', 'last', 'first'; HF towers 'mean' or 'cls'
    eos_id: int | None
    mask_pad_id: int | None = None  # HF towers: the graph also takes `attention_mask` = (tokens != this id)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trim": self.trim, "pool_type": self.pool_type, "eos_id": self.eos_id}
        if self.mask_pad_id is not None:  # absent for CLIP and SigLIP: their encoder.json stays as it was
            out["mask_pad_id"] = self.mask_pad_id
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextSpec:
        eos, pad = data.get("eos_id"), data.get("mask_pad_id")
        return cls(trim=bool(data["trim"]), pool_type=str(data["pool_type"]), eos_id=None if eos is None else int(eos),
                   mask_pad_id=None if pad is None else int(pad))


@dataclass(frozen=True)
class EncoderBundle:
    """A verified encoder folder, ready for search.runtime.towers.RuntimeEncoder.load."""

    directory: Path
    identity: EncoderIdentity
    tokenizer: AnyTokenizerSpec
    preprocess: PreprocessSpec
    text: TextSpec
    files: dict[str, FileEntry]

    def path(self, name: str) -> Path:
        return self.directory / name

    @classmethod
    def from_spec(cls, directory: Path, spec: dict[str, Any], files: dict[str, FileEntry]) -> EncoderBundle:
        fmt = spec.get("format")
        if fmt != BUNDLE_FORMAT:
            raise ValueError(f"encoder spec format {fmt!r} is not supported (this reader knows {BUNDLE_FORMAT})")
        return cls(directory=directory, identity=EncoderIdentity.from_dict(spec["identity"]),
                   tokenizer=tokenizer_spec_from_dict(spec["tokenizer"]),
                   preprocess=PreprocessSpec.from_dict(spec["preprocess"]),
                   text=TextSpec.from_dict(spec["text"]), files=files)


def verify_encoder_files(version_dir: Path, manifest: Manifest, checks: CheckLevel) -> EncoderBundle | None:
    """Check the encoder files `manifest` lists (None when it lists none); ArtifactError names what is wrong."""
    entry: EncoderFiles | None = manifest.encoder_files
    if entry is None:
        return None
    what = f"version {manifest.version}"
    store = Path(version_dir).parent.parent.resolve()
    directory = (store / entry.dir).resolve()
    if not directory.is_relative_to(store / ENCODERS_DIR):
        raise ArtifactError(f"{what}: encoder folder {entry.dir!r} is outside {store / ENCODERS_DIR}")
    missing = [name for name in REQUIRED_FILES if name not in entry.files]
    if missing:
        raise ArtifactError(f"{what}: manifest lists no encoder file {', '.join(missing)}")
    for name, file_entry in entry.files.items():
        check_file(directory / name, file_entry, checks, f"{what}: encoder file")
    try:
        spec = json.loads((directory / SPEC_FILE).read_text(encoding="utf-8"))
        bundle = EncoderBundle.from_spec(directory, spec, dict(entry.files))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{what}: encoder spec {SPEC_FILE} is unreadable ({type(exc).__name__}: {exc})") from exc
    reason = encoder_mismatch(manifest.encoder, bundle.identity, f"{what}'s encoder folder {entry.dir}")
    if reason is not None:
        raise ArtifactError(reason)
    return bundle
