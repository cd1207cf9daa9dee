"""HF text towers (open_clip's HFTextEncoder): a random-init XLM-R tower (mean pooler) and an NLLB-style M2M100
encoder (CLS pooler), each from a transformers config written in code with a tokenizer trained here
(indexer.lab.tiny_hf_text), loaded through open_clip's `local-dir:` path, exported with the attention mask as
an input and served by the torch-free runtime: tokens equal open_clip's token for token, embeddings equal
open_clip's `encode_text` (fp32 and int8), cutting a batch after its longest real row equals the full context,
batched equals one by one. Poolers and architectures the runtime does not serve exactly are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from indexer.lab.tiny_hf_text import FAMILIES, write_tiny_hf_text
from indexer.models.clip import load_encoder
from indexer.models.export import export_bundle, hf_text_spec
from search.artifact.bundle import SPEC_FILE, EncoderBundle
from search.artifact.encoder import EncoderNotServableError
from search.runtime.towers import RuntimeEncoder, RuntimeOptions
from tests.text_support import (
    CORPUS,
    cosines,
    exported_bundle,
    micro_batched,
    random_texts,
    runtime_encoders,
    serve_probe_report,
)

POOLS = {"xlm-roberta": "mean", "nllb": "cls"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def folder(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf_text(tmp_path_factory.mktemp("models") / f"tiny-{family}", family, seed=3)


@pytest.fixture(scope="module")
def encoder(folder: Path):
    return load_encoder(f"local-dir:{folder}", device="cpu")


@pytest.fixture(scope="module")
def bundle(encoder, tmp_path_factory: pytest.TempPathFactory) -> EncoderBundle:
    return exported_bundle(encoder, tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def runtime(bundle: EncoderBundle) -> dict[str, RuntimeEncoder]:
    return runtime_encoders(bundle)


def test_folder_loads_an_hf_text_tower_with_the_familys_pooler(encoder, family: str) -> None:
    from open_clip.hf_model import HFTextEncoder

    assert isinstance(encoder.model.text, HFTextEncoder)
    assert encoder.model.text.config.model_type == FAMILIES[family][1]
    assert type(encoder.tokenizer).__name__ == "HFTokenizer" and encoder.context_length == 64


def test_encoder_json_and_graph_take_the_attention_mask(bundle: EncoderBundle, runtime, family: str) -> None:
    assert bundle.text.mask_pad_id == 1 and bundle.text.pool_type == POOLS[family] and bundle.text.trim
    assert bundle.tokenizer.pad_id == 1  # type: ignore[union-attr]
    names = [i.name for i in runtime["fp32"].text.session.get_inputs()]
    assert names == ["tokens", "attention_mask"]
    text = runtime["fp32"].text
    tokens = text.tokenize(["a red circle"])  # full context: mostly padding
    masked = text.session.run(None, {"tokens": tokens, "attention_mask": (tokens != 1).astype(np.int64)})[0]
    unmasked = text.session.run(None, {"tokens": tokens, "attention_mask": np.ones_like(tokens)})[0]
    assert cosines(masked, unmasked).max() < 0.9999  # the graph applies the mask it is given


def test_tokens_equal_open_clip_token_for_token(encoder, runtime) -> None:
    texts = CORPUS + random_texts(200, seed=11)
    expected = np.asarray(encoder.tokenize(texts))
    got = runtime["fp32"].text.tokenize(texts)
    assert got.shape == expected.shape == (len(texts), 64)
    for text, want, have in zip(texts, expected, got, strict=True):
        assert have.tolist() == want.tolist(), text


@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.9999), ("int8", 0.995)])
def test_service_embedding_equals_open_clip_encode_text(encoder, runtime, precision: str, floor: float) -> None:
    texts = CORPUS + random_texts(40, seed=7)
    assert runtime[precision].precision == precision
    cos = cosines(runtime[precision].encode_texts(texts), encoder.encode_texts(texts))
    assert cos.min() >= floor, (precision, float(cos.min()), texts[int(cos.argmin())])


def test_cutting_after_the_longest_real_row_equals_the_full_context(runtime) -> None:
    text = runtime["fp32"].text
    tokens = text.tokenize(["a small red circle", "red", "東京の夜景 مرحبا 😀", "", "Mixed CASE e\u0301"])
    cut = text.feeds(tokens)
    assert cut["tokens"].shape[1] == int(text.lengths(tokens).max()) < 64
    full = {"tokens": tokens, "attention_mask": (tokens != 1).astype(np.int64)}
    np.testing.assert_allclose(text.session.run(None, cut)[0], text.session.run(None, full)[0], atol=1e-5, rtol=0)


def test_mixed_lengths_in_one_batch_equal_one_by_one(runtime) -> None:
    text = runtime["fp32"].text
    batched = text.encode(CORPUS)
    alone = np.concatenate([text.encode([t]) for t in CORPUS])
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)


def test_micro_batcher_equals_one_by_one(runtime) -> None:
    text = runtime["fp32"].text
    got, calls = micro_batched(text, CORPUS)
    np.testing.assert_allclose(got, np.concatenate([text.encode([t]) for t in CORPUS]), atol=1e-5, rtol=0)
    assert calls and max(shape[0] for shape in calls) > 1  # mixed lengths really shared a batch


def test_the_torch_reference_backend_serves_the_family_too(encoder, runtime) -> None:
    from indexer.models.towers import TorchTextEncoder

    torch_text = TorchTextEncoder(encoder)
    assert torch_text.trim and torch_text.mask_pad_id == 1
    np.testing.assert_allclose(torch_text.encode(CORPUS), runtime["fp32"].text.encode(CORPUS), atol=1e-5, rtol=0)
    for text in CORPUS:
        assert torch_text._tokenizer.encode(text) == runtime["fp32"].text.tokenizer.encode(text), text


def test_a_tokenizer_padding_with_another_id_is_fed_whole(encoder) -> None:
    """open_clip masks the config's pad id only: padding with another id is part of the model, so no cut."""
    other = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0))
    spec = hf_text_spec(encoder.model.text, other)
    assert not spec.trim and spec.mask_pad_id == 1


