"""Index/publish area: the steps of a publish on their own (no index build): input checks before anything is
written, version names and order, the atomic `current` flip, pruning of versions and encoder folders, removal
of what a killed publish left, the metadata snapshot, and the float16 shards the indexer keeps."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from indexer.index import publish
from indexer.index.index_select import IndexConfig
from indexer.index.publish import (
    flip_current,
    list_versions,
    new_version_name,
    prune_encoders,
    prune_versions,
    publish_version,
    remove_temporaries,
    snapshot_metadata,
)
from indexer.storage import shards
from search.artifact.encoder import EncoderIdentity
from search.artifact.manifest import (
    ARTIFACT_FILES,
    SCHEMA_VERSION,
    EncoderFiles,
    FileEntry,
    IndexInfo,
    Manifest,
    read_manifest,
    write_manifest,
)
from search.artifact.version import current_version

ENCODER = EncoderIdentity(model="synthetic", weights="none", checksum="0" * 8, dim=4, context_length=16)


def _unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 4))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT)")
    conn.executemany("INSERT INTO images VALUES (?, ?)", [(i, f"img/{i}.jpg") for i in range(1, 4)])
    conn.commit()
    conn.close()
    return path


def _version(store: Path, name: str, encoder_dir: str | None = None) -> Path:
    """A published-looking version folder (read-only files, a manifest naming its encoder folder)."""
    path = store / publish.VERSIONS_DIR / name
    path.mkdir(parents=True)
    files = {f: FileEntry("0" * 64, 0) for f in ARTIFACT_FILES}
    write_manifest(path, Manifest(SCHEMA_VERSION, name, "t", ENCODER, "/", IndexInfo("Flat"), {"vectors": 0}, {},
                                  files, EncoderFiles(encoder_dir, {}) if encoder_dir else None))
    (path / "sub").mkdir()
    (path / "sub" / "f").write_text("x")
    for p in (path / "manifest.json", path / "sub" / "f"):
        p.chmod(stat.S_IRUSR)
    (path / "sub").chmod(stat.S_IRUSR | stat.S_IXUSR)
    path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return path


def _encoder_folder(store: Path) -> EncoderFiles:
    """A store's encoder folder as the export writes it (`encoders/<key>`: the spec, tokenizer and ONNX files; the
    graphs here are placeholder bytes, which publishing only checksums)."""
    from search.artifact.bundle import TextSpec
    from search.artifact.checksums import file_entry
    from search.artifact.specs import PreprocessSpec, TokenizerSpec

    folder = store / "encoders" / "synthetic-0"
    folder.mkdir(parents=True)
    spec = {"format": 1, "identity": ENCODER.to_dict(),
            "tokenizer": TokenizerSpec(16, 1, 2, "lower", "x+", {"<start>": 1}).to_dict(),
            "preprocess": PreprocessSpec((32, 32), "squash", "bilinear", (0.5,) * 3, (0.5,) * 3).to_dict(),
            "text": TextSpec(True, "argmax", None).to_dict()}
    (folder / "encoder.json").write_text(json.dumps(spec))
    for name in ("tokenizer.json", "text.onnx", "image.onnx"):
        (folder / name).write_bytes(name.encode())
    return EncoderFiles("encoders/synthetic-0", {f.name: file_entry(f) for f in sorted(folder.iterdir())})


# -- input checks: a clear ValueError before anything is written ---------------------------------------------
@pytest.mark.parametrize(("ids", "vectors", "message"), [
    (np.array([[1, 2]]), _unit(2), "ids must be a 1-D integer array"),
    (np.array([1.0, 2.0]), _unit(2), "ids must be a 1-D integer array, got float64"),
    (np.array([1, 2]), _unit(3), r"vectors \(3, 4\) must be \(len\(ids\)=2, dim\)"),
    (np.array([1, 2]), _unit(2)[:, 0], "must be"),
    (np.array([], np.int64), np.zeros((0, 4), np.float32), "^nothing to publish: no vectors$"),
    (np.array([1, 2]), np.ones((2, 3), np.float32) / np.sqrt(3), "dimension 3, encoder synthetic has 4"),
    (np.array([3, 1, 3, 2, 1]), _unit(5), r"duplicate ids: \[1, 3\]"),
    (np.array([1, 1, 2]), _unit(3), r"duplicate ids: \[1\]"),  # already in order
    (np.arange(24) // 2, _unit(24), r"^duplicate ids: \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]$"),  # the first ten
    (np.array([1, 2]), np.array([[1, 0, 0, 0], [np.nan, 0, 0, 0]], np.float32), "^vectors contain NaN or infinity$"),
    (np.array([1, 2]), np.array([[1, 0, 0, 0], [np.inf, 0, 0, 0]], np.float32), "NaN or infinity"),
    (np.array([5, 7]), np.array([[1, 0, 0, 0], [0.5, 0, 0, 0]], np.float32), "id 7 has norm 0.5000"),
    (np.array([7, 5]), np.array([[1, 0, 0, 0], [1.5, 0, 0, 0]], np.float32), "id 5 has norm 1.5000"),
    (np.array([1, 2]), np.array([[1, 0, 0, 0], [300, 0, 0, 0]], np.float32), "id 2 has norm 300.0000"),  # not inf
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path, ids, vectors, message):
    store = tmp_path / "store"
    with pytest.raises(ValueError, match=message):
        publish_version(store, ids, vectors, _db(tmp_path / "live.sqlite"), ENCODER, tmp_path, IndexConfig(),
                        {}, {})
    assert not store.exists()


def test_a_missing_metadata_database_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="metadata database .*nope.sqlite does not exist"):
        publish_version(tmp_path / "store", np.array([1]), _unit(1), tmp_path / "nope.sqlite", ENCODER, tmp_path,
                        IndexConfig(), {}, {})


def test_inputs_come_back_sorted_by_id_as_int64_float16():
    vectors = _unit(4)
    near = np.array([[0.0, 0.0, 0.0, 1.015]], np.float32)  # inside the float16 rounding tolerance
    ids, stored = publish._validate_inputs(np.array([40, 10, 30, 20], np.int32), vectors, ENCODER, Path(__file__))
    assert ids.dtype == np.int64 and ids.tolist() == [10, 20, 30, 40]
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored, vectors[[1, 3, 2, 0]].astype(np.float16))
    one, kept = publish._validate_inputs(np.array([9]), near, ENCODER, Path(__file__))
    assert one.tolist() == [9] and kept.dtype == np.float16
    ordered, same = publish._validate_inputs(np.array([1, 2, 3, 4]), vectors, ENCODER, Path(__file__))
    np.testing.assert_array_equal(same, vectors.astype(np.float16))
    for given, expected in (([1, 3, 2], [0, 2, 1]), ([2, 1], [1, 0])):
        got_ids, got = publish._validate_inputs(np.array(given), vectors[:len(given)], ENCODER, Path(__file__))
        assert got_ids.tolist() == sorted(given)
        np.testing.assert_array_equal(got, vectors[expected].astype(np.float16))


@pytest.mark.parametrize("row", [65536, 65537])  # the first and the second row of the second block
def test_norms_are_checked_past_the_first_block(tmp_path: Path, row: int):
    vectors = np.zeros((65536 + 2, 4), np.float32)
    vectors[:, 0] = 1.0
    vectors[row, 0] = 0.5
    with pytest.raises(ValueError, match=f"id {row + 1} has norm 0.5000"):
        publish._validate_inputs(np.arange(1, 65536 + 3), vectors, ENCODER, Path(__file__))


# -- names, listing, the current link ---------------------------------------------------------------------
def test_version_names_sort_by_utc_time_and_are_unique():
    at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    name = new_version_name(at)
    assert name.startswith("20260304T050607.891011Z-") and len(name) == len("20260304T050607.891011Z-") + 6
    same_instant = new_version_name(at.astimezone(timezone(timedelta(hours=2))))
    assert same_instant[:24] == name[:24] and same_instant != name
    later = new_version_name(at + timedelta(microseconds=1))
    assert sorted([later, name]) == [name, later]


def test_version_names_are_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
        assert new_version_name(at).startswith("20260304T050607.000000Z-")
        assert new_version_name(at.astimezone()).startswith("20260304T050607.000000Z-")  # given in local time
    finally:
        monkeypatch.undo()
        time.tzset()


def test_list_versions_oldest_first_without_temporaries_or_files(tmp_path: Path):
    store = tmp_path / "store"
    assert list_versions(store) == []
    root = store / publish.VERSIONS_DIR
    for name in ("b", "a", ".tmp-c", "c"):
        (root / name).mkdir(parents=True)
    (root / "d").write_text("a file")
    assert list_versions(store) == ["a", "b", "c"]


def test_flip_current_points_at_the_version_relatively_and_leaves_no_temporary_link(tmp_path: Path):
    store = tmp_path / "store"
    first = _version(store, "v1")
    flip_current(store, first)
    assert os.readlink(store / "current") == "versions/v1" and current_version(store) == "v1"
    flip_current(store, _version(store, "v2"))
    assert current_version(store) == "v2"
    assert sorted(p.name for p in store.iterdir()) == ["current", "versions"]


def test_flip_current_onto_a_directory_fails_cleanly(tmp_path: Path):
    store = tmp_path / "store"
    version = _version(store, "v1")
    (store / "current").mkdir()
    (store / "current" / "x").write_text("not empty")
    with pytest.raises(OSError):
        flip_current(store, version)
    assert sorted(p.name for p in store.iterdir()) == ["current", "versions"]


# -- pruning ----------------------------------------------------------------------------------------------
def test_prune_keeps_the_newest_and_the_current_one(tmp_path: Path):
    store = tmp_path / "store"
    for name in ("v1", "v2", "v3", "v4", "v5"):
        _version(store, name)
    flip_current(store, store / publish.VERSIONS_DIR / "v1")
    assert prune_versions(store, keep=2) == ["v2", "v3"]
    assert list_versions(store) == ["v1", "v4", "v5"]
    assert prune_versions(store, keep=1) == ["v4"]
    assert prune_versions(store, keep=1) == []
    assert list_versions(store) == ["v1", "v5"]
    with pytest.raises(ValueError, match="^keep must be at least 1$"):
        prune_versions(store, keep=0)


def test_prune_without_a_current_version_keeps_exactly_keep(tmp_path: Path):
    store = tmp_path / "store"
    for name in ("v1", "v2", "v3"):
        _version(store, name)
    assert prune_versions(store, keep=1) == ["v1", "v2"]
    assert list_versions(store) == ["v3"]


def test_prune_encoders_removes_only_folders_no_version_lists(tmp_path: Path):
    store = tmp_path / "store"
    assert prune_encoders(store) == []
    encoders = store / "encoders"
    for name in ("used", "unused", ".partial"):
        (encoders / name).mkdir(parents=True)
    (encoders / "stray-file").write_text("x")
    _version(store, "v1", encoder_dir="encoders/used")
    _version(store, "v2")
    assert prune_encoders(store) == ["unused"]
    assert sorted(p.name for p in encoders.iterdir()) == [".partial", "stray-file", "used"]


def test_prune_encoders_keeps_everything_when_a_manifest_is_unreadable(tmp_path: Path):
    store = tmp_path / "store"
    (store / "encoders" / "unused").mkdir(parents=True)
    _version(store, "v1", encoder_dir="encoders/used")
    (store / publish.VERSIONS_DIR / "v2").mkdir()  # no manifest
    assert prune_encoders(store) == []
    assert (store / "encoders" / "unused").is_dir()


def test_remove_temporaries_clears_what_a_killed_publish_left(tmp_path: Path):
    store = tmp_path / "store"
    assert remove_temporaries(store) == []
    versions = store / publish.VERSIONS_DIR
    _version(store, "v1")
    tmp_dir = versions / ".tmp-x-1"
    tmp_dir.mkdir()
    (tmp_dir / "ids.npy").write_text("x")
    (tmp_dir / "ids.npy").chmod(stat.S_IRUSR)
    tmp_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
    (versions / ".tmp-file").write_text("x")
    os.symlink("v1", versions / ".tmp-link")
    os.symlink("versions/v1", store / ".current.abcd")
    (store / ".current.plain").write_text("not a link: left alone")
    removed = remove_temporaries(store)
    assert removed == ["versions/.tmp-file", "versions/.tmp-link", "versions/.tmp-x-1", ".current.abcd"]
    assert sorted(p.name for p in versions.iterdir()) == ["v1"]
    assert (versions / "v1" / "sub" / "f").read_text() == "x"  # the link's target was not followed
    assert (store / ".current.plain").exists()


# -- metadata snapshot ------------------------------------------------------------------------------------
def test_metadata_snapshot_is_a_complete_rollback_journal_copy(tmp_path: Path):
    live = _db(tmp_path / "live.sqlite")
    writer = sqlite3.connect(live)
    writer.execute("INSERT INTO images VALUES (9, 'img/9.jpg')")
    writer.commit()  # still in the WAL, not yet checkpointed
    snapshot_metadata(live, tmp_path / "copy.sqlite")
    writer.close()
    copy = sqlite3.connect(f"{(tmp_path / 'copy.sqlite').as_uri()}?mode=ro", uri=True)
    assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in copy.execute("SELECT id FROM images ORDER BY id")] == [1, 2, 3, 9]
    copy.close()
    assert not (tmp_path / "copy.sqlite-wal").exists()


def test_takedowns_travel_into_the_version(tmp_path: Path):
    store, version = tmp_path / "store", tmp_path / "v"
    store.mkdir()
    version.mkdir()
    publish._copy_takedowns(store, version)
    assert list(version.iterdir()) == []
    (store / "takedowns.json").write_text(json.dumps({"ids": [3]}))
    publish._copy_takedowns(store, version)
    assert json.loads((version / "takedowns.json").read_text()) == {"ids": [3]}


def test_arrays_are_written_as_npy_in_blocks(tmp_path: Path):
    vectors = np.zeros((65536 + 3, 4), np.float16)
    vectors[:, 1] = 1.0
    vectors[-1] = [0, 0, 1, 0]
    ids = np.arange(len(vectors), dtype=np.int64)
    publish._write_arrays(tmp_path, ids, vectors)
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), ids)
    stored = np.load(tmp_path / "vectors.f16.npy")
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored, vectors)


# -- shards -----------------------------------------------------------------------------------------------
def test_shard_round_trip_and_gather_in_id_order(tmp_path: Path):
    assert shards.shard_name(7) == "00000007"
    vectors = _unit(5)
    tmp_path = tmp_path / "store" / "shards"  # created on the first write, parents too
    shards.write_shard(tmp_path, "a", np.array([50, 10, 30], np.int32), vectors[:3].astype(np.float64))
    shards.write_shard(tmp_path, "b", np.array([20, 40]), vectors[3:])
    assert shards.open_ids(tmp_path, "a").dtype == np.int64
    assert shards.open_vectors(tmp_path, "b").dtype == np.float16
    assert isinstance(shards.open_ids(tmp_path, "a"), np.memmap)  # shards are memory-mapped, never read whole
    assert isinstance(shards.open_vectors(tmp_path, "a"), np.memmap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.f16.npy", "a.ids.npy", "b.f16.npy", "b.ids.npy"]
    refs = [(50, "a", 0), (20, "b", 0), (10, "a", 1), (40, "b", 1), (30, "a", 2)]
    ids, gathered = shards.gather(tmp_path, refs, dim=4)
    assert ids.tolist() == [10, 20, 30, 40, 50] and gathered.dtype == np.float16
    np.testing.assert_array_equal(gathered, vectors[[1, 3, 2, 4, 0]].astype(np.float16))
    empty_ids, empty = shards.gather(tmp_path, [], dim=4)
    assert empty_ids.dtype == np.int64 and empty.shape == (0, 4)
    with pytest.raises(ValueError, match="shard c: 2 ids for 1 vectors"):
        shards.write_shard(tmp_path, "c", np.array([1, 2]), vectors[:1])


def test_debris_and_deleted_shards_are_removed(tmp_path: Path):
    assert shards.remove_debris(tmp_path / "absent", set()) == []
    vectors = _unit(2)
    for name in ("00000001", "00000002"):
        shards.write_shard(tmp_path, name, np.array([1, 2]), vectors)
    (tmp_path / "00000001.f16.npy.tmp").write_text("half written")
    (tmp_path / "00000003.ids.npy").write_text("unnamed by the database")
    assert shards.remove_debris(tmp_path, {"00000001", "00000002"}) == ["00000001.f16.npy.tmp", "00000003.ids.npy"]
    shards.delete_shards(tmp_path, ["00000001", "00000009"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000002.f16.npy", "00000002.ids.npy"]


# -- a whole publish (a 3-vector Flat index: about half a second) -------------------------------------------
def _config(**changes: object) -> IndexConfig:
    return IndexConfig.from_dict({"factory": "Flat", "recall_queries": 10, "latency_queries": 5,
                                  "rerank_candidates": [5], "keep_versions": 1, **changes})


def test_publish_writes_a_complete_read_only_version_then_flips_current_and_prunes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import time

    from search.artifact.checksums import file_entry

    store, db = tmp_path / "store", _db(tmp_path / "live.sqlite")
    store.mkdir()
    (store / "takedowns.json").write_text(json.dumps({"schema": 1, "generation": 1, "active": {}, "history": []}))
    (store / "encoders" / "stale").mkdir(parents=True)
    vectors = _unit(3)
    started = time.perf_counter()
    with caplog.at_level("INFO", logger=publish.log.name):
        first = publish_version(store, np.array([3, 1, 2]), vectors, db, ENCODER, tmp_path, _config(),
                                {"indexed": 3, "failed": "0"}, {"encode_s": 0.5})
    elapsed = time.perf_counter() - started
    assert caplog.messages == [f"published {first.name} (Flat, recall@10 1.0000) and pruned []"]
    assert first.path == store / "versions" / first.name and current_version(store) == first.name
    assert list_versions(store) == [first.name] and first.pruned == ()
    assert not (store / "encoders" / "stale").exists()  # no version lists it
    manifest = first.manifest
    assert (manifest.version, manifest.schema_version, manifest.encoder) == (first.name, SCHEMA_VERSION, ENCODER)
    assert manifest.image_root == str(tmp_path.resolve()) and manifest.encoder_files is None
    assert manifest.counts == {"indexed": 3, "failed": 0, "vectors": 3}
    assert manifest.timings["encode_s"] == 0.5 and 0 < manifest.timings["publish_s"] <= elapsed
    assert {"index_build_s", "index_tune_s"} <= set(manifest.timings)
    assert datetime.fromisoformat(manifest.created_at).utcoffset() == timedelta(0)
    index = manifest.index
    assert (index.factory, index.metric, index.recall_at_10, index.recall_queries) == ("Flat", "ip", 1.0, 3)
    assert index.selection["target_met"] is True and index.selection["kind"] == "flat" and index.tuning
    assert index.bytes_per_vector > 0 and "p50" in index.latency_ms
    assert (index.params, index.rerank_candidates, index.recall_at_10_raw) == ({}, 10, 1.0)
    for name in ARTIFACT_FILES:
        assert manifest.files[name] == file_entry(first.path / name)
    assert np.load(first.path / "ids.npy").tolist() == [1, 2, 3]
    np.testing.assert_array_equal(np.load(first.path / "vectors.f16.npy"), vectors[[1, 2, 0]].astype(np.float16))
    assert json.loads((first.path / "takedowns.json").read_text())["generation"] == 1
    assert {stat.S_IMODE(p.stat().st_mode) for p in first.path.iterdir()} == {0o444}
    second = publish_version(store, np.array([1, 2]), vectors[:2], db, ENCODER, tmp_path, _config(), {}, {})
    assert second.pruned == (first.name,) and list_versions(store) == [second.name]
    assert current_version(store) == second.name and second.manifest.counts == {"vectors": 2}
    assert sorted(p.name for p in (store / "versions").iterdir()) == [second.name]


def test_a_failed_publish_leaves_current_and_the_versions_folder_as_they_were(tmp_path: Path):
    store, db = tmp_path / "store", _db(tmp_path / "live.sqlite")
    good = publish_version(store, np.array([1, 2]), _unit(2), db, ENCODER, tmp_path, _config(), {}, {})
    with pytest.raises(RuntimeError):
        publish_version(store, np.array([1, 2]), _unit(2), db, ENCODER, tmp_path, _config(factory="NoSuchIndex"),
                        {}, {})
    assert current_version(store) == good.name
    assert sorted(p.name for p in (store / "versions").iterdir()) == [good.name]


def test_a_tuned_index_carries_its_chosen_figures_into_the_manifest(tmp_path: Path):
    """An IVF-PQ index (Flat's figures are IndexInfo's defaults): the manifest holds the tuning's chosen search
    parameters, rerank depth, recalls and latency, all different from those defaults."""
    vectors = np.random.default_rng(0).standard_normal((300, 4))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    config = _config(factory="IVF4,PQ2x4", recall_queries=20, rerank_candidates=[12, 40],
                     budget={"target_recall": 0.9})
    version = publish_version(tmp_path / "store", np.arange(1, 301), vectors, _db(tmp_path / "live.sqlite"),
                              ENCODER, tmp_path, config, {}, {})
    index = read_manifest(version.path).index
    assert index.factory == "IVF4,PQ2x4" and index.params and index.params.keys() == {"nprobe"}
    chosen = [t for t in index.tuning if (t["params"], t["rerank_candidates"]) ==
              (index.params, index.rerank_candidates)]
    assert len(chosen) == 1, index.tuning
    assert (index.recall_at_10, index.recall_at_10_raw, index.latency_ms) == \
        (chosen[0]["recall_at_10"], chosen[0]["recall_at_10_raw"], chosen[0]["latency_ms"])
    assert index.rerank_candidates in (12, 40) and index.recall_at_10_raw < index.recall_at_10 < 1.0
    assert index.recall_queries == 20 and index.selection["target_met"] is True


def test_a_publish_killed_while_building_leaves_only_a_temporary_that_remove_temporaries_clears(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """What a SIGKILL during the index build leaves (the store copied at that moment): one `versions/.tmp-<name>-*`
    folder that no listing counts as a version and remove_temporaries removes."""
    store, killed = tmp_path / "store", tmp_path / "killed"
    build = publish._build_into

    def build_then_copy(folder: Path, config: IndexConfig) -> object:
        built = build(folder, config)
        shutil.copytree(store, killed, symlinks=True)
        return built

    monkeypatch.setattr(publish, "_build_into", build_then_copy)
    version = publish_version(store, np.array([1, 2]), _unit(2), _db(tmp_path / "live.sqlite"), ENCODER, tmp_path,
                              _config(), {}, {})
    assert list_versions(killed) == [] and current_version(killed) is None
    (left,) = remove_temporaries(killed)
    assert left.startswith(f"versions/.tmp-{version.name}-"), left
    assert list((killed / "versions").iterdir()) == []


def test_a_sharded_publish_writes_each_part_by_the_rule_and_sums_the_parts_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    import time

    from search.artifact.checksums import file_entry
    from search.artifact.manifest import SHARDED_SCHEMA_VERSION, shard_dir_name
    from search.artifact.shards import SHARD_RULE, shard_of

    vectors = np.random.default_rng(2).standard_normal((400, 4))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(1, 401)
    config = _config(factory="IVF4,PQ2x4", recall_queries=20, rerank_candidates=[12, 40],
                     budget={"target_recall": 0.95}, shards=2)  # seeded: the parts tune to different figures
    encoder_files = _encoder_folder(tmp_path / "store")
    built: list[dict[str, float]] = []
    build = publish.build_index

    def build_and_note(*args: object, **kwargs: object) -> object:
        done = build(*args, **kwargs)  # type: ignore[arg-type]
        built.append(done.timings)
        return done

    monkeypatch.setattr(publish, "build_index", build_and_note)
    started = time.perf_counter()
    with caplog.at_level("INFO", logger=publish.log.name):
        version = publish_version(tmp_path / "store", ids[::-1], vectors[::-1], _db(tmp_path / "live.sqlite"),
                                  ENCODER, tmp_path, config, {"indexed": 400}, {"encode_s": 1.0}, encoder_files)
    elapsed = time.perf_counter() - started
    manifest = read_manifest(version.path)
    assert manifest.version == version.name and datetime.fromisoformat(manifest.created_at).utcoffset() == timedelta(0)
    assert len(built) == 2 and {f"index_{k}" for k in built[0]} <= set(manifest.timings)
    for key in built[0]:  # each part's build and tuning time, summed
        assert manifest.timings[f"index_{key}"] == pytest.approx(sum(b[key] for b in built))
    assert manifest.encoder_files == encoder_files and (tmp_path / "store" / encoder_files.dir).is_dir()
    assert {stat.S_IMODE(p.stat().st_mode) for p in version.path.rglob("*") if p.is_file()} == {0o444}
    whole, parts = manifest.index, [entry.index for entry in manifest.shards]
    assert caplog.messages == [f"published {version.name} (IVF4,PQ2x4, 2 shards, recall@10 "
                               f"{whole.recall_at_10:.4f}) and pruned []"]
    assert manifest.schema_version == SHARDED_SCHEMA_VERSION
    assert manifest.sharding == {"rule": SHARD_RULE, "shards": 2} and len(manifest.shards) == 2
    owner = shard_of(ids, 2)
    for shard, entry in enumerate(manifest.shards):
        folder = version.path / entry.dir
        assert entry.dir == shard_dir_name(shard) and entry.vectors == int((owner == shard).sum()) > 0
        assert np.load(folder / "ids.npy").tolist() == ids[owner == shard].tolist()  # ascending, by the rule
        np.testing.assert_array_equal(np.load(folder / "vectors.f16.npy"), vectors[owner == shard].astype(np.float16))
        assert entry.files == {f: file_entry(folder / f) for f in ("index.faiss", "vectors.f16.npy", "ids.npy")}
        assert entry.index.factory == "IVF4,PQ2x4" and entry.index.params
    # the whole version's summary: what a search over every part asks, and the worst part's figures
    assert len({p.params["nprobe"] for p in parts}) == len({p.recall_at_10_raw for p in parts}) == 2
    assert (whole.factory, whole.metric, whole.tuning) == ("IVF4,PQ2x4", "ip", [])
    assert whole.params == {"nprobe": max(p.params["nprobe"] for p in parts)}
    assert whole.rerank_candidates == max(p.rerank_candidates for p in parts)
    assert whole.recall_at_10 == min(p.recall_at_10 for p in parts) < 1.0
    assert whole.recall_at_10_raw == min(p.recall_at_10_raw for p in parts)
    assert whole.recall_queries == sum(p.recall_queries for p in parts) == 40
    assert whole.latency_ms == {k: max(p.latency_ms[k] for p in parts) for k in parts[0].latency_ms}
    assert whole.bytes_per_vector == pytest.approx(
        sum(p.bytes_per_vector * e.vectors for p, e in zip(parts, manifest.shards, strict=True)) / 400)
    assert whole.selection == {**parts[0].selection, "shards": 2, "target_met": True}  # part 0's, for 2 parts
    assert manifest.counts == {"indexed": 400, "vectors": 400} and manifest.encoder == ENCODER
    assert manifest.files == {"metadata.sqlite": file_entry(version.path / "metadata.sqlite")}
    assert manifest.timings["encode_s"] == 1.0 and 0 < manifest.timings["publish_s"] <= elapsed
    assert manifest.image_root == str(tmp_path.resolve())


def test_a_sharded_publish_takes_part_0s_chosen_factory_for_every_part(tmp_path: Path):
    """Part 0 (3500 vectors) is too slow to scan within 5 us and gets a graph; part 1 (300) alone would be Flat,
    but every part of a version shares part 0's factory."""
    from search.artifact.shards import shard_of

    candidates = np.arange(1, 8001)
    owner = shard_of(candidates, 2)
    ids = np.concatenate([candidates[owner == 0][:3500], candidates[owner == 1][:300]])
    config = _config(factory=None, shards=2, budget={"latency_ms": 0.005}, recall_queries=20)
    version = publish_version(tmp_path / "store", ids, _unit(len(ids)), _db(tmp_path / "live.sqlite"), ENCODER,
                              tmp_path, config, {}, {})
    first, second = [entry.index for entry in read_manifest(version.path).shards]
    assert first.factory == second.factory == "HNSW32"
    assert first.selection["reason"].startswith("exact search too slow")
    assert second.selection["reason"] == f"part 0's choice ({first.selection['reason']})"


