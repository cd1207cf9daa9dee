"""The torch/open_clip CLIP encoder of the offline side: loading, encoding, and the identity it publishes.

Real models come through open_clip (model name + pretrained tag, or a local checkpoint file, or a model folder:
`local-dir:DIR` / `hf-hub:org/repo`); the project's own tiny CLIP is registered as an open_clip model config
and loaded by the same factory. The service never
imports this module: it runs the ONNX towers exported from it (`indexer.models.export`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.models import registry
from search.artifact.encoder import (
    EncoderIdentity,
    IdentityShape,
    WeightsUnavailableError,
    file_sha256,
    is_checkpoint_path,
    weights_label,
)

__all__ = ["ClipEncoder", "checkpoint_preprocess", "load_encoder", "resolve_checkpoint", "resolve_device"]


def resolve_device(device: str = "auto") -> Any:
    """`auto` means CUDA when present, else CPU (a torch.device)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ClipEncoder(IdentityShape):
    """Encodes images and texts into L2-normalised float32 vectors with one open_clip model."""

    def __init__(self, model: Any, preprocess: Callable[[Any], Any], tokenizer: Any, identity: EncoderIdentity,
                 device: Any):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device

    def _autocast(self) -> Any:
        import torch

        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def encode_pixels(self, pixels: Any) -> np.ndarray:
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

    def tokenize(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(list(texts))

    def encode_tokens(self, tokens: Any) -> np.ndarray:
        """Encode token ids at whatever context length `tokens` has been given."""
        import torch

        with torch.inference_mode(), self._autocast():
            features = self.model.encode_text(torch.as_tensor(tokens).to(self.device))
        return _normalize(features.float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Full-context reference encoding of texts (the online path trims padding; see search.runtime)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_tokens(self.tokenize(texts))


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def load_encoder(model: str, pretrained: str | None = None, device: str = "auto") -> ClipEncoder:
    """The one factory: `model` is an open_clip model name, a project alias (`tiny`) or a model folder
    (`local-dir:DIR`, `hf-hub:org/repo`: config, weights and tokenizer from the folder; no `pretrained`).

    `pretrained` is an open_clip pretrained tag (downloaded through open_clip's own code) or a path to a local
    checkpoint file. Raises `WeightsUnavailableError` with a clear way out when weights cannot be had.
    """
    import open_clip

    registry.register_project_models()
    if registry.is_model_folder(model):
        if pretrained is not None:
            raise WeightsUnavailableError(f"--pretrained does not apply to {model}: the folder holds the weights")
        return _load_folder(registry.model_folder(model), resolve_device(device))
    spec = registry.resolve(model, pretrained)
    torch_device = resolve_device(device)
    checkpoint = resolve_checkpoint(spec.model_name, spec.pretrained)
    # a checkpoint file goes through open_clip's own loading (strict, weights only); passing None and loading
    # afterwards would make create_model log "No pretrained weights loaded ... initialized randomly"
    forced = checkpoint_preprocess(spec.model_name) if is_checkpoint_path(spec.pretrained) else {}
    net, _, preprocess = open_clip.create_model_and_transforms(
        spec.model_name, pretrained=str(checkpoint) if checkpoint is not None else None, device="cpu",
        **{f"image_{key}": value for key, value in forced.items()})
    net = net.to(torch_device).float().eval()
    tokenizer = spec.tokenizer() if spec.tokenizer else open_clip.get_tokenizer(spec.model_name)
    identity = EncoderIdentity(
        model=spec.model_name,
        weights=weights_label(spec.pretrained),
        checksum=file_sha256(checkpoint) if checkpoint is not None else "random-init",
        dim=_text_dim(net),
        context_length=int(tokenizer.context_length),
        preprocess=_preprocess_identity(net),
    )
    return ClipEncoder(net, preprocess, tokenizer, identity, torch_device)


def _load_folder(folder: registry.ModelFolder, torch_device: Any) -> ClipEncoder:
    """A model folder through open_clip's own `local-dir:` path; the identity digests config, weights and
    tokenizer files together (registry.ModelFolder.checksum)."""
    import open_clip

    name = folder.open_clip_name
    net, _, preprocess = open_clip.create_model_and_transforms(name, device="cpu")
    net = net.to(torch_device).float().eval()
    tokenizer = open_clip.get_tokenizer(name)
    identity = EncoderIdentity(
        model=folder.label,
        weights=folder.weights.name,
        checksum=folder.checksum(),
        dim=_text_dim(net),
        context_length=int(tokenizer.context_length),
        preprocess=_preprocess_identity(net),
    )
    return ClipEncoder(net, preprocess, tokenizer, identity, torch_device)


def _text_dim(net: Any) -> int:
    """The embedding width: CLIP's text projection, or the custom text tower's (SigLIP, HF towers: `net.text`)."""
    import torch

    text = getattr(net, "text", None)
    projection = net.text_projection if text is None else getattr(text, "text_projection", None)
    if projection is None:  # no projection, or an HF text tower (its own `proj`): the tower says its width
        return int(getattr(text, "output_dim", None) or (text.width if text is not None else net.transformer.width))
    return int(projection.out_features if isinstance(projection, torch.nn.Linear) else projection.shape[1])


PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def checkpoint_preprocess(model_name: str) -> dict[str, Any]:
    """The image preprocess settings every published weight set (pretrained tag) of `model_name` agrees on, for
    its weights given as a checkpoint file.

    open_clip applies a tag's preprocess only when it downloads that tag itself; the same weights passed as a
    file would get CLIP's defaults (OpenAI mean/std, bicubic), which MobileCLIP (mean 0, std 1, bilinear),
    SigLIP (0.5, squash) and others were not trained with. A setting the tags disagree on (ViT-L-14's mean) is
    left to open_clip's default; a model without tags (the tiny CLIP) gets nothing."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    cfgs = [open_clip.get_pretrained_cfg(model_name, tag) for tag in tags]
    agreed: dict[str, Any] = {}
    for key in PREPROCESS_KEYS:
        values = {json.dumps(cfg.get(key), default=list) for cfg in cfgs}
        if len(values) == 1 and cfgs[0].get(key) is not None:
            agreed[key] = cfgs[0][key]
    return agreed


def resolve_checkpoint(model_name: str, pretrained: str | None) -> Path | None:
    """Local file -> that file; open_clip tag -> its downloaded file; None -> random init (benchmarks only)."""
    import open_clip

    if pretrained is None or pretrained == "random":
        return None
    if is_checkpoint_path(pretrained):
        path = Path(pretrained).expanduser()
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
    parsed: dict[str, Any] = json.loads(json.dumps(cfg, default=list))
    return parsed
