"""Sharded index versions: the shard rule is balanced whatever the ids; a version published with S parts answers
every query exactly as the unsharded version of the same catalogue (the service in one process, and one
search batch of mixed specs); broken sharded versions are refused with their reason; re-sharding publishes
from the stored embeddings; takedowns, incremental runs and a killed publish work as for one shard."""

from __future__ import annotations

import io
import json
import shutil
import stat
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.cli import main as indexer_main
from search.artifact import manifest as manifest_module
from search.artifact.checksums import file_entry
from search.artifact.manifest import SHARDED_SCHEMA_VERSION, ArtifactError, read_manifest
from search.artifact.shards import SHARD_RULE, mix64, shard_of
from search.artifact.version import open_current, open_shard, open_version
from search.http.app import create_app
from search.query.batch import RankPolicy, search_batch
from search.settings import RankSettings, ReloadSettings, Settings
from tests.indexer_support import cli, draw, make_tree, rows, run
from tests.service_support import WorldStore, copy_store, encoder_for, publish, settings_for, sharded_copy
from tests.test_search_batch import SPECS  # the same mixed specs, over sharded versions

SHARD_COUNTS = (2, 3)
SCORE_TOLERANCE = 2e-3  # float16 rows: the scores of one photo may differ in the last bits, never more


# -- the rule ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["sequential", "strided", "random"])
@pytest.mark.parametrize("shards", [2, 3, 4, 8])
def test_the_shard_rule_is_balanced_whatever_the_ids(pattern: str, shards: int) -> None:
    n = 60_000
    ids = {"sequential": np.arange(1, n + 1),
           "strided": np.arange(n) * shards * 1000 + 7,  # every id the same modulo S: id % S would put all in one
           "random": np.random.default_rng(shards).integers(0, 2**62, n)}[pattern].astype(np.int64)
    counts = np.bincount(shard_of(ids, shards), minlength=shards)
    assert counts.size == shards
    assert np.all(np.abs(counts - n / shards) <= 0.05 * n / shards), counts


def test_the_shard_rule_is_fixed() -> None:
    """The rule is part of the format: a version written today must open with the same assignment later.
    mix64 is SplitMix64's output for seeds 0 and 1 (the published reference values)."""
    assert mix64(np.array([0, 1])).tolist() == [0xE220A8397B1DCDAF, 0x910A2DEC89025CC1]
    assert shard_of(np.arange(12), 3).tolist() == [1, 2, 1, 0, 1, 2, 2, 0, 1, 1, 1, 0]
    assert shard_of(np.array([-5, 2**62, 2**63 - 1]), 3).tolist() == [1, 1, 0]
    assert shard_of(np.arange(12), 1).tolist() == [0] * 12
    with pytest.raises(ValueError, match="at least 1"):
        shard_of(np.arange(3), 0)


def test_the_shard_rule_takes_int64_ids_and_answers_int64_shards() -> None:
    """Shards are int64 whatever S (they index arrays); one id alone (a 0-d array) hashes without an overflow
    warning, to the same value as in an array; an id outside int64 is refused, never wrapped."""
    for shards in (1, 3):
        assert shard_of(np.arange(5), shards).dtype == np.int64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int(mix64(np.array(1, np.int64))) == 0x910A2DEC89025CC1
        assert int(shard_of(np.array(11, np.int64), 3)) == 0
    with pytest.raises(OverflowError):
        mix64(np.array([2**63], dtype=object))  # e.g. ids parsed from JSON


# -- sharded copies of the service world ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sharded(world: WorldStore, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("sharded")
    return {1: world.store, **{s: sharded_copy(world, base / f"s{s}", s) for s in SHARD_COUNTS}}


