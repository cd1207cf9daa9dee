"""Reading untrusted image uploads: size cap while streaming, then header-only checks before any decode.

PIL's `Image.open` reads only the header, so the pixel count of a decompression bomb is known (and refused)
before a single pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Protocol

__all__ = ["UploadRejected", "read_limited", "decode_image"]

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


def decode_image(data: bytes, max_pixels: int) -> Any:
    """Bytes -> RGB PIL image; 400 for anything undecodable or over `max_pixels` (checked from the header)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise UploadRejected(400, f"image of {width}x{height} pixels exceeds the {max_pixels}-pixel limit")
            image.load()
            return image.convert("RGB")
    except UploadRejected:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadRejected(400, f"not a decodable image ({type(exc).__name__})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UploadRejected(400, f"image data is corrupt ({type(exc).__name__}: {exc})") from exc
