"""Artifact area: the takedown file and its reader on their own (no service): atomic locked writes with their
history, the reader's refresh rule, the version's copy as fallback, and a bad write never un-hiding ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.artifact.takedown import TAKEDOWN_FILE, TakedownList, apply_takedowns, read_takedowns


def test_a_missing_file_reads_as_an_empty_list_and_a_foreign_one_is_refused(tmp_path: Path):
    assert read_takedowns(tmp_path / TAKEDOWN_FILE) == {"schema": 1, "generation": 0, "active": {}, "history": []}
    for text in ("[1, 2]", '{"active": [1]}', "{}"):
        (tmp_path / TAKEDOWN_FILE).write_text(text)
        with pytest.raises(ValueError, match="is not a takedown list"):
            read_takedowns(tmp_path / TAKEDOWN_FILE)


def test_takedown_then_restore_keeps_the_history_and_bumps_the_generation(tmp_path: Path):
    first = apply_takedowns(tmp_path, [(3, "a.jpg"), ("5", None)], "complaint 1")
    assert first["generation"] == 1 and sorted(first["active"]) == ["3", "5"]
    stamp = first["active"]["3"]["at"]
    assert first["active"]["3"] == {"id": 3, "path": "a.jpg", "reason": "complaint 1", "at": stamp}
    assert first["active"]["5"]["id"] == 5 and first["active"]["5"]["path"] is None
    assert [h["action"] for h in first["history"]] == ["takedown", "takedown"]
    second = apply_takedowns(tmp_path, [(3, "a.jpg"), (9, "never.jpg")], "cleared", restore=True)
    assert second["generation"] == 2 and list(second["active"]) == ["5"]
    assert [(h["action"], h["id"], h["reason"]) for h in second["history"]] == [
        ("takedown", 3, "complaint 1"), ("takedown", 5, "complaint 1"), ("restore", 3, "cleared"),
        ("restore", 9, "cleared")]
    on_disk = (tmp_path / TAKEDOWN_FILE).read_text()
    assert json.loads(on_disk) == second and read_takedowns(tmp_path / TAKEDOWN_FILE) == second
    assert on_disk == json.dumps(second, indent=1, sort_keys=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".takedowns.lock", TAKEDOWN_FILE]  # no temp file left


def test_the_reader_sees_a_write_after_its_check_interval_or_an_invalidate(tmp_path: Path):
    hidden = TakedownList(tmp_path, check_s=3600.0)
    assert hidden.hidden() == frozenset()
    apply_takedowns(tmp_path, [(1, "a.jpg")], "r")
    assert hidden.hidden() == frozenset()  # checked less than check_s ago
    hidden.invalidate()
    assert hidden.hidden() == frozenset({1})
    eager = TakedownList(tmp_path, check_s=0.0)
    assert eager.hidden() == frozenset({1})
    apply_takedowns(tmp_path, [(2, "b.jpg")], "r")
    assert eager.hidden() == frozenset({1, 2})
    (tmp_path / TAKEDOWN_FILE).unlink()
    assert eager.hidden() == frozenset()


def test_a_bad_write_keeps_the_previous_list_until_a_good_one(tmp_path: Path):
    apply_takedowns(tmp_path, [(7, "x.jpg")], "r")
    reader = TakedownList(tmp_path, check_s=0.0)
    assert reader.hidden() == frozenset({7}) and reader.last_error is None
    (tmp_path / TAKEDOWN_FILE).write_text("{half a file")
    assert reader.hidden() == frozenset({7})
    assert reader.last_error is not None and reader.last_error.startswith("takedown list unreadable, keeping")
    (tmp_path / TAKEDOWN_FILE).write_text('{"active": {"8": {}}}')
    assert reader.hidden() == frozenset({8}) and reader.last_error is None


def test_a_store_without_a_file_falls_back_to_the_served_versions_copy(tmp_path: Path):
    store, v1, v2 = tmp_path / "store", tmp_path / "v1", tmp_path / "v2"
    for folder in (store, v1, v2):
        folder.mkdir()
    apply_takedowns(v1, [(4, "d.jpg")], "r")
    (v2 / TAKEDOWN_FILE).write_text("not json")
    reader = TakedownList(store, check_s=0.0)
    assert reader.hidden() == frozenset()
    assert reader.hidden(v1) == frozenset({4})
    (v1 / TAKEDOWN_FILE).unlink()
    assert reader.hidden(v1) == frozenset({4})  # a version's copy is read once: versions are immutable
    assert reader.hidden(v2) == frozenset()  # an unreadable copy hides nothing
    apply_takedowns(store, [(6, "f.jpg")], "r")
    assert reader.hidden(v1) == frozenset({6})  # the live file wins once it exists


def test_records_carry_a_utc_stamp_to_the_second_and_an_old_file_gets_a_generation(tmp_path: Path):
    from datetime import datetime, timedelta

    (tmp_path / TAKEDOWN_FILE).write_text('{"active": {}, "history": []}')  # written before generations
    data = apply_takedowns(tmp_path, [(1, "a.jpg")], "r")
    assert data["generation"] == 1
    stamp = data["active"]["1"]["at"]
    assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0) and "." not in stamp
    assert data["history"][0]["at"] == stamp


def test_a_new_reader_starts_empty_without_error_and_rechecks_twice_a_second(tmp_path: Path):
    reader = TakedownList(tmp_path)
    assert reader.check_s == 0.5
    assert reader.hidden() == frozenset() and reader.last_error is None
    (tmp_path / TAKEDOWN_FILE).write_text("{broken")
    first_read_bad = TakedownList(tmp_path, check_s=0.0)
    assert first_read_bad.hidden() == frozenset() and first_read_bad.last_error is not None
