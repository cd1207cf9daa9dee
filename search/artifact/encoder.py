"""Encoder identity and the rules about it, shared by the offline indexer and the online service (no torch).

Every encoder has an `EncoderIdentity` that travels into each artifact built with it, so a reader can refuse
an index whose vectors came from a different model. The torch/open_clip encoder itself lives on the offline
side (`indexer.models.clip`); the service runs the ONNX towers the artifact carries (`search.runtime`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "EncoderIdentity",
    "IdentityShape",
    "WeightsUnavailableError",
    "encoder_mismatch",
    "file_sha256",
    "is_checkpoint_path",
    "weights_label",
]

CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".safetensors"})
RANDOM_INIT = "random-init"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (no model hub reachable) or the checkpoint file is missing."""


@dataclass(frozen=True)
class EncoderIdentity:
    """What an embedding depends on: vectors are only comparable between encoders with equal identities."""

    model: str
    weights: str
    checksum: str
    dim: int
    context_length: int
    preprocess: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderIdentity:
        return cls(
            model=data["model"],
            weights=data["weights"],
            checksum=data["checksum"],
            dim=int(data["dim"]),
            context_length=int(data["context_length"]),
            preprocess=dict(data.get("preprocess", {})),
        )

    @property
    def key(self) -> str:
        """Short stable digest, used in cache keys and file names."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def differences(self, other: EncoderIdentity) -> list[str]:
        """Human-readable list of fields that differ (empty when compatible)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def encoder_mismatch(expected: EncoderIdentity, actual: EncoderIdentity, what: str) -> str | None:
    """The one compatibility rule: identities must be equal. Returns the refusal reason, or None when they are.

    `what` names the thing built with `actual` (e.g. "version 2026..."), so every caller words it the same.
    """
    diffs = expected.differences(actual)
    if not diffs:
        return None
    return f"{what} was built with another encoder: {'; '.join(diffs)}"


def is_checkpoint_path(pretrained: str | None) -> bool:
    """The one rule for `pretrained`: a local checkpoint file (known suffix or a path separator) rather than an
    open_clip pretrained tag. None and 'random' are neither."""
    if pretrained is None or pretrained == "random":
        return False
    return Path(pretrained).suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained or "/" in pretrained


def weights_label(pretrained: str | None) -> str:
    """What `EncoderIdentity.weights` records for `pretrained`: the file name of a checkpoint, the tag itself,
    or 'random-init'."""
    if pretrained is None or pretrained == "random":
        return RANDOM_INIT
    return Path(pretrained).expanduser().name if is_checkpoint_path(pretrained) else pretrained


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class IdentityShape:
    """`dim` and `context_length` read off `identity`: shared by the encoders and by stand-ins that must
    answer them without loading a model (indexer.commands.build_cmd.LazyEncoder)."""

    identity: EncoderIdentity

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def context_length(self) -> int:
        return self.identity.context_length