def test_a_max_pooler_folder_is_refused_at_publish_before_any_file(tmp_path: Path) -> None:
    folder = write_tiny_hf_text(tmp_path / "tiny-max", "xlm-roberta", pooler="max_pooler")
    encoder = load_encoder(f"local-dir:{folder}", device="cpu")
    store = tmp_path / "store"
    with pytest.raises(EncoderNotServableError, match="pooler MaxPooler cannot be served exactly"):
        export_bundle(encoder, store, cache_dir=tmp_path / "cache")
    assert not (store / "encoders").exists() or not any((store / "encoders").iterdir())


def test_an_unchecked_architecture_is_refused_with_the_reason(tmp_path: Path) -> None:
    from open_clip.hf_model import HFTextEncoder
    from transformers import BertConfig

    BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=40).save_pretrained(str(tmp_path))
    tower = HFTextEncoder(str(tmp_path), output_dim=8, pooler_type="cls_pooler", pretrained=False)
    with pytest.raises(EncoderNotServableError, match="architecture 'bert'"):
        hf_text_spec(tower, None)


def _build_store(base: Path, family: str) -> tuple[Path, Path, Path]:
    """`python -m indexer build --model local-dir:DIR` (a tiny `family` tower) over six drawn images:
    (folder, images, store)."""
    from tests.indexer_support import cli, make_tree

    folder = write_tiny_hf_text(base / f"tiny-{family}", family, seed=4)
    images, store = base / "images", base / "store"
    make_tree(images, 6)
    built = cli("build", "--images", str(images), "--store", str(store), "--model", f"local-dir:{folder}",
                "--device", "cpu", "--batch-size", "4", "--workers", "1")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["counts"]["indexed"] == 6
    return folder, images, store


@pytest.fixture(scope="module")
def built_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """`python -m indexer build --model local-dir:DIR` (XLM-R tower) over six drawn images: (folder, images, store)."""
    return _build_store(tmp_path_factory.mktemp("built"), "xlm-roberta")


def test_an_hf_tower_store_serves_with_torch_and_transformers_unimportable(built_store, tmp_path: Path) -> None:
    _, images, store = built_store
    serve_probe_report(store, sorted(images.rglob("*.png"))[0], "a small red circle 東京", tmp_path)