def test_a_sharded_version_lists_its_parts(sharded: dict[int, Path]) -> None:
    plain = json.loads((sharded[1] / "current" / "manifest.json").read_text())
    assert plain["schema_version"] == 1 and "shards" not in plain and "sharding" not in plain
    for shards in SHARD_COUNTS:
        version = (sharded[shards] / "current").resolve()
        manifest = read_manifest(version)
        assert manifest.schema_version == SHARDED_SCHEMA_VERSION
        assert manifest.sharding == {"rule": SHARD_RULE, "shards": shards}
        assert [p.dir for p in manifest.shards] == [f"shard-{i:03d}" for i in range(shards)]
        assert sorted(p.name for p in version.iterdir() if p.is_file()) == ["manifest.json", "metadata.sqlite"]
        assert {p.index.factory for p in manifest.shards} == {manifest.index.factory}
        with open_version(version, checks="full") as artifact:
            assert len(artifact.parts) == shards
            assert [len(p.ids) for p in artifact.parts] == [p.vectors for p in manifest.shards]
            for i, part in enumerate(artifact.parts):
                assert (part.shard, part.dir) == (i, version / f"shard-{i:03d}")
                assert np.all(shard_of(part.ids, shards) == i)
            with open_current(sharded[1]) as plain_artifact:
                np.testing.assert_array_equal(artifact.ids, plain_artifact.ids)
                some = plain_artifact.ids[::7]
                np.testing.assert_array_equal(artifact.vectors_for(some), plain_artifact.vectors_for(some))
                q = plain_artifact.vectors_for(some[:4])
                for got, want in zip(artifact.exact_search(q, 9), plain_artifact.exact_search(q, 9), strict=True):
                    np.testing.assert_allclose(got, want, atol=SCORE_TOLERANCE)
                np.testing.assert_array_equal(artifact.search(q, 9).ids, plain_artifact.search(q, 9).ids)


@pytest.mark.parametrize("rank", [RankSettings(), RankSettings(popularity_weight=0.3, overfetch=2)])
def test_a_search_batch_over_every_part_equals_the_unsharded_batch(sharded: dict[int, Path],
                                                                   rank: RankSettings) -> None:
    policy = RankPolicy.from_settings(rank)
    with open_current(sharded[1]) as plain:
        rng = np.random.default_rng(3)
        q = plain.vectors_at(rng.integers(0, len(plain.ids), len(SPECS)))
        q = q + 0.3 * rng.standard_normal(q.shape).astype(np.float32) / np.sqrt(q.shape[1])
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        hidden = frozenset(int(i) for i in plain.ids[[1, 5, 9]])
        want = search_batch(plain, q, SPECS, policy, hidden=hidden)
    assert sum(len(p.hits) for p in want) > 40
    for shards in SHARD_COUNTS:
        with open_current(sharded[shards]) as artifact:
            got = search_batch(artifact, q, SPECS, policy, hidden=hidden)
            owners = set(shard_of(np.array([h["id"] for p in got for h in p.hits]), shards).tolist())
            assert owners == set(range(shards))  # every part contributed hits
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.total == w.total, (shards, i)
            assert [h["id"] for h in g.hits] == [h["id"] for h in w.hits], (shards, i)
            for gh, wh in zip(g.hits, w.hits, strict=True):
                assert abs(gh["score"] - wh["score"]) <= SCORE_TOLERANCE
                assert abs(gh["similarity"] - wh["similarity"]) <= SCORE_TOLERANCE
                assert {k: v for k, v in gh.items() if k not in ("score", "similarity")} == \
                    {k: v for k, v in wh.items() if k not in ("score", "similarity")}


