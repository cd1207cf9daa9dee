"""search/artifact/reload.py without threads or the service: what `reload()` swaps in or refuses, how a lease
pins a version across a swap, and the file stats that decide when a refused version is worth reopening."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.index.publish import PublishedVersion
from search.artifact.checksums import file_entry
from search.artifact.manifest import ArtifactError
from search.artifact.reload import ArtifactHolder, NoIndexError, ReloadOutcome, _current_target, _fingerprint
from search.artifact.version import Artifact, check_version_files, current_link
from tests.artifact_support import clustered, identity, publish

IDS = np.array([3, 6, 9, 12], np.int64)


def _publish(store: Path, seed: int) -> PublishedVersion:
    return publish(store, clustered(len(IDS), 8, clusters=2, seed=seed), IDS)


def _point_current(store: Path, target: str) -> None:
    tmp = store / ".current.test"
    os.symlink(target, tmp)
    os.replace(tmp, current_link(store))


def test_reload_swaps_in_current_and_a_lease_pins_the_version_it_took(tmp_path: Path) -> None:
    store = tmp_path / "store"
    changes: list[ReloadOutcome] = []
    holder = ArtifactHolder(store, identity(8), on_change=changes.append)
    assert holder.version is None
    with pytest.raises(NoIndexError, match="^no index version is loaded$"), holder.lease():
        pass
    first = _publish(store, 1)
    assert holder.reload() == ReloadOutcome(True, first.name)
    assert holder.version == first.name and holder.loaded_path == first.path.resolve()
    assert holder.reload() == ReloadOutcome(False, first.name)  # the same target: nothing reopened
    assert changes == [ReloadOutcome(True, first.name)]
    assert holder.reload(force=True) == ReloadOutcome(True, first.name)  # forced: reopened
    with holder.lease() as old:
        assert old.version == first.name
        old.metadata([3])
        second = _publish(store, 2)
        assert holder.reload() == ReloadOutcome(True, second.name)
        assert holder.version == second.name and holder.loaded_path == second.path.resolve()
        with holder.lease() as inner:
            assert inner.version == second.name  # new leases take the new version
        assert old._connections and old.metadata([6])[0]["id"] == 6  # still open while leased
    assert old._connections == []  # its last lease closed it
    with holder.lease() as served:
        served.metadata([9])
    assert served._connections  # not retired: stays open after its lease
    third = _publish(store, 3)
    assert holder.reload() == ReloadOutcome(True, third.name)
    assert served._connections == []  # retired with no lease: closed at the swap
    with holder.lease() as last:
        last.metadata([12])
    holder.close()
    assert last._connections == [] and holder.version is None
    with pytest.raises(NoIndexError), holder.lease():
        pass
    assert [c.version for c in changes] == [first.name, first.name, second.name, third.name]


def test_close_while_leased_leaves_the_closing_to_the_lease(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _publish(store, 1)
    holder = ArtifactHolder(store)
    holder.reload()
    with holder.lease() as leased:
        leased.metadata([3])
        holder.close()
        assert leased._connections
        assert leased.metadata([3])[0]["id"] == 3
    assert leased._connections == []


def test_a_refused_version_keeps_the_old_one_and_is_retried_only_when_worth_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "store"
    good = _publish(store, 1)
    changes: list[ReloadOutcome] = []
    holder = ArtifactHolder(store, identity(8), on_change=changes.append)
    holder.reload()
    bad = store / "versions" / "broken"
    bad.mkdir(parents=True)
    (bad / "notes.txt").write_text("no manifest here")
    _point_current(store, "versions/broken")
    with caplog.at_level(logging.ERROR, logger="search.artifact.reload"):
        refused = holder.reload()
    assert [m for m in caplog.messages if m.startswith(f"index reload refused, still serving {good.name}: ")]
    assert not refused.loaded and refused.version == good.name and refused.error is not None
    assert "manifest" in refused.error and holder.last_error == refused.error
    assert holder.version == good.name
    assert changes[-1] == refused
    assert holder.reload() == refused and holder.unchanged_skips == 1  # unchanged: not reopened, not reported
    assert holder.reload() == refused and holder.unchanged_skips == 2
    assert len(changes) == 2
    (bad / "notes.txt").write_text("still no manifest, other size")
    assert holder.reload() == ReloadOutcome(False, good.name, holder.last_error)
    assert holder.unchanged_skips == 2 and len(changes) == 3  # a file changed: reopened (and refused again)
    assert holder.reload(force=True).loaded is False and holder.unchanged_skips == 2 and len(changes) == 4
    holder.retry_unchanged_s = 0.0
    holder.reload()
    assert holder.unchanged_skips == 2 and len(changes) == 5  # past the retry interval: reopened
    holder.retry_unchanged_s = 60.0
    second = _publish(store, 2)
    assert holder.reload() == ReloadOutcome(True, second.name) and holder.last_error is None
    _point_current(store, f"versions/{second.name}")
    assert holder.reload() == ReloadOutcome(False, second.name)  # the served one: nothing to do
    with holder.lease() as served:
        assert served.version == second.name
    holder.close()


def test_a_version_of_another_encoder_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    published = _publish(store, 1)
    holder = ArtifactHolder(store, identity(16))
    outcome = holder.reload()
    assert outcome.loaded is False and outcome.version is None
    assert outcome.error is not None and f"version {published.name} was built with another encoder" in outcome.error
    with pytest.raises(NoIndexError, match="another encoder"), holder.lease():
        pass


def test_the_current_target_or_none(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert _current_target(store) is None
    published = _publish(store, 1)
    assert _current_target(store) == published.path.resolve()
    _point_current(store, "versions/missing")
    assert _current_target(store) is None


def test_fingerprint_lists_the_version_its_shards_and_the_encoder_folders(tmp_path: Path) -> None:
    store = tmp_path / "store"
    target = store / "versions" / "v1"
    files = {"versions/v1/b.npy": b"bb", "versions/v1/a.json": b"a", "versions/v1/shard-0001/x": b"xxx",
             "versions/v1/shard-0000/y": b"", "versions/v1/other/z": b"zz", "encoders/k2/text.onnx": b"t",
             "encoders/k1/encoder.json": b"ee", "encoders/loose": b"l", "versions/v2/c": b"c"}
    for name, data in files.items():
        (store / name).parent.mkdir(parents=True, exist_ok=True)
        (store / name).write_bytes(data)
    (target / "shard-0002").write_bytes(b"a file, not a shard folder")

    def stat(name: str) -> tuple[int, int]:
        st = os.stat(store / name)
        return st.st_size, st.st_mtime_ns

    expected = tuple((label, *stat(name)) for label, name in [
        ("v1/a.json", "versions/v1/a.json"), ("v1/b.npy", "versions/v1/b.npy"),
        ("v1/shard-0002", "versions/v1/shard-0002"),
        ("shard-0000/y", "versions/v1/shard-0000/y"), ("shard-0001/x", "versions/v1/shard-0001/x"),
        ("k1/encoder.json", "encoders/k1/encoder.json"), ("k2/text.onnx", "encoders/k2/text.onnx")])
    assert _fingerprint(store, target) == expected
    (tmp_path / "empty").mkdir()
    assert _fingerprint(tmp_path / "empty", tmp_path / "empty") == ()  # no encoders folder: nothing from it


def _with_big_unsampled_change(version_dir: Path) -> None:
    """List a 5 MiB file in the version's manifest, then change one of its bytes that no sample reads: only the
    full check sees it (smaller files are hashed whole at every level)."""
    big = version_dir / "big.bin"
    big.write_bytes(bytes(5 << 20))
    manifest_file = version_dir / "manifest.json"
    manifest_file.chmod(0o644)
    data = json.loads(manifest_file.read_text())
    data["files"]["big.bin"] = dataclasses.asdict(file_entry(big))
    manifest_file.write_text(json.dumps(data))
    with big.open("r+b") as fh:
        fh.seek(82_000)
        fh.write(b"x")


def test_a_light_start_check_is_completed_in_the_background(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "store"
    published = _publish(store, 1)
    plain = ArtifactHolder(store)
    assert (plain.loaded_path, plain.last_error, plain.background_check) == (None, None, "none")
    assert plain.retry_unchanged_s == 60.0
    assert plain.reload().loaded and plain.background_check == "none"  # start level = checks: nothing more
    plain.close()
    clean = ArtifactHolder(store, checks="full", start_checks="size")
    assert clean.reload().loaded
    assert clean.wait_checked(30) and clean.background_check == "passed" and clean.version == published.name
    clean.close()
    _with_big_unsampled_change(published.path)
    refused = ArtifactHolder(store, checks="full")
    assert refused.reload() == ReloadOutcome(False, None, refused.last_error)
    assert refused.last_error is not None and "big.bin fails its sha256" in refused.last_error
    sampled = ArtifactHolder(store, checks="sampled")
    assert sampled.reload().loaded
    sampled.close()
    changes: list[ReloadOutcome] = []
    light = ArtifactHolder(store, checks="full", start_checks="size", on_change=changes.append)
    with caplog.at_level(logging.INFO, logger="search.artifact.reload"):
        assert light.reload() == ReloadOutcome(True, published.name)
        assert light.wait_checked(30)
    assert light.background_check == "failed" and light.version is None
    assert light.last_error is not None and "found by the full check after start; version unloaded" in light.last_error
    assert changes == [ReloadOutcome(True, published.name), ReloadOutcome(False, None, light.last_error)]
    assert f"serving index version {published.name} from {published.path.resolve()} (size checks)" in caplog.messages
    # after a failed background check even the first version is opened at the full level
    assert light.reload(force=True).loaded is False and "big.bin fails its sha256" in str(light.last_error)


def test_admit_and_ann_params_may_refuse_a_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "store"
    published = _publish(store, 1)
    seen: list[Artifact] = []

    def refuse(artifact: Artifact) -> None:
        artifact.metadata([3])
        seen.append(artifact)
        raise ArtifactError("its encoder does not load")

    holder = ArtifactHolder(store, admit=refuse)
    with caplog.at_level(logging.INFO, logger="search.artifact.reload"):
        assert holder.reload() == ReloadOutcome(False, None, "its encoder does not load")
    assert [a.version for a in seen] == [published.name] and seen[0]._connections == []  # closed when refused
    assert "index reload refused, still serving None: its encoder does not load" in caplog.messages

    def crash(artifact: Artifact) -> None:
        raise RuntimeError("boom")

    caplog.clear()
    crashing = ArtifactHolder(store, admit=crash)
    with caplog.at_level(logging.INFO, logger="search.artifact.reload"):
        assert crashing.reload() == ReloadOutcome(False, None, "RuntimeError('boom')")
    assert f"unexpected error opening {store / 'current'}" in caplog.messages
    assert [r.exc_info is not None for r in caplog.records if r.getMessage().startswith("unexpected")] == [True]
    params = ArtifactHolder(store, ann_params={"nprobe": 4})
    outcome = params.reload()
    assert outcome.loaded is False and outcome.error is not None
    assert outcome.error == (f"version {published.name}: configured rank.ann_params do not apply (IndexFlatIP takes no "
                             "search parameters, got ['nprobe'])")
    assert ArtifactHolder(store, ann_params={}).reload().loaded


def test_no_current_version_is_an_outcome_not_an_exception(tmp_path: Path) -> None:
    holder = ArtifactHolder(tmp_path / "store")
    outcome = holder.reload()
    assert outcome.loaded is False and outcome.version is None
    assert outcome.error is not None and "no index version has been published" in outcome.error
    assert holder.reload().error == outcome.error  # no fingerprint to remember: tried again, same answer
    assert holder.unchanged_skips == 0


def test_a_late_check_failure_unloads_only_the_version_it_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "store"
    first = _publish(store, 1)
    gate, entered = threading.Event(), threading.Event()
    real = check_version_files

    def gated(path: Path, manifest: Any, checks: Any) -> Any:
        if path == first.path.resolve():  # hold the background check of the first version at the gate
            entered.set()
            assert gate.wait(30)
        return real(path, manifest, checks)

    monkeypatch.setattr("search.artifact.reload.check_version_files", gated)
    _with_big_unsampled_change(first.path)
    holder = ArtifactHolder(store, checks="full", start_checks="size")
    with caplog.at_level(logging.INFO, logger="search.artifact.reload"):
        assert holder.reload().loaded
        assert entered.wait(30)
        assert holder.background_check == "running" and holder.wait_checked(0) is False
        checkers = [t for t in threading.enumerate() if t.name == "artifact-check"]
        assert len(checkers) == 1 and checkers[0].daemon
        second = _publish(store, 2)
        assert holder.reload() == ReloadOutcome(True, second.name)  # a full check (first was not yet checked)
        gate.set()
        assert holder.wait_checked(30)
    assert (holder.background_check, holder.version) == ("failed", second.name)  # the newer one stays
    assert not [m for m in caplog.messages if "unloaded" in m]
    holder.close()

    caplog.clear()
    gate.clear()
    entered.clear()
    _point_current(store, f"versions/{first.name}")
    alone = ArtifactHolder(store, checks="full", start_checks="size")
    with caplog.at_level(logging.INFO, logger="search.artifact.reload"):
        assert alone.reload().loaded
        assert entered.wait(30)
        with alone.lease() as served:
            pass
        gate.set()
        assert alone.wait_checked(30)
    assert alone.version is None and served._connections == []  # unloaded and closed
    with pytest.raises(NoIndexError, match="found by the full check after start"), alone.lease():
        pass
    unloaded = [m for m in caplog.messages if m.startswith(f"index version {first.name} unloaded: ")]
    assert len(unloaded) == 1 and "big.bin fails its sha256" in unloaded[0]


def test_a_passed_background_check_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "store"
    published = _publish(store, 1)
    holder = ArtifactHolder(store, checks="full", start_checks="size")
    with caplog.at_level(logging.INFO, logger="search.artifact.reload"):
        assert holder.reload().loaded and holder.wait_checked(30)
    assert f"index version {published.name} passed its full checks" in caplog.messages
    holder.close()
