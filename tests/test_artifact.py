"""The artifact reader: refuses bad versions, per-call search parameters, metadata, a text query end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from indexer.index.publish import publish_version
from search.artifact import ann, checksums
from search.artifact.version import ArtifactError, open_current, open_version
from tests.artifact_support import clustered, identity, make_metadata, publish, search_store, small_config

D = 32


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """One IVF version (module-scoped: built once); tests that damage files work on a copy."""
    root = tmp_path_factory.mktemp("art")
    vectors = clustered(2000, D, seed=3)
    pv = publish(root / "store", vectors, config=small_config(factory="IVF32,Flat"))
    return pv.path, vectors


def _copy(version: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(version, dest)
    for f in dest.iterdir():
        f.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return dest


def test_opens_with_full_checksums(published) -> None:
    path, vectors = published
    with open_version(path, checks="full", expect_encoder=identity(D)) as art:
        assert art.vectors.dtype == np.float16 and isinstance(art.vectors, np.memmap)
        assert len(art.ids) == 2000 and art.manifest.index.factory == "IVF32,Flat"
        scores, ids = art.exact_search(vectors[:3], 5)
        assert list(ids[:, 0]) == list(art.ids[:3])


def test_flipped_byte_in_a_small_file_fails_every_open(published, tmp_path: Path) -> None:
    """Files up to 4 MiB are hashed on every open (large ones: tests/test_checksums.py)."""
    path, _ = published
    copy = _copy(path, tmp_path / "v")
    with open(copy / "vectors.f16.npy", "r+b") as fh:
        fh.seek(-7, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-7, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    for level in ("size", "sampled", "full"):
        with pytest.raises(ArtifactError, match="sha256"):
            open_version(copy, checks=level)


@pytest.mark.parametrize("victim", ["index.faiss", "vectors.f16.npy", "ids.npy", "metadata.sqlite"])
def test_truncated_file_is_refused(published, tmp_path: Path, victim: str) -> None:
    copy = _copy(published[0], tmp_path / "v")
    with open(copy / victim, "r+b") as fh:
        fh.truncate((copy / victim).stat().st_size - 10)
    with pytest.raises(ArtifactError, match="truncated"):
        open_version(copy)


def test_missing_file_and_partial_version(published, tmp_path: Path) -> None:
    copy = _copy(published[0], tmp_path / "v")
    (copy / "ids.npy").unlink()
    with pytest.raises(ArtifactError, match="ids.npy is missing"):
        open_version(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="partial"):
        open_version(copy)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(schema_version=99), "schema_version"),
    (lambda m: m.pop("encoder"), "malformed"),
    (lambda m: m["counts"].update(vectors=1999), "expected"),
])
def test_incompatible_or_inconsistent_manifest(published, tmp_path: Path, edit, match: str) -> None:
    copy = _copy(published[0], tmp_path / "v")
    data = json.loads((copy / "manifest.json").read_text())
    edit(data)
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=match):
        open_version(copy)


def test_garbage_index_and_manifest(published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = _copy(published[0], tmp_path / "v")
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="JSON"):
        open_version(copy)
    copy2 = _copy(published[0], tmp_path / "v2")
    size = (copy2 / "index.faiss").stat().st_size
    (copy2 / "index.faiss").write_bytes(b"\0" * size)
    with pytest.raises(ArtifactError, match="index.faiss fails its sha256"):
        open_version(copy2)
    monkeypatch.setattr(checksums, "ALWAYS_HASHED_BYTES", 0)  # as a large index at the size level:
    with pytest.raises(ArtifactError, match="FAISS cannot read"):  # FAISS itself refuses the garbage
        open_version(copy2)


def test_other_encoder_is_refused(published) -> None:
    other = identity(D).__class__(model="other", weights="w", checksum="x", dim=D, context_length=16)
    with pytest.raises(ArtifactError, match="another encoder"):
        open_version(published[0], expect_encoder=other)


def test_no_current_version(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no index version"):
        open_current(tmp_path)


def test_search_parameters_are_per_call(published) -> None:
    path, vectors = published
    with open_version(path) as art:
        ivf_nprobe = art.index.nprobe
        q = vectors[:50] + 0.05 * np.random.default_rng(0).standard_normal((50, D)).astype(np.float32)
        _, truth = art.exact_search(q, 10)
        _, low = art.ann_search(q, 10, params={"nprobe": 1})
        _, high = art.ann_search(q, 10, params={"nprobe": 32})
        assert ann.recall_at_k(low, truth, 10) < ann.recall_at_k(high, truth, 10) == 1.0
        assert art.index.nprobe == ivf_nprobe  # nothing was set on the shared index
        with pytest.raises(ValueError, match="efSearch"):
            art.ann_search(q, 10, params={"efSearch": 10})


def test_search_params_pass_through_a_pretransform() -> None:
    """OPQ/PCA wrap the IVF index in an IndexPreTransform; nprobe must reach the inner index per call."""
    import faiss

    x = np.random.default_rng(5).standard_normal((2000, 64)).astype(np.float32)
    index = faiss.index_factory(64, "PCA32,IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    params = ann.search_parameters(index, {"nprobe": 16})
    assert isinstance(params, faiss.SearchParametersPreTransform)
    _, one = ann.ann_search(index, x[:20], 5, {"nprobe": 1})
    _, all_ = ann.ann_search(index, x[:20], 5, {"nprobe": 16})
    faiss.extract_index_ivf(index).nprobe = 16
    _, reference = index.search(x[:20], 5)
    np.testing.assert_array_equal(all_, reference)
    assert not np.array_equal(one, all_)


def test_metadata_from_several_threads(published) -> None:
    path, _ = published
    with open_version(path) as art:
        ids = art.ids[:400].tolist()

        def read(chunk: list[int]) -> list[int]:
            return [row["id"] for row in art.metadata(chunk)]

        chunks = [ids[i:i + 25] for i in range(0, len(ids), 25)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(read, chunks))
        assert results == chunks
        with pytest.raises(KeyError):
            art.metadata([-5])


def test_text_query_through_the_service_path_with_the_tiny_encoder(tmp_path: Path) -> None:
    from PIL import Image

    from indexer.models.clip import ClipEncoder, load_encoder

    encoder = load_encoder("tiny", pretrained="random", device="cpu")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 0, 0), (255, 255, 255)]
    images = [Image.new("RGB", (48, 48), c) for c in colours]
    for i, im in enumerate(images):
        im.putpixel((i, i), (i * 40, 0, 0))
    vectors = encoder.encode_images(images)
    ids = np.arange(10, 10 + len(images), dtype=np.int64)
    db = make_metadata(tmp_path / "live.sqlite", ids)
    publish_version(tmp_path / "store", ids, vectors, db, encoder.identity, tmp_path,
                    small_config(factory="Flat"), {"indexed": len(ids)}, {})
    hits = search_store(tmp_path / "store", encoder, "a red photo", k=4)
    assert len(hits) == 4
    text = encoder.encode_texts(["a red photo"])[0]
    exact = vectors.astype(np.float16).astype(np.float32) @ text
    expected = np.argsort(-exact, kind="stable")[:4]
    assert [h["id"] for h in hits] == [int(ids[i]) for i in expected]
    assert [h["path"] for h in hits] == [f"img/{int(ids[i]):06d}.jpg" for i in expected]
    for h, i in zip(hits, expected, strict=True):
        assert h["similarity"] == pytest.approx(float(exact[i]), abs=1e-3)
    other = ClipEncoder(encoder.model, encoder.preprocess, encoder.tokenizer,
                        dataclasses.replace(encoder.identity, checksum="f" * 64), encoder.device)
    with pytest.raises(ArtifactError, match="checksum"):  # an index built by another encoder is refused
        search_store(tmp_path / "store", other, "a red photo", k=4)