def test_too_many_shards_for_the_vectors_is_refused_before_anything_is_written(tmp_path: Path):
    store = tmp_path / "store"
    from search.artifact.shards import shard_of

    empty = sorted(set(range(8)) - set(shard_of(np.array([1, 2, 3]), 8).tolist()))
    message = f"8 shards for 3 vectors leaves shard(s) {empty} empty: use fewer shards"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        publish_version(store, np.array([1, 2, 3]), _unit(3), _db(tmp_path / "live.sqlite"), ENCODER, tmp_path,
                        _config(shards=8), {}, {})
    assert not store.exists()
    with pytest.raises(ValueError, match=r"^2 shards for 1 vectors leaves shard\(s\) \[[01]\] empty"):
        publish_version(store, np.array([1]), _unit(1), _db(tmp_path / "one.sqlite"), ENCODER, tmp_path,
                        _config(shards=2), {}, {})
    assert not store.exists()


def test_a_version_lists_its_encoder_folder_which_pruning_then_keeps(tmp_path: Path):
    store = tmp_path / "store"
    encoder_files = _encoder_folder(store)
    version = publish_version(store, np.array([1, 2]), _unit(2), _db(tmp_path / "live.sqlite"), ENCODER, tmp_path,
                              _config(), {}, {}, encoder_files)
    assert read_manifest(version.path).encoder_files == encoder_files
    assert sorted(p.name for p in (store / encoder_files.dir).iterdir()) == sorted(encoder_files.files)


