"""Image uploads end to end with bounded resources: the body streamed under a byte cap, decode + preprocess
behind the decode gate, and the image-tower encode behind admission control (then the image session pool)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException, Request

from search.http.multipart import NotMultipart, read_file_part
from search.query.admission import Admission
from search.runtime.uploads import DecodeGate, UploadRejected, preprocess_upload
from search.settings import LimitSettings

__all__ = ["UploadGuard", "uploaded_pixels", "DRAFT_SIDE"]

DRAFT_SIDE = 448  # JPEGs decode at the smallest DCT scale with both sides >= this (encoders take 224-336 px)
_FRAMING = 64 * 1024


@dataclass
class UploadGuard:
    """Per-app limits on concurrent decodes and image encodes (kept on `app.state.uploads`)."""

    gate: DecodeGate
    admission: Admission

    async def encode(self, encode: Callable[[np.ndarray], Awaitable[np.ndarray]], pixels: np.ndarray) -> np.ndarray:
        """The image-tower encode behind admission: refused at once (Overloaded -> 503) when the predicted wait
        is too long; the session pool behind `encode` runs one batch per session at a time."""
        with self.admission.admit():
            return await encode(pixels)


async def uploaded_pixels(request: Request, guard: UploadGuard, limits: LimitSettings,
                          preprocess: Callable[[Any], Any]) -> np.ndarray:
    """The preprocessed pixels of the multipart `file` part: 413 past the byte or pixel cap, 400 undecodable,
    422 when the body is not a multipart upload with a `file` part."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes + _FRAMING:
        raise UploadRejected(413, f"upload exceeds {limits.max_upload_bytes} bytes")
    try:
        data = await read_file_part(request.headers.get("content-type"), request.stream(), limits.max_upload_bytes)
    except NotMultipart as exc:
        raise HTTPException(422, str(exc)) from None
    return await guard.gate.run(preprocess_upload, data, limits.max_upload_pixels, preprocess, DRAFT_SIDE,
                                limits.trim_after_pixels)