def _service_pages(world: WorldStore, store: Path) -> list[dict[str, Any]]:
    """The same text, image and similar requests (filters, pagination, dedup) to a service over `store`."""
    image = (world.image_root / next(iter(world.ids_by_path))).read_bytes()
    similar_to = sorted(world.ids_by_path.values())[5]
    texts = [q["query"] for q in world.queries[:3]]
    answers = []
    with TestClient(create_app(settings_for(world, store=store))) as client:
        ready = client.get("/readyz").json()
        assert ready["ready"], ready
        for text in texts:
            answers.append(client.get("/search", params={"q": text, "k": 6}).json())
            answers.append(client.post("/search", json={"query": text, "k": 4, "offset": 5}).json())
            answers.append(client.post("/search", json={"query": text, "k": 8, "dedup": True,
                                                        "filters": {"licence": ["CC0-1.0", "CC-BY-4.0"]}}).json())
            answers.append(client.post("/search", json={"query": text, "k": 5, "offset": 2,
                                                        "filters": {"tags": ["large"]}, "diversity": 0.4}).json())
        for params in ({"k": 5}, {"k": 4, "offset": 7}):
            r = client.post("/search/image", params=params, files={"file": ("q.png", io.BytesIO(image), "image/png")})
            answers.append(r.json())
            answers.append(client.get(f"/search/similar/{similar_to}", params=params).json())
    return answers


def test_the_service_answers_the_same_pages_at_every_shard_count(world: WorldStore,
                                                                  sharded: dict[int, Path]) -> None:
    want = _service_pages(world, sharded[1])
    assert all("hits" in page for page in want), want
    assert sum(len(page["hits"]) for page in want) > 60
    for shards in SHARD_COUNTS:
        got = _service_pages(world, sharded[shards])
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert "hits" in g, g
            assert g["total"] == w["total"], (shards, i)
            assert [h["id"] for h in g["hits"]] == [h["id"] for h in w["hits"]], (shards, i)
            for gh, wh in zip(g["hits"], w["hits"], strict=True):
                assert abs(gh["score"] - wh["score"]) <= SCORE_TOLERANCE, (shards, i)


# -- refusals ---------------------------------------------------------------------------------------------------
def _writable_copy(source: Path, base: Path) -> Path:
    """A writable copy of a version at BASE/versions/<name>, beside a copy of its store's encoder folders."""
    target = base / "versions" / source.name
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    shutil.copytree(source.parent.parent / "encoders", base / "encoders")
    return target


def _edit_manifest(version: Path, change) -> None:
    data = json.loads((version / "manifest.json").read_text())
    change(data)
    (version / "manifest.json").write_text(json.dumps(data))


def _swap_parts(version: Path) -> None:
    """Parts 0 and 1 exchanged, files and manifest entries alike (each self-consistent, in the wrong shard)."""
    (version / "shard-000").rename(version / "tmp")
    (version / "shard-001").rename(version / "shard-000")
    (version / "tmp").rename(version / "shard-001")

    def swap(data: dict) -> None:
        a, b = data["shards"][0], data["shards"][1]
        data["shards"][0], data["shards"][1] = {**b, "dir": a["dir"]}, {**a, "dir": b["dir"]}
    _edit_manifest(version, swap)


def _narrow_part(version: Path) -> None:
    """Part 1's vectors with one dimension fewer (checksums updated: only the shape is wrong)."""
    vectors = np.load(version / "shard-001" / "vectors.f16.npy")
    np.save(version / "shard-001" / "vectors.f16.npy", vectors[:, :-1])
    entry = file_entry(version / "shard-001" / "vectors.f16.npy")
    _edit_manifest(version, lambda d: d["shards"][1]["files"].update(
        {"vectors.f16.npy": {"sha256": entry.sha256, "bytes": entry.bytes, "sample_sha256": entry.sample_sha256}}))