def test_a_version_whose_bytes_change_before_the_final_check_is_never_published(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The last step before the rename reads every byte back against the manifest's checksums (a same-size
    change that a size check would pass): the publish fails and `current` stays where it was."""
    from search.artifact import checksums
    from search.artifact.manifest import ArtifactError

    store, db = tmp_path / "store", _db(tmp_path / "live.sqlite")
    good = publish_version(store, np.array([1, 2]), _unit(2), db, ENCODER, tmp_path, _config(), {}, {})
    copy_takedowns = publish._copy_takedowns

    def copy_then_damage(store_: Path, version_dir: Path) -> None:
        copy_takedowns(store_, version_dir)
        path = version_dir / "vectors.f16.npy"
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF  # the last row's value: same size
        path.write_bytes(bytes(data))

    monkeypatch.setattr(publish, "_copy_takedowns", copy_then_damage)
    monkeypatch.setattr(checksums, "ALWAYS_HASHED_BYTES", 0)  # as for a large version: only "full" reads it all
    with pytest.raises(ArtifactError, match="vectors.f16.npy"):
        publish_version(store, np.array([1, 2]), _unit(2, seed=1), db, ENCODER, tmp_path, _config(), {}, {})
    assert current_version(store) == good.name and list_versions(store) == [good.name]
    assert sorted(p.name for p in (store / "versions").iterdir()) == [good.name]


def test_a_sharded_version_misses_its_recall_target_when_a_part_does(tmp_path: Path):
    vectors = np.random.default_rng(2).standard_normal((400, 4))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    config = _config(factory="IVF4,PQ2x4", recall_queries=20, rerank_candidates=[12], budget={"target_recall": 0.999},
                     shards=2)
    version = publish_version(tmp_path / "store", np.arange(1, 401), vectors, _db(tmp_path / "live.sqlite"), ENCODER,
                              tmp_path, config, {}, {})
    manifest = read_manifest(version.path)
    assert [entry.index.selection["target_met"] for entry in manifest.shards].count(False) >= 1
    assert manifest.index.selection["target_met"] is False
