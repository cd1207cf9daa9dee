"""Text-tower families beyond CLIP: a random-init SigLIP-style model folder (built here, offline, loaded through
open_clip's own `local-dir:` path) served by the runtime from its exported encoder folder equals open_clip:
tokens token for token, embeddings (fp32 and int8), batched equal to one by one, image preprocess. Families the
runtime cannot serve exactly are refused with the reason; a model folder missing a file fails naming it."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from open_clip.tokenizer import HFTokenizer

from indexer.lab.tiny_siglip import write_tiny_siglip
from indexer.models.clip import load_encoder
from indexer.models.export import text_parts
from search.artifact.bundle import TOKENIZER_FILE, EncoderBundle
from search.artifact.encoder import EncoderNotServableError, WeightsUnavailableError
from search.artifact.specs import HFTokenizerSpec
from search.runtime.preprocess import ImagePreprocess
from search.runtime.tokenizer import HFTextTokenizer
from search.runtime.towers import RuntimeEncoder
from tests.text_support import (
    CORPUS,
    cosines,
    exported_bundle,
    micro_batched,
    random_texts,
    runtime_encoders,
    serve_probe_report,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip", seed=5)


@pytest.fixture(scope="module")
def encoder(folder: Path):
    return load_encoder(f"local-dir:{folder}", device="cpu")


@pytest.fixture(scope="module")
def bundle(encoder, tmp_path_factory: pytest.TempPathFactory) -> EncoderBundle:
    return exported_bundle(encoder, tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def runtime(bundle: EncoderBundle) -> dict[str, RuntimeEncoder]:
    return runtime_encoders(bundle)


def test_folder_loads_through_open_clip_local_dir_as_a_siglip_style_tower(encoder, folder: Path) -> None:
    assert type(encoder.tokenizer).__name__ == "HFTokenizer" and encoder.context_length == 64
    parts = text_parts(encoder.model)
    assert parts.attn_mask is None and parts.pool_type == "last"
    assert encoder.identity.model == f"local-dir:{folder.name}"
    assert encoder.identity.weights == "open_clip_pytorch_model.bin"


def test_encoder_json_says_hf_tokenizer_full_context_and_no_trim(bundle: EncoderBundle) -> None:
    assert isinstance(bundle.tokenizer, HFTokenizerSpec)
    assert bundle.tokenizer.context_length == 64 and bundle.tokenizer.clean == "canonicalize"
    assert not bundle.text.trim and bundle.text.pool_type == "last"
    assert bundle.preprocess.resize_mode == "squash" and bundle.preprocess.mean == (0.5, 0.5, 0.5)


def test_tokens_equal_open_clip_token_for_token(encoder, runtime) -> None:
    texts = CORPUS + random_texts(200)
    expected = np.asarray(encoder.tokenize(texts))
    got = runtime["fp32"].text.tokenize(texts)
    assert got.shape == expected.shape == (len(texts), 64)
    for text, want, have in zip(texts, expected, got, strict=True):
        assert have.tolist() == want.tolist(), text


@pytest.mark.parametrize("clean", ["whitespace", "lower", "canonicalize"])
def test_every_clean_rule_equals_open_clips_hf_tokenizer(folder: Path, bundle: EncoderBundle, clean: str) -> None:
    reference = HFTokenizer(str(folder), context_length=64, clean=clean)
    spec = HFTokenizerSpec.from_dict({**bundle.tokenizer.to_dict(), "clean": clean})
    mine = HFTextTokenizer.load(spec, bundle.path(TOKENIZER_FILE))
    texts = CORPUS + random_texts(100, seed=zlib.crc32(clean.encode()))  # str hash varies per process
    assert mine(texts).tolist() == reference(texts).numpy().tolist()


def test_strip_sep_token_zeroes_the_separator_as_open_clip_does(bundle: EncoderBundle) -> None:
    eos = 1  # the tiny vocabulary's </s>: stands in for a separator here
    spec = HFTokenizerSpec.from_dict({**bundle.tokenizer.to_dict(), "strip_sep_token": True, "sep_id": eos})
    tokens = HFTextTokenizer.load(spec, bundle.path(TOKENIZER_FILE))(["a red circle"])
    assert eos not in tokens[0].tolist() and tokens.shape == (1, 64)


@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.9999), ("int8", 0.995)])
def test_service_embedding_equals_open_clip_encode_text(encoder, runtime, precision: str, floor: float) -> None:
    texts = CORPUS + random_texts(40, seed=7)
    cos = cosines(runtime[precision].encode_texts(texts), encoder.encode_texts(texts))
    assert cos.min() >= floor, (precision, float(cos.min()), texts[int(cos.argmin())])


def test_mixed_lengths_in_one_batch_equal_one_by_one(runtime) -> None:
    text = runtime["fp32"].text
    batched = text.encode(CORPUS)
    alone = np.concatenate([text.encode([t]) for t in CORPUS])
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)


def test_the_graph_takes_only_the_full_context(runtime) -> None:
    text = runtime["fp32"].text
    tokens = text.tokenize(["a red circle"])
    assert text.lengths(tokens).tolist() == [64]  # what the batcher and the pool's calibration feed
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime's own shape error
        text.session.run(None, {"tokens": tokens[:, :8]})


def test_micro_batcher_pads_per_spec_and_equals_one_by_one(runtime) -> None:
    text = runtime["fp32"].text
    got, calls = micro_batched(text, CORPUS)
    np.testing.assert_allclose(got, text.encode(CORPUS), atol=1e-5, rtol=0)
    assert calls and all(shape[1] == 64 for shape in calls)
    assert max(shape[0] for shape in calls) > 1  # mixed lengths really shared a batch


def _images() -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for (w, h), mode in [((64, 64), "RGB"), ((37, 91), "RGB"), ((640, 480), "RGB"), ((50, 20), "L"),
                         ((90, 70), "RGBA"), ((33, 33), "P"), ((120, 40), "CMYK")]:
        base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out.append(base.convert(mode) if mode != "RGBA" else base.convert("RGBA"))
    return out


def test_siglip_image_preprocess_equals_open_clip_within_1e5(encoder, bundle: EncoderBundle) -> None:
    mine = ImagePreprocess(bundle.preprocess)
    for image in _images():
        np.testing.assert_allclose(mine(image), encoder.preprocess(image).numpy(), atol=1e-5, rtol=0)


def test_class_token_tower_is_refused_with_the_reason() -> None:
    from open_clip.transformer import TextTransformer

    tower = TextTransformer(context_length=8, vocab_size=16, width=8, heads=2, layers=1, embed_cls=True)
    with pytest.raises(EncoderNotServableError, match="class token"):
        text_parts(SimpleNamespace(text=tower))


@pytest.mark.parametrize(("remove", "named"), [
    ("open_clip_config.json", "missing open_clip_config.json"),
    ("open_clip_pytorch_model.bin", "missing weights file open_clip_pytorch_model.bin"),
    ("tokenizer.json", "missing tokenizer.json"),
])
def test_folder_missing_a_file_fails_naming_it(folder: Path, tmp_path: Path, remove: str, named: str) -> None:
    broken = shutil.copytree(folder, tmp_path / "broken")
    (broken / remove).unlink()
    with pytest.raises(WeightsUnavailableError, match=named):
        load_encoder(f"local-dir:{broken}", device="cpu")


def test_a_changed_tokenizer_file_is_another_encoder(folder: Path, encoder, tmp_path: Path) -> None:
    other = shutil.copytree(folder, tmp_path / folder.name)
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 65}))
    changed = load_encoder(f"local-dir:{other}", device="cpu")
    assert changed.identity.key != encoder.identity.key
    assert changed.identity.model == encoder.identity.model  # same folder name: the files tell them apart


def test_safetensors_folder_loads_the_same_way(tmp_path: Path) -> None:
    folder = write_tiny_siglip(tmp_path / "st", seed=5, safetensors=True)
    enc = load_encoder(f"local-dir:{folder}", device="cpu")
    assert enc.identity.weights == "open_clip_model.safetensors"


def test_hf_hub_offline_is_one_line_with_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError) as caught:
        load_encoder("hf-hub:timm/ViT-B-16-SigLIP", device="cpu")
    message = " ".join(str(caught.value).split())
    assert message.startswith("Could not fetch hf-hub:timm/ViT-B-16-SigLIP (")
    assert "--model local-dir:/path/to/ViT-B-16-SigLIP" in message


@pytest.fixture(scope="module")
def built_store(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`python -m indexer build --model local-dir:DIR` over six drawn images: (images, store)."""
    from tests.indexer_support import cli, make_tree

    base = tmp_path_factory.mktemp("built")
    images, store = base / "images", base / "store"
    make_tree(images, 6)
    built = cli("build", "--images", str(images), "--store", str(store), "--model", f"local-dir:{folder}",
                "--device", "cpu", "--batch-size", "4", "--workers", "1")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["counts"]["indexed"] == 6
    return images, store