def test_the_service_ranks_as_open_clip_does(built_store) -> None:
    from fastapi.testclient import TestClient

    from search.artifact.version import open_current
    from search.http.app import create_app
    from search.settings import ReloadSettings, RuntimeSettings, Settings

    folder, _, store = built_store
    encoder = load_encoder(f"local-dir:{folder}", device="cpu")
    settings = Settings(store=store, reload=ReloadSettings(watch=False), runtime=RuntimeSettings(text_precision="fp32"))
    query = "ein kleiner roter Kreis 東京"
    with open_current(store) as artifact:
        assert artifact.manifest.encoder == encoder.identity
        _, want = artifact.exact_search(encoder.encode_texts([query]), 6)
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        response = client.get("/search", params={"q": query, "k": 6})
        assert response.status_code == 200, response.text
        assert [hit["id"] for hit in response.json()["hits"]] == want[0].tolist()


def test_a_copied_folder_missing_its_tokenizer_fails_naming_it(tmp_path: Path, built_store) -> None:
    from search.artifact.encoder import WeightsUnavailableError

    folder, _, _ = built_store
    broken = shutil.copytree(folder, tmp_path / "broken")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(WeightsUnavailableError, match="missing tokenizer.json"):
        load_encoder(f"local-dir:{broken}", device="cpu")


def test_configured_pool_members_and_the_solo_session_feed_the_mask(runtime, bundle: EncoderBundle) -> None:
    from search.runtime.members import build_members
    from search.settings import EncoderSettings, PoolMemberSettings
    from search.state import ServiceEncoder

    text = ServiceEncoder(EncoderSettings(), RuntimeOptions(text_precision="fp32"), encoder=runtime["fp32"])
    configs = [PoolMemberSettings(precision="fp32"), PoolMemberSettings(precision="int8")]
    tokens = runtime["fp32"].text.tokenize(CORPUS)
    cut = tokens[:, : int(runtime["fp32"].text.lengths(tokens).max())]
    want = runtime["fp32"].text.encode(CORPUS)
    fp32, int8 = build_members(text, configs, max_batch=8)
    np.testing.assert_allclose(fp32.run(cut), want, atol=1e-5, rtol=0)
    assert cosines(int8.run(cut), want).min() >= 0.995
    (own,) = build_members(text, [], max_batch=8, solo_threads=2)
    assert own.solo is not None
    np.testing.assert_allclose(own.solo(cut), want, atol=1e-5, rtol=0)


# -- source language (NLLB) ---------------------------------------------------------------------------------
LANGUAGE_CASES = [("de", "deu_Latn"), ("ja-JP", "jpn_Jpan"), ("zh", "zho_Hans"), ("zh-TW", "zho_Hant"),
                  ("zh-Hant-HK", "zho_Hant"), ("ar", "arb_Arab"), ("ru", "rus_Cyrl"), ("pt-BR", "por_Latn"),
                  ("es_ES", "spa_Latn"), ("deu_Latn", "deu_Latn"), ("sr", "srp_Cyrl"), ("fa", "pes_Arab"),
                  ("deu", "deu_Latn")]


@pytest.fixture(scope="module")
def nllb(tmp_path_factory: pytest.TempPathFactory):
    folder = write_tiny_hf_text(tmp_path_factory.mktemp("models") / "tiny-nllb", "nllb", seed=3)
    encoder = load_encoder(f"local-dir:{folder}", device="cpu")
    store = tmp_path_factory.mktemp("nllb-store")
    files = export_bundle(encoder, store, cache_dir=store / "cache")
    directory = store / files.dir
    bundle = EncoderBundle.from_spec(directory, json.loads((directory / SPEC_FILE).read_text()), dict(files.files))
    return encoder, RuntimeEncoder.load(bundle, RuntimeOptions(text_precision="fp32"))


@pytest.mark.parametrize(("tag", "code"), LANGUAGE_CASES)
def test_bcp47_tags_resolve_to_nllb_codes(nllb, tag: str, code: str) -> None:
    from search.runtime.languages import resolve_language

    _, runtime_encoder = nllb
    assert resolve_language(tag, runtime_encoder.languages) == code


