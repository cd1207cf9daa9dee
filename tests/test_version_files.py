"""search/artifact/version.py's reading rules on small published versions: what `current` names, the checks every
part's files pass at the level asked, and the metadata snapshot's reads."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.artifact.bundle import TextSpec
from search.artifact.checksums import file_entry
from search.artifact.manifest import ArtifactError, EncoderFiles, Manifest
from search.artifact.specs import PreprocessSpec, TokenizerSpec
from search.artifact.version import (
    MetadataSnapshot,
    check_version_files,
    current_link,
    current_path,
    current_version,
    open_current,
    open_shard,
    open_version,
)
from tests.artifact_support import clustered, identity, publish, small_config


def _big_file(folder: Path) -> Path:
    """Past checksums.ALWAYS_HASHED_BYTES: the size level reads none of it, the full level all of it."""
    big = folder / "big.bin"
    big.write_bytes(bytes(5 << 20))
    return big


def _flip_unsampled_byte(path: Path) -> None:
    path.chmod(0o644)
    with path.open("r+b") as fh:  # between the first two sampled blocks
        fh.seek(82_000)
        fh.write(b"x")


def test_current_names_the_served_version_or_says_why_not(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert current_link(store) == store / "current"
    assert current_version(store) is None
    with pytest.raises(ArtifactError, match=f"^{store / 'current'} does not exist: no index version has been "
                                            f"published in {store}$"):
        current_path(store)
    published = publish(store, clustered(4, 8), np.arange(1, 5, dtype=np.int64))
    assert current_version(store) == published.name
    assert current_path(store) == published.path.resolve()
    for target in ("versions/missing", "versions"):  # dangling, then a file
        os.remove(current_link(store))
        if target == "versions":
            (store / "a-file").write_text("x")
            target = "a-file"
        os.symlink(target, current_link(store))
        with pytest.raises(ArtifactError, match=f"^{store / 'current'} points to {(store / target).resolve()}, "
                                                "which is not a directory$"):
            current_path(store)
    assert current_version(store) == "a-file"  # it exists: its name, whatever it is
    os.remove(current_link(store))
    os.symlink("versions/missing", current_link(store))
    assert current_version(store) is None


def test_open_refuses_a_non_directory_and_another_encoder(tmp_path: Path) -> None:
    published = publish(tmp_path / "store", clustered(4, 8), np.arange(1, 5, dtype=np.int64))
    with pytest.raises(ArtifactError, match=f"^{tmp_path / 'nothing'} is not a directory$"):
        open_version(tmp_path / "nothing")
    with pytest.raises(ArtifactError, match=f"^version {published.name} was built with another encoder: .*dim"):
        open_version(published.path, expect_encoder=identity(16))


@pytest.mark.parametrize("shards", [1, 2])
def test_every_file_is_checked_at_the_level_asked(tmp_path: Path, shards: int) -> None:
    published = publish(tmp_path / "store", clustered(40, 8), np.arange(1, 41, dtype=np.int64),
                        small_config(shards=shards))
    path, manifest = published.path, published.manifest
    assert check_version_files(path, manifest, "full") is None  # no encoder folder listed: no bundle
    if shards == 1:
        big = _big_file(path.parent)
        manifest = dataclasses.replace(manifest, files={**manifest.files, "../big.bin": file_entry(big)})
        where = f"^version {manifest.version}: big.bin fails its sha256"
    else:
        assert len(manifest.shards) == 2
        part = manifest.shards[1]
        big = _big_file(path.parent)
        listed = dataclasses.replace(part, files={**part.files, "../../big.bin": file_entry(big)})
        manifest = dataclasses.replace(manifest, shards=(manifest.shards[0], listed))
        where = f"^version {manifest.version} shard 1 \\({part.dir}\\): big.bin fails its sha256"
    _flip_unsampled_byte(big)
    check_version_files(path, manifest, "size")
    check_version_files(path, manifest, "sampled")
    with pytest.raises(ArtifactError, match=where):
        check_version_files(path, manifest, "full")


def _encoder_folder(store: Path, manifest: Manifest) -> Path:
    """store/encoders/e with an encoder.json naming the manifest's encoder (the other files: each test's own)."""
    folder = store / "encoders" / "e"
    folder.mkdir(parents=True)
    spec = {"format": 1, "identity": manifest.encoder.to_dict(),
            "tokenizer": TokenizerSpec(16, 1, 2, "lower", "x+", {"<start>": 1}).to_dict(),
            "preprocess": PreprocessSpec((32, 32), "squash", "bilinear", (0.5,) * 3, (0.5,) * 3).to_dict(),
            "text": TextSpec(True, "argmax", 7).to_dict()}
    (folder / "encoder.json").write_text(json.dumps(spec))
    return folder


def test_a_version_with_its_encoder_folder_returns_the_verified_bundle(tmp_path: Path) -> None:
    published = publish(tmp_path / "store", clustered(4, 8), np.arange(1, 5, dtype=np.int64))
    folder = _encoder_folder(tmp_path / "store", published.manifest)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "text.onnx").write_bytes(b"t")
    big = _big_file(folder)
    big.rename(folder / "image.onnx")
    files = EncoderFiles("encoders/e", {f.name: file_entry(f) for f in sorted(folder.iterdir())})
    manifest: Manifest = dataclasses.replace(published.manifest, encoder_files=files)
    bundle = check_version_files(published.path, manifest, "size")
    assert bundle is not None and bundle.directory == folder.resolve()
    _flip_unsampled_byte(folder / "image.onnx")
    check_version_files(published.path, manifest, "size")
    with pytest.raises(ArtifactError, match=f"^version {manifest.version}: encoder file: image.onnx fails"):
        check_version_files(published.path, manifest, "full")


def test_the_metadata_snapshot_reads_rows_in_the_order_asked(tmp_path: Path) -> None:
    ids = np.arange(1, 1203, dtype=np.int64)  # more than two 500-id chunks
    published = publish(tmp_path / "store", clustered(len(ids), 8), ids)
    snapshot = MetadataSnapshot(published.path, published.name)
    assert snapshot.version == published.name
    wanted = [1202, 7, 501, 500, 1001, 1000, 1, 999]
    assert [r["id"] for r in snapshot.metadata(wanted)] == wanted
    assert [r["id"] for r in snapshot.metadata(ids[::-1])] == ids[::-1].tolist()
    assert snapshot.metadata([]) == []
    missing = list(range(2000, 2012))
    with pytest.raises(KeyError, match=rf"ids not in the metadata snapshot of {published.name}: "
                                       rf"\[2000, 2001, 2002, 2003, 2004, 2005, 2006, 2007, 2008, 2009\]'$"):
        snapshot.metadata([5, *missing])
    first = snapshot.conn()
    assert snapshot.conn() is first  # one connection per thread
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        first.execute("DELETE FROM images")
    snapshot.close()
    again = snapshot.conn()
    assert again is not first and [r["id"] for r in snapshot.metadata([3])] == [3]
    snapshot.close()


def test_an_unreadable_snapshot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "metadata.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ArtifactError, match="^version v9: metadata snapshot unreadable \\("):
        MetadataSnapshot(tmp_path, "v9")


def _edit_manifest(version_dir: Path, edit: Any) -> None:
    manifest_file = version_dir / "manifest.json"
    manifest_file.chmod(0o644)
    data = json.loads(manifest_file.read_text())
    edit(data)
    manifest_file.write_text(json.dumps(data))


def test_open_checks_at_the_level_asked_and_carries_the_encoder_bundle(tmp_path: Path) -> None:
    store = tmp_path / "store"
    published = publish(store, clustered(4, 8), np.arange(1, 5, dtype=np.int64))
    folder = _encoder_folder(store, published.manifest)
    for name in ("tokenizer.json", "text.onnx", "image.onnx"):
        (folder / name).write_bytes(name.encode())
    files = {f.name: dataclasses.asdict(file_entry(f)) for f in sorted(folder.iterdir())}
    big = _big_file(published.path)
    _edit_manifest(published.path, lambda d: d.update(
        encoder_files={"dir": "encoders/e", "files": files},
        files={**d["files"], "big.bin": dataclasses.asdict(file_entry(big))}))
    with open_current(store) as artifact:
        assert artifact.encoder_bundle is not None and artifact.encoder_bundle.directory == folder.resolve()
    _flip_unsampled_byte(big)
    open_current(store).close()  # the size level reads none of it
    open_version(published.path, checks="sampled").close()
    with pytest.raises(ArtifactError, match="big.bin fails its sha256"):
        open_current(store, checks="full")
    with pytest.raises(ArtifactError, match="big.bin fails its sha256"):
        open_version(published.path, checks="full")
    with pytest.raises(ArtifactError, match="built with another encoder"):
        open_current(store, expect_encoder=identity(16))


def test_open_shard_checks_its_part_files(tmp_path: Path) -> None:
    plain = publish(tmp_path / "plain", clustered(8, 8), np.arange(1, 9, dtype=np.int64))
    ids_file = plain.path / "ids.npy"
    ids_file.chmod(0o644)
    with ids_file.open("r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(ArtifactError, match=f"^version {plain.name}: ids.npy fails its sha256"):
        open_shard(plain.path, 0)  # a small file is hashed whole at every level
    big = publish(tmp_path / "big", clustered(8, 8), np.arange(1, 9, dtype=np.int64))
    replaced = big.path / "ids.npy"  # 5 MiB listed with its true checksums, then one unsampled byte changed
    replaced.chmod(0o644)
    replaced.write_bytes(bytes(5 << 20))
    _edit_manifest(big.path, lambda d: d["files"].update({"ids.npy": dataclasses.asdict(file_entry(replaced))}))
    _flip_unsampled_byte(replaced)
    with pytest.raises(ArtifactError, match=f"^version {big.name}: ids.npy fails its sha256"):
        open_shard(big.path, 0, checks="full")
    sharded = publish(tmp_path / "sharded", clustered(40, 8), np.arange(1, 41, dtype=np.int64), small_config(shards=2))
    part = sharded.manifest.shards[1]
    shutil.rmtree(sharded.path / part.dir)
    with pytest.raises(ArtifactError, match=f"^version {sharded.name}: shard 1 is missing "
                                            f"\\({sharded.path.resolve() / part.dir} does not exist\\)$"):
        open_shard(sharded.path, 1)