def test_build_from_a_folder_publishes_a_store_the_service_answers_from(encoder, built_store) -> None:
    from fastapi.testclient import TestClient

    from search.artifact.version import open_current
    from search.http.app import create_app
    from search.settings import ReloadSettings, RuntimeSettings, Settings

    _, store = built_store
    settings = Settings(store=store, reload=ReloadSettings(watch=False), runtime=RuntimeSettings(text_precision="fp32"))
    query = "a Small red Circle 東京"
    with open_current(store) as artifact:
        assert artifact.manifest.encoder == encoder.identity
        _, want = artifact.exact_search(encoder.encode_texts([query]), 6)
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        response = client.get("/search", params={"q": query, "k": 6})
        assert response.status_code == 200, response.text
        assert [hit["id"] for hit in response.json()["hits"]] == want[0].tolist()
        assert client.get("/search", params={"q": "!!! ..."}).status_code == 422  # cleans to no tokens


def test_the_store_serves_with_torch_transformers_and_sentencepiece_unimportable(built_store, tmp_path) -> None:
    images, store = built_store
    serve_probe_report(store, sorted(images.rglob("*.png"))[0], "a small red circle", tmp_path)


def test_build_with_a_folder_missing_a_file_exits_2_with_one_line(folder: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from indexer.cli import main as indexer_main

    broken = shutil.copytree(folder, tmp_path / "broken")
    (broken / "tokenizer.json").unlink()
    (tmp_path / "images").mkdir()
    code = indexer_main(["build", "--images", str(tmp_path / "images"), "--store", str(tmp_path / "store"),
                         "--model", f"local-dir:{broken}", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"error: local-dir:{broken}: missing tokenizer.json (the model's HF " \
        "tokenizer, which the runtime runs)"


def test_the_torch_reference_backend_serves_the_family_too(encoder, runtime) -> None:
    from indexer.models.towers import TorchTextEncoder

    torch_text = TorchTextEncoder(encoder)
    assert not torch_text.trim and torch_text.tokenize(["x"]).shape == (1, 64)
    np.testing.assert_allclose(torch_text.encode(CORPUS), runtime["fp32"].text.encode(CORPUS), atol=1e-5, rtol=0)
    for text in CORPUS:
        assert torch_text._tokenizer.encode(text) == runtime["fp32"].text.tokenizer.encode(text), text


def test_an_unknown_tokenizer_kind_is_refused_and_a_kindless_spec_is_clips(bundle: EncoderBundle) -> None:
    from search.artifact.specs import TokenizerSpec, tokenizer_spec_from_dict

    assert tokenizer_spec_from_dict(bundle.tokenizer.to_dict()) == bundle.tokenizer
    with pytest.raises(ValueError, match="not supported"):
        tokenizer_spec_from_dict({**bundle.tokenizer.to_dict(), "kind": "sentencepiece"})
    clip = {"context_length": 77, "sot_id": 1, "eot_id": 2, "clean": "lower", "pattern": "x", "special_tokens": {}}
    assert isinstance(tokenizer_spec_from_dict(clip), TokenizerSpec)  # stores published before the kind existed
