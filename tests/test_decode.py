"""Decoding: orientation, mode conversion, per-file failures, and workers that crash or hang."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.ingest.decode import DecodeError, DecodeOutcome, DecodePool, decode_file, decode_image, to_rgb
from tests.indexer_support import draw, tiny_encoder

BIG = 89_478_485


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif)
    assert decode_image(str(path), BIG).size == (20, 40)


def test_alpha_is_composited_over_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 255))
    assert to_rgb(half).getpixel((0, 0)) == (0, 0, 0)


def test_palette_transparency_becomes_white() -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 1
    assert to_rgb(pal).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_is_rescaled_not_clipped() -> None:
    arr = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    im = Image.fromarray(arr)
    assert im.mode.startswith("I;16")
    rgb = np.asarray(to_rgb(im))
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 32


def test_cmyk_converts_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)
    out = decode_image(str(path), BIG)
    assert out.mode == "RGB"
    r, g, b = out.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    full = draw(tmp_path / "full.png", 1, size=(64, 64)).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DecodeError, match="(?i)truncated"):
        decode_image(str(path), BIG)


def test_decompression_bomb_guard_is_a_failure(tmp_path: Path) -> None:
    path = draw(tmp_path / "big.png", 1, size=(100, 100))
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(str(path), max_pixels=1000)


def test_one_callers_pixel_limit_does_not_leak_into_the_process(tmp_path: Path) -> None:
    """An in-process call with a small limit once set Pillow's global and broke every later decode here."""
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DecodeError):
        decode_image(str(draw(tmp_path / "big.png", 1, size=(100, 100))), max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == before
    assert decode_image(str(draw(tmp_path / "ok.png", 2, size=(100, 100))), BIG).size == (100, 100)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "fake.jpg"
    path.write_text("not an image")
    outcome = decode_file(str(path))
    assert not outcome.ok and "not a readable image" in outcome.reason


def _crash_on_marker(path: str) -> DecodeOutcome:
    """Simulates a decoder that segfaults on one file and hangs on another."""
    if path.endswith("crash.png"):
        os._exit(139)
    if path.endswith("hang.png"):
        threading.Event().wait()
    return decode_file(path)


def test_dead_or_hung_worker_is_a_per_file_failure(tmp_path: Path) -> None:
    paths = [draw(tmp_path / f"{name}.png", i) for i, name in enumerate(["ok1", "crash", "hang", "ok2"])]
    enc = tiny_encoder()
    with DecodePool(enc.preprocess, workers=2, timeout_s=3, max_pixels=BIG, task=_crash_on_marker) as pool:
        outcomes = [pool.outcome(f) for f in [pool.submit(str(p)) for p in paths]]
        after = pool.outcome(pool.submit(str(paths[0])))  # the pool still works afterwards
    ok1, crash, hang, ok2 = outcomes
    assert ok1.ok and ok2.ok and after.ok
    assert "process died" in crash.reason
    assert "timed out" in hang.reason
    assert ok1.pixels.shape == (3, 64, 64) and ok1.pixels.dtype == np.float32
    np.testing.assert_array_equal(ok1.pixels, after.pixels)


def test_worker_applies_the_encoders_preprocess(tmp_path: Path) -> None:
    path = draw(tmp_path / "x.png", 5, size=(50, 30))
    enc = tiny_encoder()
    with DecodePool(enc.preprocess, workers=1, timeout_s=60, max_pixels=BIG) as pool:
        outcome = pool.outcome(pool.submit(str(path)))
    expected = enc.preprocess(Image.open(path).convert("RGB")).numpy()
    assert (outcome.width, outcome.height) == (50, 30)
    np.testing.assert_allclose(outcome.pixels, expected, atol=1e-6)


def _photo(path: Path, size: tuple[int, int], exif_orientation: int | None = None) -> Path:
    """A smooth photo-like JPEG (gradients + a disc), so downscaled decodes are comparable."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = ((x - w / 2) ** 2 + (y - h / 2) ** 2) < (min(w, h) / 3) ** 2
    rgb = np.stack([255 * x / w, 255 * y / h, np.where(disc, 230, 40)], axis=-1).astype(np.uint8)
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    Image.fromarray(rgb).save(path, quality=92, exif=exif)
    return path


def test_jpeg_draft_decodes_smaller_but_reports_the_file_size(tmp_path: Path) -> None:
    from indexer.ingest.decode import decode_with, open_rgb

    path = _photo(tmp_path / "photo.jpg", (640, 480))
    rgb, size = open_rgb(str(path), BIG, draft_side=224)
    assert size == (640, 480) and rgb.size == (320, 240)  # 1/2 scale: both sides still >= 224
    assert open_rgb(str(path), BIG, draft_side=64)[0].size == (160, 120)  # 480 // 64 = 7: scale 1/4, not 1/8
    pre = tiny_encoder().preprocess  # the tiny model's input side is 64
    full = decode_with(str(path), pre, BIG)
    draft = decode_with(str(path), pre, BIG, draft_side=64)
    assert (draft.width, draft.height) == (full.width, full.height) == (640, 480)
    assert draft.pixels.shape == full.pixels.shape
    assert float(np.abs(draft.pixels - full.pixels).mean()) < 0.05  # normalised units; values span about 4


def test_jpeg_draft_keeps_orientation_and_leaves_other_files_alone(tmp_path: Path) -> None:
    from indexer.ingest.decode import open_rgb

    rotated = _photo(tmp_path / "rotated.jpg", (640, 480), exif_orientation=6)
    rgb, size = open_rgb(str(rotated), BIG, draft_side=224)
    assert size == (480, 640) and rgb.size == (240, 320)
    small = _photo(tmp_path / "small.jpg", (300, 200))  # 200 < 2 * 224: no smaller scale covers the side
    assert open_rgb(str(small), BIG, draft_side=224)[0].size == (300, 200)
    png = draw(tmp_path / "p.png", 3, size=(640, 480))
    drafted, size = open_rgb(str(png), BIG, draft_side=64)
    assert size == (640, 480) and np.array_equal(np.asarray(drafted), np.asarray(decode_image(str(png), BIG)))
