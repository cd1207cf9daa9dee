"""The one CLIP encoder shared by the offline indexer and the online service.

Real models come through open_clip (model name + pretrained tag, or a local checkpoint file); the project's
own tiny CLIP is registered as an open_clip model config and loaded by the same factory. Every encoder has an
`EncoderIdentity` that travels into each artifact built with it, so the service can refuse an index whose
vectors came from a different model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search.models import registry

if TYPE_CHECKING:  # torch is imported lazily at run time
    from contextlib import AbstractContextManager

    import torch

__all__ = [
    "ClipEncoder",
    "EncoderIdentity",
    "IdentityShape",
    "WeightsUnavailableError",
    "load_encoder",
    "resolve_device",
    "file_sha256",
]


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


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` means CUDA when present, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class IdentityShape:
    """`dim` and `context_length` read off `identity`: shared by the encoder and by stand-ins that must answer
    them without loading a model (indexer.build_cmd.LazyEncoder)."""

    identity: EncoderIdentity

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def context_length(self) -> int:
        return self.identity.context_length


class ClipEncoder(IdentityShape):
    """Encodes images and texts into L2-normalised float32 vectors with one open_clip model."""

    def __init__(self, model: Any, preprocess: Callable[[Any], Any], tokenizer: Any, identity: EncoderIdentity,
                 device: Any):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device

    def _autocast(self) -> AbstractContextManager[Any]:
        import contextlib

        import torch

        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def encode_pixels(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Encode a batch that has already been through `self.preprocess` (N, 3, H, W)."""
        import torch

        batch = torch.as_tensor(pixels).to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(batch)
        return _normalize(features.float().cpu().numpy())

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Encode PIL images (already RGB); applies the model's own preprocess."""
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(torch.stack([self.preprocess(im) for im in images]))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        tokens: torch.Tensor = self.tokenizer(list(texts))
        return tokens

    def encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """Encode token ids at whatever context length `tokens` has been given."""
        import torch

        with torch.inference_mode(), self._autocast():
            features = self.model.encode_text(tokens.to(self.device))
        return _normalize(features.float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Full-context reference encoding of texts (the online path trims padding; see search.text_encoder)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_tokens(self.tokenize(texts))


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def load_encoder(model: str, pretrained: str | None = None, device: str = "auto") -> ClipEncoder:
    """The one factory: `model` is an open_clip model name or a project alias (`tiny`).

    `pretrained` is an open_clip pretrained tag (downloaded through open_clip's own code) or a path to a local
    checkpoint file. Raises `WeightsUnavailableError` with a clear way out when weights cannot be had.
    """
    import open_clip
    import torch

    registry.register_project_models()
    spec = registry.resolve(model, pretrained)
    torch_device = resolve_device(device)
    checkpoint = _resolve_checkpoint(spec.model_name, spec.pretrained)
    net, _, preprocess = open_clip.create_model_and_transforms(spec.model_name, pretrained=None, device="cpu")
    if checkpoint is not None:
        open_clip.load_checkpoint(net, str(checkpoint))
    net = net.to(torch_device).float().eval()
    tokenizer = spec.tokenizer() if spec.tokenizer else open_clip.get_tokenizer(spec.model_name)
    identity = EncoderIdentity(
        model=spec.model_name,
        weights=spec.weights_label(checkpoint),
        checksum=file_sha256(checkpoint) if checkpoint is not None else "random-init",
        dim=int(net.text_projection.shape[1] if not isinstance(net.text_projection, torch.nn.Linear)
                else net.text_projection.out_features),
        context_length=int(tokenizer.context_length),
        preprocess=_preprocess_identity(net),
    )
    return ClipEncoder(net, preprocess, tokenizer, identity, torch_device)


def _resolve_checkpoint(model_name: str, pretrained: str | None) -> Path | None:
    """Local file -> that file; open_clip tag -> its downloaded file; None -> random init (benchmarks only)."""
    import open_clip

    if pretrained is None or pretrained == "random":
        return None
    path = Path(pretrained).expanduser()
    if path.suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in pretrained:
        if not path.is_file():
            raise WeightsUnavailableError(f"Checkpoint file not found: {path}")
        return path
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise WeightsUnavailableError(
            f"Unknown pretrained tag {pretrained!r} for {model_name}; known tags: {tags}; "
            "or pass a local checkpoint path."
        )
    try:
        target = open_clip.download_pretrained(cfg)
    except Exception as exc:  # network, hub and auth failures all mean the same thing to the user
        raise WeightsUnavailableError(
            f"Could not fetch pretrained weights {model_name}/{pretrained} ({type(exc).__name__}: {exc}). "
            "No model hub is reachable from this machine: download the checkpoint elsewhere and pass its "
            f"path instead, e.g. --model {model_name} --pretrained /path/to/open_clip_pytorch_model.bin"
        ) from exc
    if not target or not Path(target).is_file():
        raise WeightsUnavailableError(
            f"open_clip returned no file for {model_name}/{pretrained}; pass a local checkpoint path instead."
        )
    return Path(target)


def _preprocess_identity(net: Any) -> dict[str, Any]:
    cfg = dict(getattr(net.visual, "preprocess_cfg", {}) or {})
    plain: dict[str, Any] = json.loads(json.dumps(cfg, default=list))
    return plain
