"""File checks at three levels, and the service's start: sampled checks first, the full check in the background."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from search.artifact import checksums
from search.artifact.checksums import check_file, file_entry, sample_sha256
from search.artifact.manifest import ArtifactError, FileEntry
from search.artifact.reload import ArtifactHolder, NoIndexError
from search.artifact.version import current_path
from tests.artifact_support import clustered, publish, small_config

BIG = 20 << 20  # above the always-hashed size: the sampled level reads only its blocks


def _flip(path: Path, offset: int) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _between_samples(size: int) -> int:
    """An offset that no sample block covers (the middle of the gap after the first block)."""
    last = size - checksums.SAMPLE_BLOCK_BYTES
    gap_start = checksums.SAMPLE_BLOCK_BYTES
    gap_end = last // (checksums.SAMPLE_BLOCKS - 1)
    assert gap_end > gap_start, "the file is too small to have gaps between samples"
    return (gap_start + gap_end) // 2


@pytest.fixture()
def big_file(tmp_path: Path) -> tuple[Path, FileEntry]:
    path = tmp_path / "vectors.bin"
    path.write_bytes(np.random.default_rng(0).bytes(BIG))
    return path, file_entry(path)


def test_intact_file_passes_every_level(big_file) -> None:
    path, entry = big_file
    assert entry.bytes == BIG and entry.sample_sha256 and entry.sample_sha256 != entry.sha256
    for level in checksums.CHECK_LEVELS:
        check_file(path, entry, level, "v1")


def test_a_byte_between_samples_is_caught_only_by_the_full_check(big_file) -> None:
    path, entry = big_file
    _flip(path, _between_samples(BIG))
    check_file(path, entry, "size", "v1")
    check_file(path, entry, "sampled", "v1")
    with pytest.raises(ArtifactError, match="v1: vectors.bin fails its sha256"):
        check_file(path, entry, "full", "v1")


@pytest.mark.parametrize("offset", [0, BIG // 2 - 1, BIG - 1])
def test_a_byte_in_a_sample_block_is_caught_by_the_sampled_check(big_file, offset: int) -> None:
    path, entry = big_file
    last = BIG - checksums.SAMPLE_BLOCK_BYTES
    starts = [last * i // (checksums.SAMPLE_BLOCKS - 1) for i in range(checksums.SAMPLE_BLOCKS)]
    if not any(s <= offset < s + checksums.SAMPLE_BLOCK_BYTES for s in starts):
        offset = starts[len(starts) // 2] + 7  # the middle of the file: inside the middle block
    _flip(path, offset)
    check_file(path, entry, "size", "v1")
    with pytest.raises(ArtifactError, match="sampled sha256"):
        check_file(path, entry, "sampled", "v1")


def test_truncated_or_missing_file_fails_every_level(big_file) -> None:
    path, entry = big_file
    with open(path, "r+b") as fh:
        fh.truncate(BIG - 1)
    for level in checksums.CHECK_LEVELS:
        with pytest.raises(ArtifactError, match="truncated"):
            check_file(path, entry, level, "v1")
    path.unlink()
    with pytest.raises(ArtifactError, match="vectors.bin is missing"):
        check_file(path, entry, "size", "v1")


def test_an_entry_without_a_sample_digest_is_hashed_whole_at_the_sampled_level(big_file) -> None:
    """Manifests written before sampled digests existed stay fully protected."""
    path, entry = big_file
    _flip(path, _between_samples(BIG))
    with pytest.raises(ArtifactError, match="fails its sha256"):
        check_file(path, FileEntry(sha256=entry.sha256, bytes=entry.bytes), "sampled", "v1")


def test_small_files_are_hashed_whole_at_every_level(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(b"x" * 5000)
    entry = file_entry(path)
    _flip(path, 2500)
    with pytest.raises(ArtifactError, match="sha256"):
        check_file(path, entry, "size", "v1")


def test_sample_digest_depends_on_the_size(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"\0" * 10)
    b.write_bytes(b"\0" * 11)
    assert sample_sha256(a) != sample_sha256(b)


# -- the service's start ----------------------------------------------------------------------------------
@pytest.fixture()
def small_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sample geometry scaled to a test-sized store: every file is checked by samples, none hashed whole."""
    monkeypatch.setattr(checksums, "ALWAYS_HASHED_BYTES", 0)
    monkeypatch.setattr(checksums, "SAMPLE_BLOCKS", 4)
    monkeypatch.setattr(checksums, "SAMPLE_BLOCK_BYTES", 256)


def _store(tmp_path: Path) -> tuple[Path, np.ndarray]:
    store = tmp_path / "store"
    vectors = clustered(2000, 32, seed=5)
    publish(store, vectors, config=small_config(factory="IVF16,Flat"))
    return store, vectors


def test_start_serves_after_sampled_checks_and_the_background_full_check_passes(tmp_path, small_samples) -> None:
    store, vectors = _store(tmp_path)
    holder = ArtifactHolder(store, checks="full", start_checks="sampled")
    assert holder.reload().loaded
    assert holder.wait_checked(60) and holder.background_check == "passed"
    with holder.lease() as artifact:
        assert artifact.exact_search(vectors[:1], 1)[1][0, 0] == artifact.ids[0]
    holder.close()


def test_start_unloads_a_version_whose_background_full_check_fails(tmp_path, small_samples) -> None:
    store, vectors = _store(tmp_path)
    version = current_path(store)
    victim = version / "vectors.f16.npy"
    version.chmod(stat.S_IRWXU)
    original = tmp_path / "vectors.orig"
    shutil.copy2(victim, original)
    _flip(victim, _between_samples(victim.stat().st_size))
    seen = []
    holder = ArtifactHolder(store, checks="full", start_checks="sampled", on_change=seen.append)
    assert holder.reload().loaded  # the sampled check cannot see this byte: the version serves at once...
    assert holder.wait_checked(60) and holder.background_check == "failed"
    with pytest.raises(NoIndexError, match="sha256"):  # ...until the full check unloads it: 503, never garbage
        with holder.lease():
            pass
    assert holder.version is None and "vectors.f16.npy fails its sha256" in (holder.last_error or "")
    assert seen[-1].error == holder.last_error and not seen[-1].loaded
    assert not holder.reload().loaded  # the watcher does not reopen the same version by itself
    refused = holder.reload(force=True)  # an admin reload now checks it fully before serving
    assert not refused.loaded and "fails its sha256" in (refused.error or "")
    os.replace(original, victim)  # repaired in place
    assert holder.reload(force=True).loaded and holder.background_check == "failed"  # loaded at full checks
    with holder.lease() as artifact:
        assert len(artifact.ids) == len(vectors)
    holder.close()


def test_service_reports_its_background_check_in_readyz(world, tmp_path) -> None:
    """The service's default: sampled checks at start, the full check in the background, shown in /readyz."""
    from fastapi.testclient import TestClient

    from search.http.app import create_app
    from tests.service_support import copy_store, settings_for

    store = copy_store(world, tmp_path / "store")
    settings = settings_for(world, store=store)
    assert settings.reload.verify_checksums and settings.reload.start_checks == "sampled"
    with TestClient(create_app(settings), base_url="http://localhost", client=("127.0.0.1", 5000)) as client:
        holder = client.app.state.service.holder  # type: ignore[attr-defined]
        assert holder.wait_checked(60)
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["background_check"] == "passed" and ready["last_reload_error"] is None
        assert client.get("/search", params={"q": "a red circle"}).status_code == 200
