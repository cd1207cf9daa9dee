"""search/query/examples.py: the example queries a published version offers (most shared captions, then tags)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import search.query.examples as examples_module
from search.artifact.version import Artifact, open_version
from search.query.examples import ExampleQueries, example_queries
from tests.artifact_support import clustered, publish
from tests.metadata_support import MetaRow, write_metadata

# id -> (caption, tags); all are indexed but 11 and 2**53, which are in the metadata only
ROWS: dict[int, tuple[str | None, list[str]]] = {
    1: ("a lone boat", ["sea", "boat"]),
    2: ("red car", ["car"]),
    3: ("  red   car ", ["car", "street"]),  # whitespace folds: the same caption as id 2
    4: ("dog on grass", ["dog", "grass"]),
    5: ("dog on grass", ["dog"]),
    6: ("dog on grass", ["dog", "  "]),  # a blank tag counts for nothing
    7: ("a caption far longer than the limit allows", ["a tag far longer than the limit"]),
    8: (None, ["sea", "sky"]),
    9: ("hidden cat", ["cat", "cat"]),
    10: ("", ["sky", "sea", "red car"]),  # a tag already chosen as a caption is not repeated
    11: ("not indexed", ["absent"]),
    2**53: ("big not indexed", []),  # ids past float64's exact integers: 2**53 + 1 would round to 2**53
    2**53 + 1: ("big one", []),
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Artifact]:
    root = tmp_path_factory.mktemp("examples")
    db = root / "live.sqlite"
    write_metadata(db, [MetaRow(i, f"img/{i:03d}.jpg", fields={"caption": c, "tags": t} if c is not None
                                else {"tags": t}) for i, (c, t) in ROWS.items()])
    with sqlite3.connect(db) as conn:  # rows the sidecar checks would refuse: a damaged snapshot must not fail
        conn.execute("INSERT INTO images(id, path, path_raw, content_hash, size, mtime_ns, status, created_at,"
                     " updated_at, caption, tags) VALUES (12, 'x', x'78', 'h', 0, 0, 'indexed', '', '', 'odd one',"
                     " 'not json')")
        conn.execute("INSERT INTO images(id, path, path_raw, content_hash, size, mtime_ns, status, created_at,"
                     " updated_at, caption, tags) VALUES (13, 'y', x'79', 'h', 0, 0, 'indexed', '', '', 'odd two',"
                     " '{\"sea\": 1}')")
        conn.execute("INSERT INTO images(id, path, path_raw, content_hash, size, mtime_ns, status, created_at,"
                     " updated_at, caption, tags) VALUES (14, 'z', x'7a', 'h', 0, 0, 'indexed', '', '', 'odd three',"
                     " '[1, null, \"sea\"]')")
        conn.execute("INSERT INTO images(id, path, path_raw, content_hash, size, mtime_ns, status, created_at,"
                     " updated_at, caption, tags) VALUES (15, 'w', x'77', 'h', 0, 0, 'indexed', '', '', NULL, NULL)")
    ids = np.array([*range(1, 11), 12, 13, 14, 15, 2**53 + 1], np.int64)
    version = publish(root / "store", clustered(len(ids), 8, clusters=3), ids)
    opened = open_version(version.path)
    yield opened
    opened.close()


CAPTIONS = ["dog on grass", "red car", "a lone boat", "hidden cat", "odd one", "odd two", "odd three", "big one"]
TAGS = ["sea", "dog", "car", "sky", "cat", "boat", "street", "grass"]


def test_most_shared_captions_first_then_tags(artifact: Artifact) -> None:
    assert example_queries(artifact, 1, 20) == ["dog on grass"]
    assert example_queries(artifact, 2, 20) == ["dog on grass", "red car"]
    # ties (one image each): the lowest id first; then the most frequent tags (ties: first seen), never one
    # already chosen, damaged tag lists (not JSON, not a list, not strings) counting for nothing
    assert example_queries(artifact, 8, 20) == CAPTIONS
    assert example_queries(artifact, 9, 20) == [*CAPTIONS, "sea"]
    assert example_queries(artifact, 10, 20) == [*CAPTIONS, "sea", "dog"]
    assert example_queries(artifact, 100, 20) == CAPTIONS + TAGS


def test_hidden_unindexed_and_long_entries_never_show(artifact: Artifact) -> None:
    assert example_queries(artifact, 100, 20, frozenset({9, 1})) == [
        "dog on grass", "red car", "odd one", "odd two", "odd three", "big one",
        "dog", "sea", "car", "sky", "street", "grass"]
    assert example_queries(artifact, 100, 12) == CAPTIONS + TAGS  # "dog on grass" is 12 characters
    assert example_queries(artifact, 100, 11) == CAPTIONS[1:] + TAGS
    assert example_queries(artifact, 100, 6) == TAGS  # "street" is 6 characters
    assert example_queries(artifact, 100, 5) == [t for t in TAGS if t != "street"]
    assert example_queries(artifact, 100, 20, frozenset({2**53 + 1}))[:8] == [*CAPTIONS[:7], "sea"]
    assert example_queries(artifact, 100, 20, frozenset({2**53})) == CAPTIONS + TAGS  # not 2**53 + 1
    assert example_queries(artifact, 0, 20) == [] and example_queries(artifact, -1, 20) == []


def test_computed_once_per_version_and_taken_down_set(artifact: Artifact, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = ExampleQueries(count=3, max_chars=20)
    first = examples.get(artifact, frozenset())
    assert first == CAPTIONS[:3]
    first.append("edited by the caller")
    calls: list[tuple[object, ...]] = []
    real = examples_module.example_queries

    def counted(*args: object) -> list[str]:
        calls.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(examples_module, "example_queries", counted)
    assert examples.get(artifact, frozenset()) == CAPTIONS[:3]  # cached, and the caller's edit did not reach it
    assert calls == []
    assert examples.get(artifact, frozenset({4, 5, 6})) == ["red car", "a lone boat", "hidden cat"]
    assert calls == [(artifact, 3, 20, frozenset({4, 5, 6}))]
    assert examples.get(artifact, frozenset({4, 5, 6})) == ["red car", "a lone boat", "hidden cat"]
    assert len(calls) == 1


def test_another_version_gets_its_own_examples(artifact: Artifact, tmp_path: Path) -> None:
    db = tmp_path / "live.sqlite"
    write_metadata(db, [MetaRow(1, "img/001.jpg", fields={"caption": "another store", "tags": []})])
    version = publish(tmp_path / "store", clustered(1, 8, clusters=1), np.array([1], np.int64))
    examples = ExampleQueries(count=2, max_chars=20)
    assert examples.get(artifact, frozenset()) == CAPTIONS[:2]
    with open_version(version.path) as other:
        assert examples.get(other, frozenset()) == ["another store"]
    assert examples.get(artifact, frozenset()) == CAPTIONS[:2]
