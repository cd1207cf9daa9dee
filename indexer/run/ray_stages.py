"""The code that runs inside Ray workers: the decode task and the encoder actor of the Ray backend.

Both call the local backend's own functions (`indexer.ingest.decode.decode_with`,
`indexer.encoding.encode.image_encoder_for`), so a file decodes to the same pixels, fails with the same reason and
encodes to the same vector on either backend. Rows travel as numpy column batches; a failed row keeps its place
with zero pixels and its reason, so nothing is dropped between the stages.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]


class _DecodeTimeout(BaseException):
    """Raised by the alarm inside a decode; a BaseException so the decoder's `except Exception` lets it by."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """SIGALRM after `seconds` (Ray runs task code in the worker's main thread). It interrupts Python code and
    blocking system calls (a stalled network read); a C loop that never returns to Python is out of its reach."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise _DecodeTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def decode_one(path: str, preprocess: Callable[[Any], Any], max_pixels: int, timeout_s: float,
               draft_side: int | None = None, read_meta: bool = True) -> Any:
    """`indexer.ingest.decode.decode_with` under a per-file deadline; a timeout is this file's failure, not the
    task's."""
    from indexer.ingest import decode

    try:
        with _deadline(timeout_s):
            return decode.decode_with(path, preprocess, max_pixels, draft_side, read_meta)
    except _DecodeTimeout:
        return decode.DecodeOutcome(reason=f"decode timed out after {timeout_s:g}s", seconds=timeout_s)


def decode_batch(
    batch: Batch, image_root: str, preprocess: Callable[[Any], Any], max_pixels: int, pixel_shape: tuple[int, ...],
    timeout_s: float, draft_side: int | None = None, read_meta: bool = True, worker_process: bool = False,
) -> Batch:
    """Ray task: decode + preprocess each (id, path) row; bad files become rows with `ok` False and a reason.

    `pixel_shape` is the preprocess output shape: failed rows get zeros of it, so every block has one schema.
    `read_meta` False (settings `read_file_metadata: false`): no EXIF/IPTC/XMP is read, `file_meta` stays "{}".
    `worker_process`: this runs in a Ray worker (the backend says so), which may freeze its objects once;
    called in-process (tests), it only sets one intra-op thread, as before.
    """
    from indexer.ingest.decode import own_pixel_limit, settle_decode_process

    settle_decode_process(freeze=worker_process)
    if worker_process:
        own_pixel_limit(max_pixels)
    outcomes = [decode_one(os.path.join(image_root, row_path(p)), preprocess, max_pixels, timeout_s, draft_side,
                           read_meta) for p in batch["path"]]
    pixels = np.zeros((len(outcomes), *pixel_shape), np.float32)
    for row, outcome in enumerate(outcomes):
        if outcome.ok and outcome.pixels.shape != tuple(pixel_shape):
            outcome.reason = f"preprocess gave shape {outcome.pixels.shape}, expected {tuple(pixel_shape)}"
        if outcome.ok:
            pixels[row] = outcome.pixels
    return {
        "id": np.asarray(batch["id"], np.int64),
        "path": np.asarray(batch["path"], dtype=object),
        "ok": np.array([o.ok for o in outcomes], bool),
        "pixels": pixels,
        "width": np.array([o.width for o in outcomes], np.int64),
        "height": np.array([o.height for o in outcomes], np.int64),
        "reason": np.array([o.reason or "" for o in outcomes], dtype=object),
        "warnings": np.array([json.dumps(o.warnings) for o in outcomes], dtype=object),
        "decode_s": np.array([o.seconds for o in outcomes], np.float64),
        "file_meta": np.array([json.dumps(o.file_meta) for o in outcomes], dtype=object),
        "meta_problems": np.array([json.dumps(o.meta_problems) for o in outcomes], dtype=object),
    }


def row_path(value: Any) -> str:
    """Paths travel as their bytes (Arrow strings cannot hold a name that is not UTF-8); back to os.fsdecode."""
    return os.fsdecode(bytes(value)) if isinstance(value, (bytes, bytearray, np.bytes_)) else str(value)


class EncoderActor:
    """Ray actor holding one copy of the encoder (on its GPU when it was given one); encodes decoded rows.

    The driver's encoder object is shipped as is, so every actor has exactly the driver's weights and
    identity, also for seeded random init.
    """

    def __init__(self, encoder: Any, device: str, threads: int, settings: Any):
        import torch

        from indexer.encoding.encode import image_encoder_for

        torch.set_num_threads(max(1, threads))
        self.encoder = encoder
        self.encoder.device = torch.device(device)
        self.encoder.model = self.encoder.model.to(self.encoder.device)
        self.image = image_encoder_for(self.encoder, settings, threads)  # the local backend's runtime choice

    def __call__(self, batch: Batch) -> Batch:
        start = time.perf_counter()
        ok = np.asarray(batch["ok"], bool)
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any():
            vectors[ok] = self.image.encode_pixels(np.ascontiguousarray(batch["pixels"][ok]))
        elapsed = time.perf_counter() - start
        out = {k: v for k, v in batch.items() if k != "pixels"}  # pixels stay on the worker
        out["vector"] = vectors
        out["encode_s"] = np.full(len(ok), elapsed / max(len(ok), 1))  # summed by the driver: actor busy time
        return out
