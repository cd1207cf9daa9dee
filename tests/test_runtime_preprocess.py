"""The runtime preprocess (Pillow + numpy from the artifact's spec) equals open_clip's transform to 1e-5 per
value: odd sizes, palette/LA/CMYK/16-bit and other modes, EXIF-rotated files and the shared odd-image corpus."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from open_clip import image_transform
from PIL import Image, ImageOps

from search.artifact.specs import PreprocessSpec
from search.runtime.preprocess import ImagePreprocess
from tests.indexer_support import ODD_IMAGES
from tests.optional import require_optional

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SPECS = {
    "tiny-64-bicubic": (64, "shortest", "bicubic"),
    "vit-224-bicubic": (224, "shortest", "bicubic"),
    "bilinear-96": (96, "shortest", "bilinear"),
    "squash-80x96": ((80, 96), "squash", "bicubic"),
}


@pytest.fixture(scope="module", params=list(SPECS))
def pair(request):
    size, mode, interpolation = SPECS[request.param]
    reference = image_transform(size, is_train=False, mean=MEAN, std=STD, resize_mode=mode,
                                interpolation=interpolation)
    spec = PreprocessSpec.from_dict({"size": size, "resize_mode": mode, "interpolation": interpolation,
                                     "mean": MEAN, "std": STD})
    return reference, ImagePreprocess(spec)


def _assert_equal(pair, image: Image.Image, label: str) -> None:
    reference, runtime = pair
    want = reference(image).numpy()
    got = runtime(image)
    assert got.dtype == np.float32 and got.shape == want.shape, label
    assert float(np.abs(got - want).max()) <= 1e-5, label


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (3, 7), (97, 61), (63, 64), (225, 224), (641, 479)])
def test_odd_sizes(pair, size):
    _assert_equal(pair, _noise(size), f"{size}")


@pytest.mark.parametrize("mode", ["P", "LA", "CMYK", "I;16", "I", "F", "L", "1", "RGBA", "PA", "YCbCr", "HSV"])
def test_modes(pair, mode):
    base = _noise((83, 57), seed=1)
    if mode == "P":
        image = base.quantize(64)
    elif mode == "PA":
        image = base.quantize(64).convert("PA")
    elif mode == "I;16":
        image = base.convert("L").convert("I").point(lambda v: v * 257).convert("I;16")
    else:
        image = base.convert(mode)
    assert image.mode == mode
    _assert_equal(pair, image, mode)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpegs(pair, orientation):
    """Decoded the way the indexer decodes (EXIF orientation applied), both transforms see the same image."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    _noise((90, 50), seed=orientation).save(buf, format="JPEG", exif=exif)
    with Image.open(io.BytesIO(buf.getvalue())) as image:
        upright = ImageOps.exif_transpose(image)
    assert upright.size == ((50, 90) if orientation >= 5 else (90, 50))
    _assert_equal(pair, upright, f"orientation {orientation}")


def _corpus() -> list[str]:
    require_optional("odd-image corpus", ODD_IMAGES.is_dir(), f"{ODD_IMAGES} not present")
    return sorted(p.name for p in ODD_IMAGES.iterdir() if p.is_file())


def test_shared_odd_image_corpus(pair):
    """Every corpus file the reference can transform gives the same values; one it cannot, the runtime refuses."""
    compared = 0
    for name in _corpus():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(ODD_IMAGES / name) as opened:
                    if opened.width * opened.height > 4_000_000:
                        continue
                    opened.load()
                    image = ImageOps.exif_transpose(opened)
        except Exception:  # undecodable files are the decoder's business, not the transform's
            continue
        reference, runtime = pair
        try:
            want = reference(image).numpy()
        except Exception as exc:
            with pytest.raises(type(exc)):
                runtime(image)
            continue
        got = runtime(image)
        assert float(np.abs(got - want).max()) <= 1e-5, f"{name} ({image.mode} {image.size})"
        compared += 1
    assert compared > 200


def test_unsupported_specs_are_refused():
    for bad in ({"resize_mode": "longest"}, {"interpolation": "lanczos"}, {"size": (64, 80)}):
        data = {"size": 64, "resize_mode": "shortest", "interpolation": "bicubic", "mean": MEAN, "std": STD, **bad}
        with pytest.raises(ValueError):
            PreprocessSpec.from_dict(data)
