"""Decode image files into the encoder's input tensors, in worker processes that may die without harm.

Each worker turns one file into an RGB image (EXIF orientation applied, alpha composited over white, 16-bit
and float modes rescaled rather than clipped), then applies the encoder's own `preprocess`, so the main
process only stacks arrays. Anything that goes wrong with one file (corrupt data, truncation, a
decompression bomb, a decoder that crashes its process or hangs) becomes a `DecodeOutcome` with a reason;
nothing a single file does can stop the run.
"""

from __future__ import annotations

import multiprocessing
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from indexer.ingest.file_meta import FileMeta, read_file_meta

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255)

# Set in each worker by `_init_worker`; in-process callers pass them explicitly.
_preprocess: Callable[[Image.Image], Any] | None = None
_max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485
_draft_side: int | None = None
_read_meta: bool = True


@dataclass
class DecodeOutcome:
    """Result for one file: `pixels` (C,H,W float32) when decoded, else `reason` says why not."""

    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    file_meta: dict[str, Any] = field(default_factory=dict)  # EXIF/IPTC/XMP fields (indexer.ingest.file_meta)
    meta_problems: list[str] = field(default_factory=list)  # corrupt metadata blocks (image indexed anyway)

    @property
    def ok(self) -> bool:
        return self.reason is None


class DecodeError(Exception):
    """A file that cannot become an RGB image; the message is the recorded failure reason."""


def decode_image(path: str, max_pixels: int, notes: list[str] | None = None) -> Image.Image:
    """Open, fully load and orient `path` as an RGB image; raises DecodeError with a reason otherwise."""
    return open_rgb(path, max_pixels, notes)[0]


def open_rgb(path: str, max_pixels: int, notes: list[str] | None = None,
             draft_side: int | None = None, meta: FileMeta | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """`decode_image`, plus the file's full (oriented) size.

    With `draft_side`, a JPEG is decoded directly at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both
    sides >= draft_side: a cheaper decode when the encoder downsizes to that side anyway (figures:
    benchmarks/README.md, benchmarks/image_units.py). The returned size is still the file's own.
    With `meta`, the file's EXIF/IPTC/XMP fields are read from the same open image (no second read of the file).
    """
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Image.open(path) as im:
                size = im.size
                check_pixels(size, max_pixels)
                if draft_side and im.format == "JPEG":
                    im.draft(im.mode, (draft_side, draft_side))
                im.load()
                if meta is not None:
                    found = read_file_meta(im)
                    meta.fields, meta.problems = found.fields, found.problems
                oriented = _apply_orientation(im, notes)
                if oriented.size != im.size:  # EXIF rotated by 90 degrees: report the size as displayed
                    size = (size[1], size[0])
                rgb = to_rgb(oriented)
        if notes is not None:  # Pillow's per-file complaints travel with the file into the run report
            notes.extend(f"{w.category.__name__}: {w.message}" for w in caught)
        return rgb, size
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb guard: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(f"not a readable image: {exc}") from exc
    except MemoryError as exc:
        raise DecodeError("out of memory while decoding") from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, struct.error, ...)
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """The bomb guard, from the header's size before any pixel is decoded.

    Our own check rather than Pillow's process-wide `Image.MAX_IMAGE_PIXELS`: setting that global per call
    leaked one caller's limit into every later decode in the process (the search service's uploads too).
    """
    width, height = size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise Image.DecompressionBombError(f"image of {width}x{height} pixels exceeds the {max_pixels}-pixel limit")


def own_pixel_limit(max_pixels: int) -> None:
    """In a process that decodes only for us (pool worker, Ray worker): let Pillow's own guard, which also
    checks crops and resizes, allow `max_pixels` (its default refuses ~179 MP outright)."""
    Image.MAX_IMAGE_PIXELS = max(max_pixels, Image.MAX_IMAGE_PIXELS or 0)


