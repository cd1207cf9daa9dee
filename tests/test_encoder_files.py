"""search/artifact/bundle.py: the encoder folder a manifest lists, verified before a version may open (placeholder
graph bytes: verification checks sizes and checksums, it never runs them)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.artifact.bundle import EncoderBundle, TextSpec, verify_encoder_files
from search.artifact.checksums import file_entry
from search.artifact.encoder import EncoderIdentity
from search.artifact.manifest import ArtifactError, EncoderFiles, FileEntry, Manifest
from search.artifact.specs import PreprocessSpec, TokenizerSpec
from tests.artifact_support import clustered, identity, publish

TOKENIZER = TokenizerSpec(16, 1, 2, "lower", "x+", {"<start>": 1})
PREPROCESS = PreprocessSpec((32, 32), "squash", "bilinear", (0.5,) * 3, (0.5,) * 3)


def _spec(ident: EncoderIdentity, **changes: Any) -> dict[str, Any]:
    spec = {"format": 1, "identity": ident.to_dict(), "tokenizer": TOKENIZER.to_dict(),
            "preprocess": PREPROCESS.to_dict(), "text": TextSpec(True, "argmax", 7).to_dict()}
    spec.update(changes)
    return spec


@pytest.fixture()
def version(tmp_path: Path) -> tuple[Path, Manifest]:
    """A published version (no encoder folder) and, beside it, `encoders/synthetic-0` as the export writes it."""
    published = publish(tmp_path / "store", clustered(4, 8, clusters=1), np.arange(1, 5, dtype=np.int64))
    folder = tmp_path / "store" / "encoders" / "synthetic-0"
    folder.mkdir(parents=True)
    (folder / "encoder.json").write_text(json.dumps(_spec(published.manifest.encoder)))
    for name in ("tokenizer.json", "text.onnx"):
        (folder / name).write_bytes(name.encode())
    (folder / "image.onnx").write_bytes(bytes(5 << 20))  # past checksums.ALWAYS_HASHED_BYTES: sampled at that level
    files = EncoderFiles("encoders/synthetic-0", {f.name: file_entry(f) for f in sorted(folder.iterdir())})
    return published.path, dataclasses.replace(published.manifest, encoder_files=files)


def _with_files(manifest: Manifest, **changes: Any) -> Manifest:
    assert manifest.encoder_files is not None
    return dataclasses.replace(manifest, encoder_files=dataclasses.replace(manifest.encoder_files, **changes))


def test_a_listed_folder_verifies_into_its_bundle(version: tuple[Path, Manifest]) -> None:
    path, manifest = version
    assert manifest.encoder_files is not None
    for level in ("size", "sampled", "full"):
        bundle = verify_encoder_files(path, manifest, level)
        assert bundle is not None
        folder = (path.parent.parent / "encoders" / "synthetic-0").resolve()
        assert bundle.directory == folder and bundle.path("text.onnx") == folder / "text.onnx"
        assert bundle.identity == manifest.encoder
        assert bundle.tokenizer == TOKENIZER and bundle.preprocess == PREPROCESS
        assert bundle.text == TextSpec(True, "argmax", 7)
        assert bundle.files == manifest.encoder_files.files
    assert verify_encoder_files(path, dataclasses.replace(manifest, encoder_files=None), "full") is None


def test_a_folder_outside_the_stores_encoders_is_refused(version: tuple[Path, Manifest]) -> None:
    path, manifest = version
    for outside in ("versions", "encoders/../versions", "../encoders/synthetic-0"):
        with pytest.raises(ArtifactError, match=f"^version {manifest.version}: encoder folder '{outside}' is "
                                                f"outside .*/store/encoders$"):
            verify_encoder_files(path, _with_files(manifest, dir=outside), "size")


def test_every_required_file_must_be_listed(version: tuple[Path, Manifest]) -> None:
    path, manifest = version
    assert manifest.encoder_files is not None
    files = dict(manifest.encoder_files.files)
    for name in ("encoder.json", "tokenizer.json", "text.onnx", "image.onnx"):
        fewer = {k: v for k, v in files.items() if k != name}
        with pytest.raises(ArtifactError, match=f"^version {manifest.version}: manifest lists no encoder file "
                                                f"{name}$"):
            verify_encoder_files(path, _with_files(manifest, files=fewer), "size")
    with pytest.raises(ArtifactError, match="lists no encoder file tokenizer.json, image.onnx$"):
        verify_encoder_files(path, _with_files(manifest, files={"encoder.json": files["encoder.json"],
                                                                "text.onnx": files["text.onnx"]}), "size")


def test_listed_files_are_checked_at_the_level_asked(version: tuple[Path, Manifest]) -> None:
    path, manifest = version
    folder = path.parent.parent / "encoders" / "synthetic-0"
    with (folder / "image.onnx").open("r+b") as fh:  # same size, one byte changed between two sampled blocks
        fh.seek(82_000)
        fh.write(b"x")
    assert verify_encoder_files(path, manifest, "size") is not None
    assert verify_encoder_files(path, manifest, "sampled") is not None
    with pytest.raises(ArtifactError, match=f"^version {manifest.version}: encoder file: image.onnx fails its"):
        verify_encoder_files(path, manifest, "full")
    (folder / "text.int8.onnx").write_bytes(b"int8")
    assert manifest.encoder_files is not None
    listed = {**manifest.encoder_files.files, "text.int8.onnx": FileEntry("0" * 64, 5)}  # optional, still checked
    with pytest.raises(ArtifactError, match="encoder file: text.int8.onnx has 4 bytes, manifest says 5"):
        verify_encoder_files(path, _with_files(manifest, files=listed), "size")


@pytest.mark.parametrize(("spec", "message"), [
    ("not json", r"\(JSONDecodeError: "),
    ({"format": 2}, r"\(ValueError: encoder spec format 2 is not supported \(this reader knows 1\)\)$"),
    ({"format": None}, r"\(ValueError: encoder spec format None is not supported"),
    ({"identity": None}, r"\((TypeError|AttributeError|KeyError): "),
    ({"text": {"pool_type": "argmax"}}, r"\(KeyError: 'trim'\)$"),
    ({"tokenizer": {"kind": "other"}}, r"\(ValueError: tokenizer kind 'other' is not supported"),
])
def test_an_unreadable_spec_is_refused_naming_why(version: tuple[Path, Manifest], spec: Any, message: str) -> None:
    path, manifest = version
    folder = path.parent.parent / "encoders" / "synthetic-0"
    text = spec if isinstance(spec, str) else json.dumps(_spec(manifest.encoder, **spec))
    (folder / "encoder.json").write_text(text)
    assert manifest.encoder_files is not None
    listed = {**manifest.encoder_files.files, "encoder.json": file_entry(folder / "encoder.json")}
    with pytest.raises(ArtifactError, match=f"^version {manifest.version}: encoder spec encoder.json is unreadable "
                                            + message):
        verify_encoder_files(path, _with_files(manifest, files=listed), "size")


def test_a_folder_of_another_encoder_is_refused(version: tuple[Path, Manifest]) -> None:
    path, manifest = version
    folder = path.parent.parent / "encoders" / "synthetic-0"
    (folder / "encoder.json").write_text(json.dumps(_spec(identity(9))))
    assert manifest.encoder_files is not None
    listed = {**manifest.encoder_files.files, "encoder.json": file_entry(folder / "encoder.json")}
    with pytest.raises(ArtifactError, match=f"^version {manifest.version}'s encoder folder encoders/synthetic-0 was "
                                            "built with another encoder: .*dim"):
        verify_encoder_files(path, _with_files(manifest, files=listed), "size")


def test_text_spec_round_trip() -> None:
    plain = TextSpec(trim=False, pool_type="eos", eos_id=None)
    assert plain.to_dict() == {"trim": False, "pool_type": "eos", "eos_id": None}  # no mask_pad_id key
    assert TextSpec.from_dict(plain.to_dict()) == plain
    hf = TextSpec(trim=True, pool_type="mean", eos_id=2, mask_pad_id=0)
    assert hf.to_dict() == {"trim": True, "pool_type": "mean", "eos_id": 2, "mask_pad_id": 0}
    assert TextSpec.from_dict(hf.to_dict()) == hf
    loose = TextSpec.from_dict({"trim": 1, "pool_type": "cls", "eos_id": "3", "mask_pad_id": "1"})
    assert loose == TextSpec(True, "cls", 3, 1) and type(loose.trim) is bool and type(loose.eos_id) is int
    assert type(loose.mask_pad_id) is int
    assert TextSpec.from_dict({"trim": 0, "pool_type": "last"}) == TextSpec(False, "last", None, None)


def test_from_spec_refuses_another_format(tmp_path: Path) -> None:
    spec = _spec(identity(8))
    assert EncoderBundle.from_spec(tmp_path, spec, {}).identity == identity(8)
    with pytest.raises(ValueError, match=r"^encoder spec format '1' is not supported \(this reader knows 1\)$"):
        EncoderBundle.from_spec(tmp_path, {**spec, "format": "1"}, {})