@pytest.mark.parametrize("tag", ["xx", "klingon", "tlh", "de--", "", "en-\u00e9", "sr-Latn", "sr-Zzzz"])
def test_an_unknown_language_is_refused_with_the_reason(nllb, tag: str) -> None:
    from search.runtime.languages import resolve_language

    _, runtime_encoder = nllb
    with pytest.raises(ValueError, match="lang"):
        resolve_language(tag, runtime_encoder.languages)


def test_a_code_the_tokenizer_does_not_take_fails_that_query_and_keeps_the_session(nllb) -> None:
    """A source-language code handed straight to the batcher (as a fleet's query-encoder call may) that NLLB's
    tokenizer does not hold: that query gets a ValueError naming it, the session stays in the pool."""
    import asyncio

    from search.runtime.batcher import MicroBatcher

    _, runtime_encoder = nllb
    batcher = MicroBatcher(runtime_encoder.text, calibrate=False)

    async def run() -> list[object]:
        return list(await asyncio.gather(batcher.encode("a red circle", "xxx_Zzzz"),
                                         batcher.encode("a red circle", "deu_Latn"), return_exceptions=True))
    try:
        bad, good = asyncio.run(run())
        assert batcher.ready and all(m.healthy for m in batcher.pool.members)
    finally:
        batcher.close()
    assert isinstance(bad, ValueError) and "xxx_Zzzz" in str(bad)
    from search.runtime.tokenizer import LangText

    want = runtime_encoder.text.encode_token_ids(runtime_encoder.text.tokenize([LangText("a red circle", "deu_Latn")]))
    np.testing.assert_allclose(good, want[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("code", ["eng_Latn", "deu_Latn", "jpn_Jpan", "arb_Arab", "zho_Hant"])
def test_tokens_and_embedding_in_a_source_language_equal_nllbs(nllb, code: str) -> None:
    """transformers' NllbTokenizer with `src_lang` (what NLLB-CLIP's language means) and open_clip's tower."""
    import torch

    from search.runtime.tokenizer import LangText

    encoder, runtime_encoder = nllb
    assert runtime_encoder.default_language == "eng_Latn" and len(runtime_encoder.languages) == 202
    texts = CORPUS + random_texts(60, seed=13)
    hf = encoder.tokenizer.tokenizer
    try:
        hf.src_lang = code
        want = np.asarray(encoder.tokenizer(texts))
    finally:
        hf.src_lang = "eng_Latn"
    got = runtime_encoder.text.tokenize([LangText(t, code) for t in texts])
    for text, expected, have in zip(texts, want, got, strict=True):
        assert have.tolist() == expected.tolist(), text
    assert (got[:, 0] == hf.convert_tokens_to_ids(code)).all()  # the CLS pooler reads the language token
    with torch.inference_mode():
        reference = encoder.model.encode_text(torch.as_tensor(want), normalize=True).numpy()
    assert cosines(runtime_encoder.text.encode_token_ids(got), reference).min() >= 0.9999


def test_a_language_changes_nllbs_tokens_and_a_model_without_languages_ignores_it(runtime, family: str) -> None:
    from search.runtime.tokenizer import LangText

    text = runtime["fp32"].text
    german, plain = text.tokenize([LangText("a red circle", "deu_Latn"), "a red circle"]).tolist()
    assert bool(runtime["fp32"].languages) == (family == "nllb")
    assert (german == plain) == (family != "nllb")


@pytest.fixture(scope="module")
def nllb_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder, _, store = _build_store(tmp_path_factory.mktemp("built-nllb"), "nllb")
    return folder, store


def test_lang_on_the_search_routes(nllb_store, built_store) -> None:
    """NLLB: `lang` picks the source language (ranking as open_clip's tower in that language), the default is
    the model's own, an unknown tag is 422, and each language has its own cache entry. XLM-R ignores it."""
    import torch
    from fastapi.testclient import TestClient

    from search.artifact.version import open_current
    from search.http.app import create_app
    from search.settings import ReloadSettings, RuntimeSettings, Settings

    folder, store = nllb_store
    encoder = load_encoder(f"local-dir:{folder}", device="cpu")
    query = "ein roter Kreis"
    wants = {}
    with open_current(store) as artifact:
        for code in ("eng_Latn", "deu_Latn"):
            encoder.tokenizer.tokenizer.src_lang = code
            with torch.inference_mode():
                vector = encoder.model.encode_text(encoder.tokenizer([query]), normalize=True).numpy()
            wants[code] = artifact.exact_search(vector, 6)[1][0].tolist()
    encoder.tokenizer.tokenizer.src_lang = "eng_Latn"
    settings = Settings(store=store, reload=ReloadSettings(watch=False), runtime=RuntimeSettings(text_precision="fp32"))
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        default = client.get("/search", params={"q": query, "k": 6})
        german = client.get("/search", params={"q": query, "k": 6, "lang": "de-DE"})
        assert default.status_code == german.status_code == 200, (default.text, german.text)
        assert [h["id"] for h in default.json()["hits"]] == wants["eng_Latn"]
        assert [h["id"] for h in german.json()["hits"]] == wants["deu_Latn"]
        assert german.json()["cache"] == "miss"  # not the default language's cached vector
        scores = [[h["similarity"] for h in r.json()["hits"]] for r in (default, german)]
        assert scores[0] != scores[1]
        english = client.get("/search", params={"q": query, "k": 6, "lang": "en"})
        assert english.json()["cache"] == "hit"  # the default named explicitly shares the default's entry
        posted = client.post("/search", json={"query": query, "k": 6, "lang": "de"})
        assert posted.status_code == 200 and posted.json()["cache"] == "hit"
        assert [h["id"] for h in posted.json()["hits"]] == wants["deu_Latn"]
        for bad in ("xx", "tlh", "x" * 40):
            refused = client.get("/search", params={"q": query, "lang": bad})
            assert refused.status_code == 422 and "lang" in refused.text, refused.text
        assert client.post("/search", json={"query": query, "lang": "xx"}).status_code == 422

    _, _, xlmr = built_store
    xlmr_settings = Settings(store=xlmr, reload=ReloadSettings(watch=False),
                             runtime=RuntimeSettings(text_precision="fp32"))
    with TestClient(create_app(xlmr_settings), base_url="http://localhost") as client:
        plain = client.get("/search", params={"q": query, "k": 6})
        ignored = client.get("/search", params={"q": query, "k": 6, "lang": "xx"})
        assert plain.status_code == ignored.status_code == 200
        assert ignored.json()["hits"] == plain.json()["hits"] and ignored.json()["cache"] == "hit"


def test_nllbs_legacy_template_puts_the_language_last_and_equals_transformers(tmp_path: Path) -> None:
    from open_clip.tokenizer import HFTokenizer

    from indexer.models.export import tokenizer_spec, write_tokenizer
    from search.artifact.specs import HFTokenizerSpec
    from search.runtime.tokenizer import HFTextTokenizer, LangText

    folder = write_tiny_hf_text(tmp_path / "tiny-nllb", "nllb")
    reference = HFTokenizer(str(folder), context_length=64, legacy_behaviour=True)
    spec = tokenizer_spec(reference)
    assert isinstance(spec, HFTokenizerSpec) and spec.language_position == "suffix"
    write_tokenizer(reference, tmp_path / "tokenizer.json")
    mine = HFTextTokenizer.load(HFTokenizerSpec.from_dict(spec.to_dict()), tmp_path / "tokenizer.json")
    texts = CORPUS + random_texts(40, seed=17)
    for code in ("eng_Latn", "kor_Hang", "heb_Hebr"):
        reference.tokenizer.src_lang = code
        assert mine([LangText(t, code) for t in texts]).tolist() == reference(texts).numpy().tolist(), code


def test_a_changed_local_hf_text_config_is_another_encoder(folder: Path, encoder, tmp_path: Path) -> None:
    """The transformers config `hf_model_name` points at is part of the identity (the export cache is keyed
    by it): changing it alone is another encoder."""
    other = shutil.copytree(folder, tmp_path / folder.name)
    config = json.loads((other / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = str(other)
    (other / "open_clip_config.json").write_text(json.dumps(config))
    first = load_encoder(f"local-dir:{other}", device="cpu").identity.key
    hf = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**hf, "layer_norm_eps": 1e-6}))
    assert load_encoder(f"local-dir:{other}", device="cpu").identity.key != first
