"""MobileCLIP: random-init folders shaped by open_clip's own MobileCLIP configs (indexer.lab.tiny_mobileclip: the
`fastvit_mci0` image tower of MobileCLIP2-S0 at its 256-pixel input, a toy CLIP-style text tower with no causal
mask pooled at the end-of-text token, and MobileCLIP-B's causal variant), loaded through open_clip's `local-dir:`
path and served by the torch-free runtime from the exported encoder folder: tokens equal open_clip's token for
token, text embeddings equal `encode_text` (fp32 and int8) over the hostile corpus, the bidirectional tower is fed
only the full context (never trimmed) while the causal one is cut like CLIP, the preprocess of every MobileCLIP
pretrained config equals open_clip's, image embeddings equal `encode_image`, and a built store answers searches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.lab.tiny_mobileclip import MOBILECLIP_MODELS, reference_model, write_tiny_mobileclip
from indexer.models.clip import load_encoder
from indexer.models.export import text_parts, trim_is_exact
from search.artifact.bundle import EncoderBundle
from search.artifact.specs import PreprocessSpec, TokenizerSpec
from search.runtime.preprocess import ImagePreprocess
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

VARIANTS = {"S": False, "B": True}  # MobileCLIP-S*/MobileCLIP2 (no causal mask), MobileCLIP-B (causal)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    # B's image tower at 64 pixels: its tests are about the causal text tower (the S folder is MobileCLIP2-S0's 256)
    return {v: write_tiny_mobileclip(base / f"tiny-mobileclip-{v}", seed=4, causal=c, image_size=64 if c else None)
            for v, c in VARIANTS.items()}


@pytest.fixture(scope="module")
def encoders(folders: dict[str, Path]) -> dict[str, object]:
    return {v: load_encoder(f"local-dir:{f}", device="cpu") for v, f in folders.items()}


@pytest.fixture(scope="module")
def bundles(encoders, tmp_path_factory: pytest.TempPathFactory) -> dict[str, EncoderBundle]:
    return {v: exported_bundle(e, tmp_path_factory.mktemp(f"store-{v}")) for v, e in encoders.items()}


@pytest.fixture(scope="module")
def runtimes(bundles) -> dict[str, dict[str, RuntimeEncoder]]:
    return {v: runtime_encoders(b) for v, b in bundles.items()}


def test_folder_is_open_clips_mobileclip_shape(encoders) -> None:
    from open_clip.model import CustomTextCLIP
    from open_clip.timm_model import TimmModel
    from open_clip.tokenizer import SimpleTokenizer

    for v, causal in VARIANTS.items():
        enc = encoders[v]
        assert isinstance(enc.model, CustomTextCLIP) and isinstance(enc.model.visual, TimmModel)
        assert type(enc.model.visual.trunk).__name__ == "FastVit"
        assert enc.model.visual.image_size == ((64, 64) if causal else (256, 256))
        assert isinstance(enc.tokenizer, SimpleTokenizer) and enc.context_length == 77
        parts = text_parts(enc.model)
        assert parts.pool_type == "argmax" and (parts.attn_mask is not None) == causal
        assert trim_is_exact(enc.model) == causal  # no causal mask: the padding length is part of the model


def test_encoder_json_pads_s_to_the_full_context_and_cuts_b_like_clip(bundles) -> None:
    for v, causal in VARIANTS.items():
        bundle = bundles[v]
        assert isinstance(bundle.tokenizer, TokenizerSpec) and bundle.tokenizer.context_length == 77
        assert bundle.text.trim == causal and bundle.text.pool_type == "argmax"
        size = 64 if causal else 256
        assert bundle.preprocess == PreprocessSpec((size, size), "shortest", "bilinear", (0.0, 0.0, 0.0),
                                                   (1.0, 1.0, 1.0))


def test_tokens_equal_open_clip_token_for_token(encoders, runtimes) -> None:
    texts = CORPUS + random_texts(200, seed=11)
    expected = np.asarray(encoders["S"].tokenize(texts))
    got = runtimes["S"]["fp32"].text.tokenize(texts)
    assert got.shape == expected.shape == (len(texts), 77)
    for text, want, have in zip(texts, expected, got, strict=True):
        assert have.tolist() == want.tolist(), text


@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.9999), ("int8", 0.995)])
def test_service_embedding_equals_open_clip_encode_text(encoders, runtimes, variant: str, precision: str,
                                                        floor: float) -> None:
    texts = CORPUS + random_texts(40, seed=7)
    cos = cosines(runtimes[variant][precision].encode_texts(texts), encoders[variant].encode_texts(texts))
    assert cos.min() >= floor, (variant, precision, float(cos.min()), texts[int(cos.argmin())])


def test_bidirectional_tower_takes_only_the_full_context(runtimes) -> None:
    text = runtimes["S"]["fp32"].text
    tokens = text.tokenize(["a red circle"])
    assert text.lengths(tokens).tolist() == [77] and text.feeds(tokens)["tokens"].shape == (1, 77)
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime's own shape error: the graph fixes the context
        text.session.run(None, {"tokens": tokens[:, :8]})


def test_causal_tower_is_cut_after_the_longest_end_token_exactly(runtimes) -> None:
    text = runtimes["B"]["fp32"].text
    tokens = text.tokenize(["a red circle", "a large blue star on a sky background"])
    assert text.feeds(tokens)["tokens"].shape == (2, 10)
    np.testing.assert_allclose(text.encode_token_ids(tokens), text.session.run(None, {"tokens": tokens})[0],
                               atol=1e-5, rtol=0)


def test_micro_batcher_feeds_the_full_context_and_equals_one_by_one(runtimes) -> None:
    text = runtimes["S"]["fp32"].text
    got, calls = micro_batched(text, CORPUS)
    alone = np.concatenate([text.encode([t]) for t in CORPUS])
    np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0)
    assert calls and all(shape[1] == 77 for shape in calls)
    assert max(shape[0] for shape in calls) > 1  # mixed lengths really shared a batch


def test_the_image_graph_is_fastvits_fused_inference_form(encoders, bundles) -> None:
    """The exported FastViT has its re-parameterisable branches folded (fewer convolutions than the training
    form open_clip runs); test_image_embedding_equals_open_clip_encode_image holds it equal."""
    import onnx
    import torch

    convs = sum(isinstance(m, torch.nn.Conv2d) for m in encoders["S"].model.visual.modules())
    graph = onnx.load(str(bundles["S"].path("image.onnx"))).graph
    assert 0 < sum(node.op_type == "Conv" for node in graph.node) < convs


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    out = []
    for (w, h), mode in [((256, 256), "RGB"), ((37, 91), "RGB"), ((640, 480), "RGB"), ((300, 120), "L"),
                         ((90, 270), "RGBA"), ((33, 33), "P"), ((120, 400), "CMYK")]:
        out.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode))
    return out


def test_tiny_models_preprocess_equals_open_clip_within_1e5(encoders, bundles) -> None:
    mine = ImagePreprocess(bundles["S"].preprocess)
    for image in _images():
        np.testing.assert_allclose(mine(image), encoders["S"].preprocess(image).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", MOBILECLIP_MODELS)
def test_every_mobileclip_pretrained_preprocess_equals_open_clip_within_1e5(model: str) -> None:
    """Each MobileCLIP model's published preprocess (MobileCLIP: mean 0 / std 1, bilinear; MobileCLIP2-S3/S4:
    OpenAI's mean and std; -L-14: bicubic) through the runtime against open_clip's own transform."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    size = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
    for tag in open_clip.list_pretrained_tags_by_model(model):
        cfg = open_clip.get_pretrained_cfg(model, tag)
        keys = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")}
        reference = image_transform_v2(PreprocessCfg(size=size, **keys), is_train=False)
        mine = ImagePreprocess(PreprocessSpec.from_dict({"size": size, **keys}))
        for image in _images()[:4]:
            np.testing.assert_allclose(mine(image), reference(image).numpy(), atol=1e-5, rtol=0, err_msg=tag)


