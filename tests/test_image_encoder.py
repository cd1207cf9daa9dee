"""Image-tower backends: ONNX Runtime equals the torch tower; exports are cached per weights; the indexer
builds the same index with either backend."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from indexer.models.clip import load_encoder
from indexer.models.export import export_image_tower, export_key
from indexer.models.towers import TorchImageEncoder, build_image_encoder, onnx_image_encoder
from search.runtime.towers import OnnxImageEncoder
from tests.indexer_support import make_tree, run


@pytest.fixture(scope="module")
def encoder():
    import torch

    torch.manual_seed(3)
    return load_encoder("tiny", pretrained="random", device="cpu")


def _pixels(encoder, n: int, seed: int = 0) -> np.ndarray:
    side = encoder.model.visual.image_size
    side = side if isinstance(side, int) else side[0]
    return np.random.default_rng(seed).standard_normal((n, 3, side, side)).astype(np.float32)


@pytest.mark.parametrize("n", [1, 5, 17])  # below, between and across micro-batches of 8
def test_onnx_equals_torch_tower(encoder, tmp_path: Path, n: int) -> None:
    onnx = onnx_image_encoder(encoder, tmp_path, micro_batch=8)
    pixels = _pixels(encoder, n)
    got = onnx.encode_pixels(pixels)
    assert got.shape == (n, encoder.dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, encoder.encode_pixels(pixels), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_empty_batch(encoder, tmp_path: Path) -> None:
    assert onnx_image_encoder(encoder, tmp_path).encode_pixels(_pixels(encoder, 0)).shape == (0, encoder.dim)


def test_export_is_cached_and_keyed_by_the_weights(encoder, tmp_path: Path) -> None:
    import torch

    path = export_image_tower(encoder, tmp_path)
    before = path.stat().st_mtime_ns
    assert export_image_tower(encoder, tmp_path) == path and path.stat().st_mtime_ns == before
    torch.manual_seed(4)
    other = load_encoder("tiny", pretrained="random", device="cpu")
    assert other.identity == encoder.identity  # random init: the identity cannot tell them apart...
    assert export_key(other) != export_key(encoder)  # ...so the export key hashes the weights
    other_path = export_image_tower(other, tmp_path)
    assert other_path != path
    pixels = _pixels(encoder, 3)
    np.testing.assert_allclose(onnx_image_encoder(other, tmp_path).encode_pixels(pixels),
                               other.encode_pixels(pixels), atol=1e-5, rtol=0)


def test_backend_choice(encoder, tmp_path: Path) -> None:
    import torch

    assert isinstance(build_image_encoder(encoder, "auto", tmp_path), OnnxImageEncoder)
    assert isinstance(build_image_encoder(encoder, "torch", tmp_path), TorchImageEncoder)
    on_gpu = types.SimpleNamespace(device=torch.device("cuda"))  # only the device is read before choosing
    assert isinstance(build_image_encoder(on_gpu, "auto", tmp_path), TorchImageEncoder)
    with pytest.raises(ValueError, match="runs on the CPU"):
        build_image_encoder(on_gpu, "onnx", tmp_path)
    with pytest.raises(ValueError, match="unknown image backend"):
        build_image_encoder(encoder, "tensorrt", tmp_path)
    with pytest.raises(ValueError, match="cache_dir"):
        build_image_encoder(encoder, "onnx", None)


def test_indexer_builds_the_same_index_with_either_backend(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_tree(images, 9)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    stores = {}
    for backend in ("torch", "onnx"):
        store = tmp_path / f"store-{backend}"
        report = run(images, store, image_backend=backend, onnx_cache_dir=str(tmp_path / "onnx"))
        assert report["counts"]["encoded"] == 9 and report["counts"]["failed"] == 1
        assert "encoder_setup" in report["timings"]
        stores[backend] = store
    ids = {b: np.load(s / "current" / "ids.npy") for b, s in stores.items()}
    vecs = {b: np.load(s / "current" / "vectors.f16.npy").astype(np.float32) for b, s in stores.items()}
    np.testing.assert_array_equal(ids["torch"], ids["onnx"])
    np.testing.assert_allclose(vecs["onnx"], vecs["torch"], atol=2e-3, rtol=0)  # float16 storage
    assert (tmp_path / "onnx").is_dir() and any((tmp_path / "onnx").rglob("image.onnx"))
