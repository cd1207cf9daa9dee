"""Image uploads end to end with bounded resources: the body streamed under the byte cap (search/http/bodies.py
and the file part's own cap), then decode + preprocess + image-tower encode as one admitted unit of work.

Uploads join load shedding: the admission ticket is taken before the decode, so its queue and its learnt cost
are whole uploads (decode + encode), which is what the entry shedder predicts a wait from. A ticket refused is
503 + Retry-After at once; an admitted upload whose decode cannot start (no free slot in the decode gate)
before the deadline is answered 503 then, instead of waiting its turn for tens of seconds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException, Request

from search.http.multipart import NotMultipart, read_file_part
from search.query.admission import Admission, Overloaded
from search.query.timing import StageTimer
from search.runtime.uploads import DecodeBusy, DecodeGate, preprocess_upload
from search.settings import LimitSettings

__all__ = ["UploadGuard", "DRAFT_SIDE"]

DRAFT_SIDE = 448  # JPEGs decode at the smallest DCT scale with both sides >= this (encoders take 224-336 px)


@dataclass
class UploadGuard:
    """Per-app limits on concurrent decodes and on admitted uploads (kept on `app.state.uploads`)."""

    gate: DecodeGate
    admission: Admission

    async def embed(self, request: Request, limits: LimitSettings, preprocess: Callable[[Any], Any],
                    encode: Callable[[np.ndarray], Awaitable[np.ndarray]], timer: StageTimer) -> np.ndarray:
        """The image vector of the multipart `file` part: 413 past the byte or pixel cap, 400 undecodable,
        422 not a multipart upload with a `file` part, 503 + Retry-After when it cannot start in time."""
        with timer.stage("upload"):
            try:
                data = await read_file_part(request.headers.get("content-type"), request.stream(),
                                            limits.max_upload_bytes)
            except NotMultipart as exc:
                raise HTTPException(422, str(exc)) from None
        with self.admission.admit() as ticket:  # Overloaded -> 503 at once
            with timer.stage("decode"):
                start_within = max(0.0, self.admission.deadline_s - (time.perf_counter() - ticket.started))
                try:
                    pixels = await self.gate.run(preprocess_upload, data, limits.max_upload_pixels, preprocess,
                                                 DRAFT_SIDE, limits.trim_after_pixels, start_within=start_within)
                except DecodeBusy as exc:
                    wait = max(self.admission.predicted_wait(), self.admission.deadline_s)
                    raise Overloaded(str(exc), retry_after_s=wait) from None
            with timer.stage("encode"):
                return await encode(pixels)
