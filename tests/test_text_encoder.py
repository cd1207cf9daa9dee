"""Service area: padding-trimmed text encoding (torch and ONNX Runtime) equals full-context encoding."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.models.clip import load_encoder
from indexer.models.export import export_key, export_text_tower, trim_is_exact
from indexer.models.towers import TorchTextEncoder, onnx_text_encoder

TEXTS = [
    "cat",
    "a small green crescent on a sand background",
    "red sun",
    "  Ünïcödé   ＷＩＤＥ text  ",
    "",
]


@pytest.fixture(scope="module")
def encoder():
    import torch

    torch.manual_seed(1)
    return load_encoder("tiny", pretrained="random", device="cpu")


def test_trim_is_exact_for_clip_text_tower(encoder):
    assert trim_is_exact(encoder.model)


def test_trimmed_torch_equals_full_context(encoder):
    text = TorchTextEncoder(encoder)
    short = text.tokenize(["cat", "red sun", ""])
    assert text.trimmed(short).shape[1] == int(text.lengths(short).max()) < encoder.context_length
    np.testing.assert_allclose(text.encode(TEXTS), encoder.encode_texts(TEXTS), atol=1e-5, rtol=0)


def test_each_text_alone_equals_its_row_in_a_batch(encoder):
    text = TorchTextEncoder(encoder)
    batch = text.encode(TEXTS)
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(text.encode([t])[0], batch[i], atol=1e-5, rtol=0)


def test_onnx_equals_full_context_and_export_is_cached(encoder, tmp_path):
    path = export_text_tower(encoder, tmp_path)
    onnx = onnx_text_encoder(encoder, tmp_path)
    assert path.parent.name == export_key(encoder)
    np.testing.assert_allclose(onnx.encode(TEXTS), encoder.encode_texts(TEXTS), atol=1e-5, rtol=0)
    for batch in (TEXTS[:1], TEXTS[1:3]):  # other batch sizes and sequence lengths than the export's example
        np.testing.assert_allclose(onnx.encode(batch), encoder.encode_texts(batch), atol=1e-5, rtol=0)
    before = path.stat().st_mtime_ns
    assert export_text_tower(encoder, tmp_path) == path
    assert path.stat().st_mtime_ns == before


def test_tower_without_causal_mask_falls_back_to_full_context(tmp_path):
    import torch

    torch.manual_seed(2)
    enc = load_encoder("tiny", pretrained="random", device="cpu")
    enc.model.attn_mask = None  # bidirectional attention: padding would change the pooled feature
    assert not trim_is_exact(enc.model)
    text = TorchTextEncoder(enc)
    tokens = text.tokenize(TEXTS)
    assert text.trimmed(tokens).shape[1] == enc.context_length
    np.testing.assert_allclose(text.encode(TEXTS), enc.encode_texts(TEXTS), atol=1e-5, rtol=0)


def test_empty_input(encoder, tmp_path):
    assert TorchTextEncoder(encoder).encode([]).shape == (0, encoder.dim)
    assert onnx_text_encoder(encoder, tmp_path).encode([]).shape == (0, encoder.dim)


def test_text_longer_than_context_is_truncated_like_the_reference(encoder):
    long = ["word " * 100]
    np.testing.assert_allclose(TorchTextEncoder(encoder).encode(long), encoder.encode_texts(long), atol=1e-5,
                               rtol=0)