BREAKAGES = {
    "missing shard": (lambda v: shutil.rmtree(v / "shard-002"), "shard 2 is missing"),
    "missing part file": (lambda v: (v / "shard-001" / "ids.npy").unlink(),
                          r"shard 1 \(shard-001\): ids.npy is missing"),
    "part count disagrees": (lambda v: _edit_manifest(v, lambda d: d["shards"][0].update(vectors=1)),
                             "counts .* vectors but its shards hold"),
    "total disagrees": (lambda v: _edit_manifest(v, lambda d: d["counts"].update(vectors=1)),
                        "counts 1 vectors but its shards hold"),
    "shard list short": (lambda v: _edit_manifest(v, lambda d: d["shards"].pop()), "says 3 shards but lists 2"),
    "ids in the wrong shard": (_swap_parts, "do not belong to shard 0 of 3"),
    "different dimension": (_narrow_part, r"shard 1 .*vectors are float16\(\d+, \d+\), expected"),
    "unknown rule": (lambda v: _edit_manifest(v, lambda d: d["sharding"].update(rule="id-mod")),
                     "shard rule 'id-mod' is not supported"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_sharded_version_is_refused_with_its_reason(sharded: dict[int, Path], tmp_path: Path,
                                                             breakage: str) -> None:
    version = _writable_copy((sharded[3] / "current").resolve(), tmp_path)
    open_version(version, checks="full").close()
    damage, reason = BREAKAGES[breakage]
    damage(version)
    with pytest.raises(ArtifactError, match=reason):
        open_version(version, checks="full").close()


def test_a_reader_of_schema_1_only_refuses_a_sharded_version(sharded: dict[int, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "READABLE_SCHEMAS", (1,))
    with pytest.raises(ArtifactError, match="schema_version 2 is not supported"):
        read_manifest(sharded[2] / "current")
    read_manifest(sharded[1] / "current")


def test_open_shard_loads_one_part_and_the_shared_metadata(sharded: dict[int, Path], tmp_path: Path) -> None:
    version = _writable_copy((sharded[3] / "current").resolve(), tmp_path)
    shutil.rmtree(version / "shard-002")  # another part's loss does not concern this one
    with open_shard(version, 1, checks="full") as part:
        assert (part.shard, part.shards) == (1, 3) and np.all(shard_of(part.ids, 3) == 1)
        other = int(np.setdiff1d(np.load(version / "shard-000" / "ids.npy"), part.ids)[0])
        assert part.metadata([other])[0]["id"] == other  # the snapshot is the whole version's
        scores, found = part.ann_rows(part.vectors_at(np.array([0])), 3)
        assert found[0, 0] == 0 and scores[0, 0] > 0.99
    with pytest.raises(ArtifactError, match="shard 2 is missing"):
        open_shard(version, 2)
    with pytest.raises(ArtifactError, match="has 3 shard"):
        open_shard(version, 3)
    with open_shard(sharded[1] / "current", 0) as whole:  # an unsharded version is its own part 0
        assert whole.shards == 1 and len(whole.ids) == len(np.load(sharded[1] / "current" / "ids.npy"))


def test_too_many_shards_for_the_catalogue_is_refused_before_writing(world: WorldStore, tmp_path: Path) -> None:
    store = copy_store(world, tmp_path / "store")
    before = sorted(p.name for p in (store / "versions").iterdir())
    with pytest.raises(ValueError, match="empty: use fewer shards"):
        _publish_into(world, store, shards=400)
    assert sorted(p.name for p in (store / "versions").iterdir()) == before


def _publish_into(world: WorldStore, store: Path, shards: int) -> str:
    with open_current(world.store) as artifact:
        ids = [int(i) for i in artifact.ids]
    return publish(store, world.image_root, encoder_for(world.checkpoint), store / "metadata.sqlite", ids,
                   np.load(store / "vectors.npy"), onnx_cache=world.onnx_cache, shards=shards)


# -- the indexer: re-sharding, takedowns, incremental runs, a killed publish -------------------------------------
def test_build_shards_reshards_an_unchanged_store_without_encoding(tmp_path: Path) -> None:
    images, store = tmp_path / "images", tmp_path / "store"
    make_tree(images, 8)
    flags = ["--pretrained", "random", "--device", "cpu", "--batch-size", "4", "--workers", "1"]
    first = cli("build", "--images", str(images), "--store", str(store), *flags)
    assert first.returncode == 0, first.stderr
    resharded = cli("build", "--images", str(images), "--store", str(store), *flags, "--shards", "2")
    assert resharded.returncode == 0, resharded.stderr
    report = json.loads(resharded.stdout)
    assert report["published"] and report["counts"]["encoded"] == 0
    assert report["version"] != json.loads(first.stdout)["version"]
    with open_version(store / "versions" / json.loads(first.stdout)["version"]) as before, \
            open_current(store) as after:
        assert len(after.parts) == 2
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_array_equal(after.vectors_for(before.ids), before.vectors_for(before.ids))
    again = cli("build", "--images", str(images), "--store", str(store), *flags, "--shards", "2")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["published"] is False  # the shard count is what the current version has
    shown = cli("status", "--store", str(store), "--json")
    assert json.loads(shown.stdout)["shards"] == 2
    bad = cli("build", "--images", str(images), "--store", str(store), *flags, "--shards", "0")
    assert bad.returncode == 2 and "--shards must be 1 or more" in bad.stderr


def test_takedown_incremental_run_and_killed_publish_on_a_sharded_store(tmp_path: Path) -> None:
    images, store = tmp_path / "images", tmp_path / "store"
    make_tree(images, 10)
    report = run(images, store, index={"shards": 3})
    assert report["published"]
    with open_current(store) as artifact:
        assert len(artifact.parts) == 3
    settings = Settings(store=store, reload=ReloadSettings(watch=False, takedown_check_s=0.1))
    with TestClient(create_app(settings), base_url="http://localhost", client=("127.0.0.1", 5000)) as client:
        victim = rows(store)["a/img001.png"]["id"]
        found = client.get("/search", params={"q": "a photo", "k": 100}).json()["hits"]
        assert victim in {h["id"] for h in found} and len(found) == 10
        r = client.post("/admin/takedown", json={"ids": [victim], "reason": "DMCA"})
        assert r.status_code == 200 and r.json()["ids"] == [victim]
        found = client.get("/search", params={"q": "a photo", "k": 100}).json()["hits"]
        assert victim not in {h["id"] for h in found} and len(found) == 9
        assert client.get(f"/search/similar/{victim}").status_code == 404
        other = rows(store)["b/img000.png"]["id"]
        similar = client.get(f"/search/similar/{other}", params={"k": 100}).json()["hits"]
        assert victim not in {h["id"] for h in similar} and len(similar) == 8

        # a publish killed mid-way left a half-written sharded version behind: the next run removes it
        debris = store / "versions" / ".tmp-killed" / "shard-001"
        debris.mkdir(parents=True)
        (debris / "ids.npy").write_bytes(b"partial")
        (debris / "ids.npy").chmod(stat.S_IRUSR)
        draw(images / "c" / "new.png", seed=77)
        later = run(images, store, index={"shards": 3})
        assert later["published"] and later["counts"]["encoded"] == 1
        assert not (store / "versions" / ".tmp-killed").exists()
        assert f'"{victim}"' in (store / "versions" / later["version"] / "takedowns.json").read_text()
        reloaded = client.post("/admin/reload", json={})
        assert reloaded.status_code == 200 and reloaded.json()["version"] == later["version"], reloaded.text
        with open_current(store) as artifact:
            assert len(artifact.parts) == 3 and len(artifact.ids) == 11
        found = client.get("/search", params={"q": "a photo", "k": 100}).json()["hits"]
        assert victim not in {h["id"] for h in found} and len(found) == 10
        assert indexer_main(["restore", "--store", str(store), str(victim), "--reason", "cleared"]) == 0
        deadline = time.monotonic() + 30  # bounds a failure only: the list is re-read within takedown_check_s
        shown: set[int] = set()
        while victim not in shown and time.monotonic() < deadline:
            shown = {h["id"] for h in client.get("/search", params={"q": "a photo", "k": 100}).json()["hits"]}
        assert victim in shown and len(shown) == 11
