"""Reading untrusted image uploads with bounded memory: a byte cap, a pixel budget checked from the header, a
cap on concurrent decodes, and memory handed back to the OS after a big decode.

PIL's `Image.open` reads only the header, so the pixel count of a decompression bomb is known (and refused)
before a single pixel is decoded. A JPEG is decoded at the smallest DCT scale that still covers the encoder's
input (`draft`), so even a 40 MP JPEG costs a few MB; other formats decode in full, which is why decodes run
behind a semaphore (`DecodeGate`) and the preprocessed array, not the decoded image, leaves the gate.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import warnings
from collections.abc import Callable
from functools import cache
from typing import Any, Protocol

import numpy as np

__all__ = ["UploadRejected", "read_limited", "decode_image", "preprocess_upload", "DecodeGate", "DecodeBusy",
           "release_memory"]

_CHUNK = 64 * 1024


class UploadRejected(ValueError):
    """Bad upload; `status` is the HTTP status to answer with (413 too large, 400 undecodable/bomb)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _AsyncReadable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


async def read_limited(upload: _AsyncReadable, max_bytes: int) -> bytes:
    """Read at most max_bytes; one byte more means 413 (never reads the rest of an oversized upload)."""
    chunks, total = [], 0
    while chunk := await upload.read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise UploadRejected(413, f"upload exceeds {max_bytes} bytes")
        chunks.append(chunk)
    if total == 0:
        raise UploadRejected(400, "empty upload")
    return b"".join(chunks)


def decode_image(data: bytes, max_pixels: int, draft_side: int | None = None) -> Any:
    """Bytes -> RGB PIL image; 413 over `max_pixels` (checked from the header; PIL's own bomb guard, which
    fires first for images over ~179 MP, is the same refusal), 400 for anything undecodable.

    With `draft_side`, a JPEG decodes at the smallest DCT scale keeping both sides >= draft_side.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise UploadRejected(413, f"image of {width}x{height} pixels exceeds the {max_pixels}-pixel limit")
            if draft_side and image.format == "JPEG":
                image.draft("RGB", (draft_side, draft_side))
            image.load()
            return image.convert("RGB")
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadRejected(413, f"image exceeds the {max_pixels}-pixel limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise UploadRejected(400, f"not a decodable image ({type(exc).__name__})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UploadRejected(400, f"image data is corrupt ({type(exc).__name__}: {exc})") from exc


def preprocess_upload(data: bytes, max_pixels: int, preprocess: Callable[[Any], Any], draft_side: int,
                      trim_after_pixels: int) -> np.ndarray:
    """Decode + preprocess in one step, so only the small (3, H, W) float array outlives the call."""
    image = decode_image(data, max_pixels, draft_side)
    pixels = image.width * image.height
    try:
        return np.asarray(preprocess(image), dtype=np.float32)
    except (OSError, ValueError, TypeError, ArithmeticError) as exc:
        raise UploadRejected(400, f"image cannot be preprocessed ({type(exc).__name__}: {exc})") from exc
    finally:
        image.close()
        del image
        if trim_after_pixels and pixels >= trim_after_pixels:
            release_memory()


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    return trim if trim is not None else None


def release_memory() -> bool:
    """Ask glibc to hand freed heap back to the OS (a big decode otherwise stays in RSS); False if unsupported."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class DecodeBusy(RuntimeError):
    """No decode slot came free within the wait allowed (the caller answers 503)."""


class DecodeGate:
    """At most `limit` decodes at once; the rest wait their turn (peak RSS ~ limit x the largest decode), or at
    most `start_within` seconds for it."""

    def __init__(self, limit: int):
        self.limit = limit
        self._semaphore = asyncio.Semaphore(limit)
        self.active = 0
        self.peak = 0

    async def run(self, fn: Callable[..., np.ndarray], *args: Any, start_within: float | None = None) -> np.ndarray:
        try:
            await asyncio.wait_for(self._semaphore.acquire(), start_within)
        except TimeoutError:
            raise DecodeBusy(f"no decode slot came free within {start_within * 1000:.0f} ms "  # type: ignore[operator]
                             f"({self.limit} decodes running)") from None
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await asyncio.to_thread(fn, *args)
        finally:
            self.active -= 1
            self._semaphore.release()