def test_the_tiny_model_is_mobileclip2_s0_shaped() -> None:
    import open_clip

    assert reference_model("fastvit_mci0") == "MobileCLIP2-S0"
    assert reference_model("vit_base_mci_224") == "MobileCLIP2-B"
    for model in MOBILECLIP_MODELS:  # every MobileCLIP config is the argmax-pooled custom text tower
        text_cfg = open_clip.get_model_config(model)["text_cfg"]
        assert text_cfg["context_length"] == 77 and text_cfg.get("pool_type", "argmax") == "argmax"
        assert "hf_tokenizer_name" not in text_cfg


def test_image_embedding_equals_open_clip_encode_image(encoders, runtimes) -> None:
    images = [im.convert("RGB") for im in _images()[:4]]
    runtime = runtimes["S"]["fp32"]
    got = runtime.encode_images(images)
    cos = cosines(got, encoders["S"].encode_images(images))
    assert got.shape == (len(images), 32) and cos.min() >= 0.9999, cos
    np.testing.assert_allclose(runtime.encode_images(images[:1]), got[:1], atol=1e-5, rtol=0)  # batch of one


@pytest.fixture(scope="module")
def built_store(folders, encoders, bundles, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six drawn images built and published with the S folder by the indexer's own pipeline: (images, store)."""
    from indexer.run.pipeline import run_build
    from tests.indexer_support import make_tree, settings

    base = tmp_path_factory.mktemp("built")
    images, store = base / "images", base / "store"
    make_tree(images, 6)
    cache = bundles["S"].directory.parents[1] / "cache"  # the towers exported once, by the bundle fixture
    build = settings(model=f"local-dir:{folders['S']}", pretrained=None, workers=1, onnx_cache_dir=str(cache))
    assert run_build(images, store, build, encoders["S"])["counts"]["indexed"] == 6
    return images, store


def test_a_store_built_with_it_answers_searches_as_open_clip_ranks(encoders, built_store) -> None:
    from fastapi.testclient import TestClient

    from search.artifact.version import open_current
    from search.http.app import create_app
    from search.settings import ReloadSettings, RuntimeSettings, Settings

    _, store = built_store
    query = "a Small red Circle 東京"
    with open_current(store) as artifact:
        assert artifact.manifest.encoder == encoders["S"].identity
        _, want = artifact.exact_search(encoders["S"].encode_texts([query]), 6)
    served = Settings(store=store, reload=ReloadSettings(watch=False), runtime=RuntimeSettings(text_precision="fp32"))
    with TestClient(create_app(served), base_url="http://localhost") as client:
        response = client.get("/search", params={"q": query, "k": 6})
        assert response.status_code == 200, response.text
        assert [hit["id"] for hit in response.json()["hits"]] == want[0].tolist()


def test_the_store_serves_with_torch_timm_and_open_clip_unimportable(built_store, tmp_path: Path) -> None:
    images, store = built_store
    serve_probe_report(store, sorted(images.rglob("*.png"))[0], "a small red circle", tmp_path)


def test_a_checkpoint_file_gets_the_preprocess_its_models_published_weights_agree_on() -> None:
    from indexer.models.clip import checkpoint_preprocess

    openai_mean, openai_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    for model in ("MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP-B", "MobileCLIP2-S0", "MobileCLIP2-B"):
        assert checkpoint_preprocess(model) == {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
                                                "interpolation": "bilinear", "resize_mode": "shortest"}, model
    assert checkpoint_preprocess("MobileCLIP2-S4") == {"mean": openai_mean, "std": openai_std,
                                                       "interpolation": "bilinear", "resize_mode": "shortest"}
    # CLIP's own checkpoints keep open_clip's defaults (so their stores' identities do not change); where the
    # tags disagree (ViT-L-14's mean) nothing is forced
    assert checkpoint_preprocess("ViT-B-32") == {"mean": openai_mean, "std": openai_std, "interpolation": "bicubic",
                                                 "resize_mode": "shortest"}
    assert "mean" not in checkpoint_preprocess("ViT-L-14") and checkpoint_preprocess("photostock-tiny") == {}


def test_load_encoder_applies_it_to_open_clips_transform_and_the_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny CLIP given published MobileCLIP-style weights (one tag in open_clip's own table) and loaded from
    its checkpoint file: open_clip's transform and the published identity both take MobileCLIP's preprocess."""
    from open_clip import pretrained

    from indexer.models.export import preprocess_spec
    from indexer.models.registry import TINY_MODEL_NAME, tiny_checkpoint_path

    plain = load_encoder("tiny", pretrained=str(tiny_checkpoint_path()), device="cpu")
    monkeypatch.setitem(pretrained._PRETRAINED, TINY_MODEL_NAME, {"mobile": pretrained._mccfg(hf_hub="none/none/")})
    mobile = load_encoder("tiny", pretrained=str(tiny_checkpoint_path()), device="cpu")
    assert preprocess_spec(plain).mean != (0.0, 0.0, 0.0) and preprocess_spec(plain).interpolation == "bicubic"
    spec = preprocess_spec(mobile)
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0) and spec.interpolation == "bilinear"
    assert mobile.identity.key != plain.identity.key  # another preprocess is another encoder
    image = _images()[2]
    np.testing.assert_allclose(ImagePreprocess(spec)(image), mobile.preprocess(image).numpy(), atol=1e-5, rtol=0)


def test_publish_refuses_an_export_that_does_not_reproduce_open_clip(encoders, bundles, tmp_path: Path) -> None:
    """A stale export cache (here the causal tower's graph where the bidirectional one's belongs) is caught by
    comparing the graphs with open_clip's own encode_text/encode_image, before any store file is written."""
    import shutil

    from indexer.models.export import export_bundle, export_key
    from search.artifact.bundle import IMAGE_FILE, TEXT_FILE
    from search.artifact.encoder import EncoderNotServableError

    cached = tmp_path / "cache" / export_key(encoders["S"])
    cached.mkdir(parents=True)
    shutil.copyfile(bundles["B"].path(TEXT_FILE), cached / "text.onnx")
    shutil.copyfile(bundles["S"].path(IMAGE_FILE), cached / "image.onnx")
    store = tmp_path / "store"
    with pytest.raises(EncoderNotServableError, match=r"exported text tower .* does not reproduce open_clip's "
                                                      r"encode_text \(cosine 0\.\d+ < 0\.9999\)"):
        export_bundle(encoders["S"], store, cache_dir=tmp_path / "cache")
    assert not (store / "encoders").exists() or not any((store / "encoders").iterdir())
    shutil.copyfile(bundles["S"].path(TEXT_FILE), cached / "text.onnx")  # the right graph passes
    assert export_bundle(encoders["S"], store, cache_dir=tmp_path / "cache").files
