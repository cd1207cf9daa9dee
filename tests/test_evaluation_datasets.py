"""Dataset loaders: Karpathy-format Flickr30k / COCO files (the fixture in tests/fixtures/karpathy) and the
synthetic world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.lab import world
from indexer.lab.evaluation import datasets
from indexer.lab.evaluation.datasets import DatasetError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "karpathy"
FLICKR = FIXTURES / "dataset_flickr30k.json"
COCO = FIXTURES / "dataset_coco.json"


def composition_of(caption: str) -> world.Composition:
    """The fixture's captions use the world's grammar: 'a SIZE COLOUR SHAPE on a BACKGROUND background'."""
    words = caption.lower().rstrip(".").split()
    return world.Composition(size=words[1], colour=words[2], shape=words[3], background=words[6])


def write_karpathy_images(annotations: Path, root: Path, size: int = 64) -> list[str]:
    """Render each fixture image from its first caption and save it where the annotations say it is."""
    written = []
    for i, entry in enumerate(json.loads(annotations.read_text())["images"]):
        rel = "/".join(p for p in (entry.get("filepath"), entry["filename"]) if p)
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        comp = composition_of(entry["sentences"][0]["raw"])
        world.render(comp, world.image_rng(7, 9, i), (size, size)).save(target, format="JPEG", quality=90)
        written.append(rel)
    return written


def test_flickr_test_split(tmp_path: Path) -> None:
    write_karpathy_images(FLICKR, tmp_path)
    ds = datasets.load_karpathy(FLICKR, tmp_path, "test")
    assert ds.name == "flickr30k"
    assert ds.images == ("1000092795.jpg", "10002456.jpg", "1000268201.jpg", "1000344755.jpg")
    assert len(ds.queries) == 7  # every sentence of every test image is one query
    assert ds.queries[0].text == "a large red circle on a grass background"
    assert all(len(q.relevant) == 1 for q in ds.queries)
    assert ds.queries[1].relevant == {"1000092795.jpg"}  # the second sentence of the first image
    assert ds.image_groups == {}


def test_flickr_other_splits(tmp_path: Path) -> None:
    write_karpathy_images(FLICKR, tmp_path)
    assert datasets.load_karpathy(FLICKR, tmp_path, "val").images == ("1000366164.jpg",)
    assert datasets.load_karpathy(FLICKR, tmp_path, "train").queries[0].relevant == {"1000523639.jpg"}


def test_coco_paths_include_filepath(tmp_path: Path) -> None:
    write_karpathy_images(COCO, tmp_path)
    ds = datasets.load_karpathy(COCO, tmp_path, "test")
    assert ds.name == "coco"
    assert ds.images == ("val2014/COCO_val2014_000000391895.jpg", "val2014/COCO_val2014_000000522418.jpg")
    assert len(ds.queries) == 3
    assert datasets.load_karpathy(COCO, tmp_path, "restval").images == ("val2014/COCO_val2014_000000184613.jpg",)


def test_missing_images_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="4 of 4 images .* e.g. 1000092795.jpg"):
        datasets.load_karpathy(FLICKR, tmp_path, "test")
    assert len(datasets.load_karpathy(FLICKR, tmp_path, "test", check_files=False).images) == 4


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ('{"annotations": []}', "expected an object with an 'images' list"),
    ('{"images": [{"split": "test", "sentences": [{"raw": "x"}]}]}', "has no 'filename'"),
    ('{"images": [{"filename": "a.jpg", "split": "test", "sentences": []}]}', "has no 'sentences'"),
    ('{"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"tokens": []}]}]}', "without 'raw'"),
    ('{"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "x"}]}]}', "no images in split"),
    ('{"images": [{"filename": "a.jpg", "filepath": "..", "split": "test", "sentences": [{"raw": "x"}]}]}',
     "leaves the image root"),
])
def test_malformed_annotations(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "dataset_bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        datasets.load_karpathy(path, tmp_path, "test", check_files=False)


def test_unknown_split_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown split 'testing'"):
        datasets.load_karpathy(FLICKR, tmp_path, "testing")
    with pytest.raises(DatasetError, match="not found"):
        datasets.load_karpathy(tmp_path / "absent.json", tmp_path)


def test_materialize_split_holds_only_the_split(tmp_path: Path) -> None:
    write_karpathy_images(COCO, tmp_path / "coco")
    ds = datasets.load_karpathy(COCO, tmp_path / "coco", "test")
    out = datasets.materialize_split(ds, tmp_path / "split")
    files = sorted(str(p.relative_to(tmp_path / "split")) for p in (tmp_path / "split").rglob("*") if p.is_file())
    assert files == sorted(ds.images)
    assert out.image_root == tmp_path / "split" and out.queries == ds.queries


def test_world_loader(tmp_path: Path) -> None:
    summary = world.write_world(tmp_path, seed=3, gallery=40, size=(32, 32))
    ds = datasets.load_world(tmp_path)
    assert ds.name == "world" and len(ds.images) == 40 and len(ds.queries) == summary["queries"]
    assert sum(q.unseen for q in ds.queries) == summary["unseen_queries"]
    for q in ds.queries:  # image->image: the other images with the same caption
        for path in q.relevant:
            assert ds.image_groups[path] == q.relevant - {path}
    assert ds.limit(5).queries == ds.queries[:5]
    with pytest.raises(DatasetError, match="queries.jsonl not found"):
        datasets.load_world(tmp_path / "gallery")
