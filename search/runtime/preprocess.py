"""open_clip's evaluation image transform, rebuilt with Pillow and numpy from the artifact's preprocess spec.

Steps and their order are open_clip's (torchvision on PIL images): resize (shortest side to the input size, or
squash to it) in the image's own mode, centre crop, convert to RGB, scale to [0, 1], normalise with mean/std.
The same Pillow calls give the same pixels, so the result equals open_clip's to float rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from search.artifact.specs import PreprocessSpec

__all__ = ["ImagePreprocess"]


class ImagePreprocess:
    """PIL image (any mode) -> float32 (3, H, W) array, as open_clip's transform computes it."""

    def __init__(self, spec: PreprocessSpec):
        spec.check()
        self.spec = spec
        self._mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)

    def _resample(self) -> Any:
        from PIL import Image

        return Image.Resampling.BICUBIC if self.spec.interpolation == "bicubic" else Image.Resampling.BILINEAR

    def _resized(self, image: Any) -> Any:
        height, width = self.spec.size
        if self.spec.resize_mode == "squash":
            target = (width, height)
        else:  # torchvision Resize(int): the shorter side becomes `size`, the longer scales (truncated)
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = height, int(height * long / short)
            target = (new_short, new_long) if w <= h else (new_long, new_short)
        if image.size == target:
            return image
        return image.resize(target, self._resample())

    def _cropped(self, image: Any) -> Any:
        crop_h, crop_w = self.spec.size
        w, h = image.size
        if (w, h) == (crop_w, crop_h):
            return image
        top = int(round((h - crop_h) / 2.0))
        left = int(round((w - crop_w) / 2.0))
        return image.crop((left, top, left + crop_w, top + crop_h))

    def __call__(self, image: Any) -> np.ndarray:
        rgb = self._cropped(self._resized(image)).convert("RGB")
        pixels = np.asarray(rgb, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255)
        return np.ascontiguousarray((pixels - self._mean) / self._std, dtype=np.float32)
