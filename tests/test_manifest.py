"""Artifact area: the manifest's round trip and its refusals (each missing or mistyped field named), and the
sampled digest's geometry on files just below, at and above the sampling size."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from search.artifact import checksums
from search.artifact.checksums import check_file, file_entry, sample_sha256
from search.artifact.encoder import EncoderIdentity
from search.artifact.manifest import (
    ARTIFACT_FILES,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SHARDED_SCHEMA_VERSION,
    ArtifactError,
    EncoderFiles,
    FileEntry,
    IndexInfo,
    Manifest,
    read_manifest,
    write_manifest,
)
from search.artifact.specs import PreprocessSpec, TokenizerSpec

ENCODER = EncoderIdentity(model="tiny", weights="random-init", checksum="abc", dim=8, context_length=16,
                          preprocess={"size": 32})


def _manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = dict(
        schema_version=SCHEMA_VERSION, version="v1", created_at="2026-01-01T00:00:00Z", encoder=ENCODER,
        image_root="/photos", index=IndexInfo(factory="Flat", params={"nprobe": 4}, rerank_candidates=20),
        counts={"vectors": 3}, timings={"encode": 1.5},
        files={name: FileEntry(sha256="0" * 64, bytes=i, sample_sha256="1" * 64 if i else None)
               for i, name in enumerate(ARTIFACT_FILES)},
        encoder_files=EncoderFiles(dir="encoders/k", files={"spec.json": FileEntry("2" * 64, 5)}))
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_write_then_read_gives_the_same_manifest(tmp_path: Path):
    manifest = _manifest()
    path = write_manifest(tmp_path, manifest)
    assert path == tmp_path / MANIFEST_NAME and path.read_text().endswith("}\n")
    assert read_manifest(tmp_path) == manifest
    assert manifest.dim == 8
    assert _manifest(encoder_files=None) == Manifest.from_dict(_manifest(encoder_files=None).to_dict())


def test_the_written_manifest_is_sorted_indented_json(tmp_path: Path):
    text = write_manifest(tmp_path, _manifest()).read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert sorted(data) == ["counts", "created_at", "encoder", "encoder_files", "files", "image_root", "index",
                            "schema_version", "timings", "version"]
    assert data["encoder"] == ENCODER.to_dict()
    assert data["encoder"]["model"] == "tiny" and data["files"]["index.faiss"]["sample_sha256"] is None


def test_from_dict_converts_types():
    data = _manifest().to_dict()
    data["counts"] = {"vectors": "3"}
    data["timings"] = {"encode": "1.5"}
    data["files"]["ids.npy"]["bytes"] = "7"
    data["index"]["unknown_future_field"] = 1  # ignored, not refused
    manifest = Manifest.from_dict(data)
    assert manifest.counts == {"vectors": 3} and manifest.timings == {"encode": 1.5}
    assert manifest.files["ids.npy"].bytes == 7
    assert manifest.index == IndexInfo(factory="Flat", params={"nprobe": 4}, rerank_candidates=20)


def test_a_file_entry_without_a_sample_digest_reads_as_none():
    assert FileEntry.from_dict({"sha256": "a", "bytes": 1}) == FileEntry("a", 1, None)
    assert FileEntry.from_dict({"sha256": "a", "bytes": 1, "sample_sha256": "b"}) == FileEntry("a", 1, "b")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(schema_version=SHARDED_SCHEMA_VERSION + 1), "schema_version 3 is not supported"),
    (lambda d: d.update(schema_version=SHARDED_SCHEMA_VERSION), "malformed: KeyError: 'sharding'"),
    (lambda d: d.pop("schema_version"), "schema_version None is not supported"),
    (lambda d: d.pop("version"), "malformed: KeyError: 'version'"),
    (lambda d: d.pop("created_at"), "malformed: KeyError: 'created_at'"),
    (lambda d: d.pop("image_root"), "malformed: KeyError: 'image_root'"),
    (lambda d: d["encoder"].pop("dim"), "malformed: KeyError: 'dim'"),
    (lambda d: d.update(counts={"vectors": "many"}), "malformed: ValueError"),
    (lambda d: d.update(timings=[1.0]), "malformed: AttributeError"),
    (lambda d: d.update(index=None), "malformed: AttributeError"),
    (lambda d: d.update(counts={"vectors": None}), "malformed: TypeError"),
    (lambda d: d["files"].pop("ids.npy"), "lists no checksum for ids.npy"),
    (lambda d: d["files"].clear(), "lists no checksum for " + ", ".join(ARTIFACT_FILES)),
    (lambda d: d.update(counts={"images": 3}), "^manifest counts lack 'vectors'$"),
    (lambda d: d["encoder_files"].pop("dir"), "malformed: KeyError: 'dir'"),
])
def test_a_malformed_manifest_is_refused_naming_what_is_wrong(mutate, message):
    data = _manifest().to_dict()
    mutate(data)
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(")):
        Manifest.from_dict(data)


def test_a_manifest_that_is_not_an_object_or_not_json_or_absent_is_refused(tmp_path: Path):
    with pytest.raises(ArtifactError, match="^manifest is not a JSON object$"):
        Manifest.from_dict([])  # type: ignore[arg-type]
    with pytest.raises(ArtifactError, match="does not exist"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        read_manifest(tmp_path)


def _sampled_by_hand(data: bytes) -> str:
    """The documented digest: the size (8 bytes, little-endian), then the whole file or the evenly spread blocks."""
    digest = hashlib.sha256(len(data).to_bytes(8, "little"))
    block, blocks = checksums.SAMPLE_BLOCK_BYTES, checksums.SAMPLE_BLOCKS
    if len(data) <= block * blocks:
        digest.update(data)
    else:
        last = len(data) - block
        for i in range(blocks):
            start = last * i // (blocks - 1)
            digest.update(data[start:start + block])
    return digest.hexdigest()


@pytest.mark.parametrize("extra", [-1, 0, 1, 12345])
def test_sample_digest_around_the_sampling_size(tmp_path: Path, extra: int):
    size = checksums.SAMPLE_BLOCKS * checksums.SAMPLE_BLOCK_BYTES + extra
    data = np.random.default_rng(extra + 1).bytes(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sample_sha256(path) == _sampled_by_hand(data)
    entry = file_entry(path)
    assert entry == FileEntry(hashlib.sha256(data).hexdigest(), size, _sampled_by_hand(data))


def test_files_up_to_the_always_hashed_size_are_hashed_whole_above_it_sampled(tmp_path: Path):
    """A file of exactly ALWAYS_HASHED_BYTES is hashed whole at the `size` level; one byte more is not."""
    for size, hashed_whole in ((checksums.ALWAYS_HASHED_BYTES, True), (checksums.ALWAYS_HASHED_BYTES + 1, False)):
        path = tmp_path / f"f{size}.bin"
        path.write_bytes(b"\0" * size)
        entry = file_entry(path)
        wrong = FileEntry(sha256="0" * 64, bytes=entry.bytes, sample_sha256=entry.sample_sha256)
        if hashed_whole:
            with pytest.raises(ArtifactError, match="f.*bin fails its sha256 checksum"):
                check_file(path, wrong, "size", "v1")
        else:
            check_file(path, wrong, "size", "v1")
            check_file(path, wrong, "sampled", "v1")
            with pytest.raises(ArtifactError, match="v1: f.*bin fails its sha256 checksum"):
                check_file(path, wrong, "full", "v1")


def test_the_sampled_level_compares_the_sampled_digest(tmp_path: Path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"\1" * (checksums.ALWAYS_HASHED_BYTES + 10))
    entry = file_entry(path)
    check_file(path, entry, "sampled", "v1")
    wrong = FileEntry(sha256=entry.sha256, bytes=entry.bytes, sample_sha256="0" * 64)
    check_file(path, wrong, "size", "v1")
    check_file(path, wrong, "full", "v1")
    with pytest.raises(ArtifactError, match=r"^v1: big.bin fails its sampled sha256 checksum$"):
        check_file(path, wrong, "sampled", "v1")


def test_size_and_missing_messages_name_the_file_and_both_sizes(tmp_path: Path):
    path = tmp_path / "ids.npy"
    path.write_bytes(b"12345")
    entry = file_entry(path)
    with pytest.raises(ArtifactError, match=r"^v9: ids.npy has 5 bytes, manifest says 6 \(truncated or replaced\?\)$"):
        check_file(path, FileEntry(entry.sha256, 6, entry.sample_sha256), "size", "v9")
    with pytest.raises(ArtifactError, match=r"^v9: nothing.npy is missing \("):
        check_file(tmp_path / "nothing.npy", entry, "full", "v9")
    with pytest.raises(ArtifactError, match="is missing"):
        check_file(tmp_path, entry, "size", "v9")  # a directory is no file


def test_preprocess_spec_round_trip_and_square_shorthand():
    spec = PreprocessSpec(size=(80, 96), resize_mode="squash", interpolation="bilinear", mean=(0.1, 0.2, 0.3),
                          std=(0.4, 0.5, 0.6))
    assert spec.to_dict() == {"size": [80, 96], "resize_mode": "squash", "interpolation": "bilinear",
                              "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    square = PreprocessSpec.from_dict({"size": 64, "resize_mode": "shortest", "interpolation": "bicubic",
                                       "mean": ["0.5", 0.5, 0.5], "std": [1, 1, 1]})
    assert square.size == (64, 64) and square.mean == (0.5, 0.5, 0.5) and square.std == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"resize_mode": "crop"}, "resize mode 'crop' is not supported"),
    ({"size": [64, 80]}, "^resize mode 'shortest' is supported for square input sizes only$"),
    ({"interpolation": "nearest"}, "interpolation 'nearest' is not supported"),
])
def test_preprocess_specs_this_runtime_cannot_reproduce_are_refused(changes, message):
    data = {"size": 64, "resize_mode": "shortest", "interpolation": "bicubic", "mean": [0, 0, 0], "std": [1, 1, 1]}
    data.update(changes)
    with pytest.raises(ValueError, match=message):
        PreprocessSpec.from_dict(data)


def test_tokenizer_spec_round_trip_and_refusal():
    spec = TokenizerSpec(context_length=77, sot_id=1, eot_id=2, clean="lower", pattern="x+",
                         special_tokens={"<start>": 1})
    data = spec.to_dict()
    assert data["kind"] == "open_clip.SimpleTokenizer" and data["special_tokens"] == {"<start>": 1}
    assert TokenizerSpec.from_dict(data) == spec
    del data["kind"]
    data["context_length"], data["special_tokens"] = "77", {"<start>": "1"}
    assert TokenizerSpec.from_dict(data) == spec
    with pytest.raises(ValueError, match="tokenizer kind 'hf' is not supported"):
        TokenizerSpec.from_dict({**data, "kind": "hf"})
