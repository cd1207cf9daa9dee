"""The tiny multilingual model (indexer.lab.tiny_multilingual): committed like the tiny checkpoint, indexed by
`python -m indexer build --model tiny-multilingual`, served from the store without torch, and the held-out
world's queries in en, de, es, ja and ru find the English-captioned photos through the service (R@10 per
language, and the ANN + rerank path against exact search over the same query vectors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from indexer.lab import languages, train, world
from indexer.lab.evaluation.languages_served import served_language_recall
from indexer.models import registry
from tests.indexer_support import REPO, cli

GALLERY = 300  # held-out renders (the evaluation seed, never a training image)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(world folder, store): the model's own build of a held-out world captioned in English only."""
    base = tmp_path_factory.mktemp("multilingual")
    world.write_world(base / "world", seed=train.TrainSettings().eval_seed, gallery=GALLERY, size=(128, 128))
    store = base / "store"
    done = cli("build", "--images", str(base / "world" / world.GALLERY_DIR), "--store", str(store),
               "--model", "tiny-multilingual", "--device", "cpu", "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["indexed"] == GALLERY
    return base / "world", store


def test_committed_folder_is_small_float16_relocatable_and_matches_its_settings() -> None:
    """Otherwise ensure_multilingual_folder() would retrain on every machine."""
    committed = registry.TINY_MULTILINGUAL_DIR / registry.FOLDER_WEIGHTS
    assert committed.stat().st_size < 5 * 2**20
    blob = torch.load(committed, map_location="cpu", weights_only=True)
    floats = [v for v in blob["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert blob["photostock"]["key"] == train.settings_key(train.MULTILINGUAL)
    config = json.loads((registry.TINY_MULTILINGUAL_DIR / registry.CONFIG_FILE).read_text(encoding="utf-8"))
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == registry.HF_MODEL_HERE
    placed = registry.tiny_multilingual_folder()
    assert train.ensure_multilingual_folder() == placed
    placed_config = json.loads((placed / registry.CONFIG_FILE).read_text(encoding="utf-8"))
    assert placed_config["model_cfg"]["text_cfg"]["hf_model_name"] == str(placed)


def test_the_english_model_keeps_its_key() -> None:
    """The language mix is left out of the key at its default, so the committed English checkpoint still holds."""
    info = train.checkpoint_info(registry.TINY_CHECKPOINT)
    assert info is not None and info["key"] == train.settings_key(train.TrainSettings())
    assert train.settings_key(train.MULTILINGUAL) != info["key"]


def test_every_language_finds_the_english_captioned_photos_through_the_service(built) -> None:
    world_dir, store = built
    report = served_language_recall(store, world_dir, k=10)
    print("served relevance per language:", json.dumps(report))
    assert sorted(report) == sorted(languages.LANGUAGES)
    english = report["en"]["served_R@10"]
    for lang, row in report.items():
        assert row["queries"] >= 50, (lang, row)
        assert row["served_R@10"] >= 0.95, (lang, row)
        assert english - row["served_R@10"] <= 0.03, (lang, row)
        assert row["exact_R@10"] - row["served_R@10"] <= 0.005, (lang, row)


def test_the_store_serves_with_torch_and_transformers_unimportable(built, tmp_path: Path) -> None:
    world_dir, store = built
    first = json.loads((world_dir / world.GALLERY_DIR / "metadata.jsonl").read_text().splitlines()[0])
    image = world_dir / world.GALLERY_DIR / first["path"]
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("serve_probe.py")), str(store), str(image),
                          languages.caption("small", "red", "star", "night", "ja")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["text"]["status"] == 200 and report["text"]["hits"], report
    assert report["imported"] == []
