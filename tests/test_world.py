"""The synthetic world: deterministic, held-out compositions really held out, files the indexer can read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer import cli
from indexer.lab import world
from indexer.lab.evaluation import metrics


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def test_same_seed_same_captions_and_pixels():
    a = [world.gallery_item(3, i, (96, 96)) for i in range(12)]
    b = [world.gallery_item(3, i, (96, 96)) for i in range(12)]
    assert [x.composition.caption for x in a] == [x.composition.caption for x in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(_pixels(x.image), _pixels(y.image))


def test_different_seed_different_world():
    a = [world.gallery_item(0, i, (64, 64)) for i in range(12)]
    b = [world.gallery_item(1, i, (64, 64)) for i in range(12)]
    assert [x.composition.caption for x in a] != [x.composition.caption for x in b]
    assert not np.array_equal(_pixels(a[0].image), _pixels(b[0].image))


def test_unseen_pairs_never_drawn_for_training():
    rng = np.random.default_rng(0)
    drawn = {world.sample_composition(rng, "train") for _ in range(5000)}
    assert not any(c.unseen for c in drawn)
    assert {(c.colour, c.shape) for c in drawn} == {(c.colour, c.shape) for c in world.training_compositions()}
    assert all(not c.unseen for c in world.training_compositions())
    assert len(world.training_compositions()) < len(world.all_compositions())
    # every word of every held-out caption still occurs in training: only the combination is new
    train_words = {w for c in world.training_compositions() for w in c.caption.split()}
    assert all(set(c.caption.split()) <= train_words for c in world.all_compositions() if c.unseen)


def test_training_examples_are_seen_compositions():
    for i in range(50):
        comp, image = world.training_example(0, i, (64, 64))
        assert not comp.unseen
        assert image.size == (64, 64)


def test_trainer_batches_hold_distinct_seen_captions():
    import torch

    from indexer.lab.train import TrainSettings, WorldBatches

    settings = TrainSettings(batch_size=48, steps=2, render_sizes=(32,))
    batches = WorldBatches(settings, preprocess=lambda im: torch.zeros(1), tokenizer=lambda caps: caps)
    unseen = {c.caption for c in world.all_compositions() if c.unseen}
    for step in range(2):
        _, captions = batches[step]
        assert len(captions) == len(set(captions)) == 48  # no false negatives inside a contrastive batch
        assert not unseen.intersection(captions)
    assert batches[1][1] == batches[1][1]  # a batch is a pure function of (seed, step)


def test_gallery_files_metadata_and_queries(tmp_path: Path):
    summary = world.write_world(tmp_path, seed=5, gallery=120, size=(80, 60))
    root = tmp_path / world.GALLERY_DIR
    records = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 120
    suffixes = {Path(r["path"]).suffix for r in records}
    assert suffixes == {".jpg", ".png"}
    assert len({Path(r["path"]).parent for r in records}) == 2  # subfolders of 100
    for r in records:
        assert set(r) == {"path", "caption", "tags", "licence", "popularity"}
        assert "/" in r["path"] and not r["path"].startswith("/")
        with Image.open(root / r["path"]) as im:
            assert im.size == (80, 60)
        assert 0.0 <= r["popularity"] <= 1.0
    queries = [json.loads(line) for line in (tmp_path / world.QUERIES_FILE).read_text().splitlines()]
    assert not (root / world.QUERIES_FILE).exists()  # outside the image folder
    by_caption = {}
    for r in records:
        by_caption.setdefault(r["caption"], []).append(r["path"])
    assert {q["query"]: sorted(q["relevant"]) for q in queries} == {k: sorted(v) for k, v in by_caption.items()}
    assert summary["unseen_queries"] == sum(q["unseen"] for q in queries) > 0
    assert any(not q["unseen"] for q in queries)


def test_world_files_are_byte_identical_for_same_seed(tmp_path: Path):
    world.write_world(tmp_path / "a", seed=2, gallery=20, size=(64, 64))
    world.write_world(tmp_path / "b", seed=2, gallery=20, size=(64, 64))
    for f in sorted((tmp_path / "a").rglob("*")):
        if f.is_file() and f.name != world.WORLD_FILE:
            assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f


def test_photo_like_size_keeps_object_inside_centre_crop():
    item = world.gallery_item(0, 0, (640, 480))
    assert item.image.size == (640, 480)
    pixels = _pixels(item.image).astype(int)
    side_strips = np.concatenate([pixels[:, :80], pixels[:, -80:]], axis=1)
    fill = np.array(world.COLOURS[item.composition.colour])
    # no pixel of the object's colour lies in the strips a square centre crop removes
    assert np.abs(side_strips - fill).sum(axis=2).min() > 45


@pytest.mark.parametrize("text,expected", [("128", (128, 128)), ("640x480", (640, 480))])
def test_parse_size(text, expected):
    assert world.parse_size(text) == expected


@pytest.mark.parametrize("text", ["abc", "0", "10x10", "1x2x3", "100000"])
def test_parse_size_rejects_bad_input(text):
    with pytest.raises(ValueError, match="image size"):
        world.parse_size(text)


def test_world_command(tmp_path: Path, capsys):
    assert cli.main(["world", "--out", str(tmp_path), "--seed", "1", "--gallery", "7", "--size", "48"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["gallery"] == 7
    assert len((tmp_path / world.GALLERY_DIR / "metadata.jsonl").read_text().splitlines()) == 7


def test_world_command_rejects_bad_size(tmp_path: Path, capsys):
    assert cli.main(["world", "--out", str(tmp_path), "--size", "huge"]) == 2
    assert "image size" in capsys.readouterr().err
    assert not (tmp_path / world.GALLERY_DIR).exists()


# ------------------------------------------------------------------------- metrics (pure; used by the bar)


def test_hit_rate_and_recall():
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["q", "r", "s"]]
    relevant = [{"a"}, {"z", "w"}, {"nope"}]
    assert metrics.hit_rate_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)
    assert metrics.hit_rate_at_k(ranked, relevant, 3) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(ranked, relevant, 3) == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics.mean_reciprocal_rank(ranked, relevant) == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_metrics_reject_queries_without_relevant_items():
    with pytest.raises(ValueError, match="relevant"):
        metrics.hit_rate_at_k([["a"]], [set()], 1)
    with pytest.raises(ValueError):
        metrics.hit_rate_at_k([["a"]], [{"a"}, {"b"}], 1)


def test_chance_level_matches_simulation():
    n, rel, k = 50, [1, 3], 5
    exact = metrics.chance_hit_rate_at_k(n, rel, k)
    assert exact == pytest.approx(((k / n) + (1 - (47 * 46 * 45 * 44 * 43) / (50 * 49 * 48 * 47 * 46))) / 2)
    rng = np.random.default_rng(0)
    sims = [metrics.hit_rate_at_k([list(rng.permutation(n))], [set(range(r))], k) for _ in range(4000) for r in rel]
    assert np.mean(sims) == pytest.approx(exact, abs=0.02)


def test_recall_against_exact():
    assert metrics.recall_against_exact([[1, 2, 9]], [[1, 2, 3]], 3) == pytest.approx(2 / 3)


def test_world_rerun_writes_nothing_and_a_rebuild_publishes_nothing(tmp_path: Path):
    """A demo rerun (`world` then `build` again, nothing changed) must leave every file and its mtime alone, so
    the incremental build finds nothing to do and publishes no new version."""
    from tests.indexer_support import run

    out, store = tmp_path / "world", tmp_path / "store"
    first = world.write_world(out, seed=4, gallery=12, size=(32, 32))
    assert first["files_written"] == 12 + 3  # images, metadata.jsonl, queries.jsonl, world.json
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    published = run(out / world.GALLERY_DIR, store)
    assert published["published"]
    again = world.write_world(out, seed=4, gallery=12, size=(32, 32))
    assert again["files_written"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    rebuilt = run(out / world.GALLERY_DIR, store)
    assert not rebuilt["published"] and rebuilt.get("version") in (None, published["version"])
    assert (store / "current").resolve().name == published["version"]
    (out / world.GALLERY_DIR / "part-000" / "img-000003.png").unlink(missing_ok=True)
    (out / world.GALLERY_DIR / "part-000" / "img-000003.jpg").unlink(missing_ok=True)
    assert world.write_world(out, seed=4, gallery=12, size=(32, 32))["files_written"] == 1  # restores only that