def _apply_orientation(im: Image.Image, notes: list[str] | None) -> Image.Image:
    """EXIF-rotate; an unreadable EXIF block leaves the pixels as stored and adds a note (not a failure)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:
        if notes is not None:
            notes.append(f"EXIF orientation not applied ({type(exc).__name__}: {exc})")
        return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency over white, high-bit-depth greys rescaled to 8 bits."""
    if im.mode == "P" or (im.mode in {"L", "RGB", "1"} and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if im.mode in {"I", "F"} or im.mode.startswith("I;16"):
        return _rescale_to_l(im).convert("RGB")
    return im.convert("RGB")


def _rescale_to_l(im: Image.Image) -> Image.Image:
    """16-bit / int32 / float images: stretch the used range to 0..255 (a plain convert clips to white)."""
    arr = np.asarray(im, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scaled = np.zeros_like(arr) if hi <= lo else (np.nan_to_num(arr, nan=lo) - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def decode_file(path: str) -> DecodeOutcome:
    """Worker task: decode + preprocess one file. Never raises for bad input."""
    return decode_with(path, _preprocess, _max_pixels, _draft_side, _read_meta)  # type: ignore[arg-type]


def decode_with(path: str, preprocess: Callable[[Image.Image], Any], max_pixels: int,
                draft_side: int | None = None, read_meta: bool = True) -> DecodeOutcome:
    """`decode_file` with explicit settings, for callers that are not pool workers (the Ray backend)."""
    start = time.perf_counter()
    notes: list[str] = []
    meta = FileMeta() if read_meta else None
    try:
        rgb, (width, height) = open_rgb(path, max_pixels, notes, draft_side, meta)
        pixels = np.asarray(preprocess(rgb), dtype=np.float32)
    except DecodeError as exc:
        return DecodeOutcome(reason=str(exc), warnings=notes, seconds=time.perf_counter() - start)
    except Exception as exc:  # the encoder's preprocess rejecting an image is still this file's problem
        reason = f"preprocess failed: {type(exc).__name__}: {exc}"
        return DecodeOutcome(reason=reason, warnings=notes, seconds=time.perf_counter() - start)
    return DecodeOutcome(pixels, width, height, None, notes, time.perf_counter() - start,
                         meta.fields if meta else {}, meta.problems if meta else [])


def _init_worker(preprocess: Callable[[Image.Image], Any], max_pixels: int, draft_side: int | None,
                 read_meta: bool = True) -> None:
    global _preprocess, _max_pixels, _draft_side, _read_meta
    settle_decode_process()
    own_pixel_limit(max_pixels)
    _preprocess, _max_pixels, _draft_side, _read_meta = preprocess, max_pixels, draft_side, read_meta


_frozen = False


def settle_decode_process(freeze: bool = True) -> None:
    """In a decode process (pool worker, Ray worker), after its imports: one intra-op thread, and (once, with
    `freeze`) every object alive now moved out of reach of the cyclic garbage collector (`gc.freeze`).

    Workers are many, so torch's intra-op threads would only fight each other. The freeze: a process that has
    imported torch holds ~400k tracked objects, and each full collection walks all of them; the per-file
    allocations of decoding and metadata reading trigger such collections often enough to cost about 10% of a
    640x480 decode in one measurement (benchmarks/file_meta_overhead.py has `--no-gc-freeze`). Import-time
    objects live as long as the process anyway; reference counting still frees everything as before.
    """
    global _frozen
    import gc

    import torch

    torch.set_num_threads(1)
    if freeze and not _frozen:
        gc.collect()  # garbage made while importing goes now, not into the frozen set
        gc.freeze()
        _frozen = True


def _modules_of(preprocess: Callable[[Any], Any]) -> list[str]:
    """Modules defining the preprocess transforms: imported once in the fork server, not in every worker."""
    parts = [preprocess, *getattr(preprocess, "transforms", [])]
    return sorted({type(p).__module__ for p in parts if type(p).__module__ != "builtins"})


_SERVER_PRELOAD = ["torch", "PIL.Image", "indexer.ingest.decode"]


def start_decode_server(modules: tuple[str, ...] = ("torchvision.transforms", "open_clip.transform")) -> None:
    """Start the decode workers' fork server now, in the background.

    Its imports (torch and the preprocess transforms, seconds of CPU) then overlap the caller's own imports and
    model loading instead of following them. A later `DecodePool` reuses the running server.
    """
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([*_SERVER_PRELOAD, *modules])
    forkserver.ensure_running()


class DecodePool:
    """A pebble process pool: per-task timeouts, and a crashed or hung worker is replaced, not fatal."""

    def __init__(
        self,
        preprocess: Callable[[Any], Any],
        workers: int,
        timeout_s: float,
        max_pixels: int,
        task: Callable[[str], DecodeOutcome] = decode_file,
        draft_side: int | None = None,
        read_meta: bool = True,
    ):
        from pebble import ProcessPool

        context = multiprocessing.get_context("forkserver")  # clean children even after torch has threads
        context.set_forkserver_preload([*_SERVER_PRELOAD, *_modules_of(preprocess)])  # unless already running
        self.timeout_s = timeout_s
        self._task = task  # a module-level function of a path (tests substitute one that crashes or hangs)
        self._pool = ProcessPool(
            max_workers=workers, initializer=_init_worker, initargs=(preprocess, max_pixels, draft_side, read_meta),
            context=context,
        )

    def submit(self, path: str) -> Future[DecodeOutcome]:
        return self._pool.schedule(self._task, args=(path,), timeout=self.timeout_s)

    def outcome(self, future: Future[DecodeOutcome]) -> DecodeOutcome:
        """The task's outcome; worker death and timeouts become failures with a reason."""
        from pebble import ProcessExpired

        try:
            return future.result()
        except FutureTimeout:
            return DecodeOutcome(reason=f"decode timed out after {self.timeout_s:g}s (worker replaced)")
        except ProcessExpired as exc:
            return DecodeOutcome(reason=f"decoder process died (exit code {exc.exitcode}) while decoding")
        except Exception as exc:  # e.g. a result that could not be sent back from the worker
            return DecodeOutcome(reason=f"decode worker error: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._pool.stop()  # type: ignore[no-untyped-call]  # pebble leaves stop() unannotated
        self._pool.join()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
