"""Image-tower backends for bulk encoding: torch (CUDA with AMP, or CPU) and ONNX Runtime (CPU).

On CPU, ONNX Runtime runs the same open_clip image tower faster than eager torch, and large towers run
fastest in small batches, so the ONNX backend splits a commit batch into micro-batches (`onnx_micro_batch`);
the measured figures are in benchmarks/README.md (benchmarks/image_units.py). On CUDA the torch backend with
float16 autocast is the fast path. Both return L2-normalised float32 vectors equal to
`ClipEncoder.encode_pixels` up to float error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from search.encoder import ClipEncoder
from search.onnx_runtime import export_tower, ort_session

if TYPE_CHECKING:  # torch is imported lazily at run time
    import torch

__all__ = ["ImageEncoder", "TorchImageEncoder", "OnnxImageEncoder", "build_image_encoder", "export_image_tower"]


class ImageEncoder(Protocol):
    """What bulk encoding needs: preprocessed pixels (N, 3, H, W) in, unit vectors (N, D) out."""

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray: ...


class TorchImageEncoder:
    """The encoder's own torch path (AMP on CUDA)."""

    def __init__(self, encoder: ClipEncoder):
        self.encoder = encoder

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.encoder.encode_pixels(pixels)


class OnnxImageEncoder:
    """ONNX Runtime on CPU over the exported image tower, `micro_batch` images per session call."""

    def __init__(self, encoder: ClipEncoder, cache_dir: Path, threads: int = 0, micro_batch: int = 8):
        self.path = export_image_tower(encoder, cache_dir)
        self.session = ort_session(self.path, threads)
        self.micro_batch = max(1, micro_batch)
        self.dim = encoder.dim

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = [self.session.run(None, {"pixels": pixels[i:i + self.micro_batch]})[0]
                 for i in range(0, len(pixels), self.micro_batch)]
        return np.concatenate(parts).astype(np.float32, copy=False)


def _image_tower_module(model: Any) -> torch.nn.Module:
    import torch
    import torch.nn.functional as F

    class NormalisedImageTower(torch.nn.Module):
        def __init__(self, visual: torch.nn.Module):
            super().__init__()
            self.visual = visual

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.visual(pixels), dim=-1)

    return NormalisedImageTower(model.visual).eval()


def export_image_tower(encoder: ClipEncoder, cache_dir: Path) -> Path:
    """Export (once) the image tower to `cache_dir/<export key>/image.onnx` with a dynamic batch axis."""
    import torch

    size = getattr(encoder.model.visual, "image_size", 224)  # open_clip towers: an int or (height, width)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    # batch 3 in the example: a batch of 1 or 2 can let the tracer fold the batch size into reshapes
    sample = torch.zeros((3, 3, height, width), dtype=torch.float32)
    return export_tower(encoder, cache_dir, "image", _image_tower_module, (sample,), ["pixels"], ["features"],
                        {"pixels": {0: "batch"}, "features": {0: "batch"}})


def build_image_encoder(encoder: ClipEncoder, backend: str = "auto", cache_dir: Path | None = None,
                        threads: int = 0, micro_batch: int = 8) -> ImageEncoder:
    """'auto' is ONNX Runtime on a CPU encoder and torch on CUDA; 'torch' or 'onnx' force one."""
    if backend == "auto":
        backend = "torch" if encoder.device.type != "cpu" else "onnx"
    if backend == "torch":
        return TorchImageEncoder(encoder)
    if backend == "onnx":
        if encoder.device.type != "cpu":
            raise ValueError("the onnx image backend runs on the CPU; use 'torch' (or 'auto') on CUDA")
        if cache_dir is None:
            raise ValueError("the onnx image backend needs a cache_dir for the exported image tower")
        return OnnxImageEncoder(encoder, cache_dir, threads, micro_batch)
    raise ValueError(f"unknown image backend {backend!r} (expected 'auto', 'torch' or 'onnx')")
