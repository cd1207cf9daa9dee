"""search/query/log.py: lines written from many threads read back whole, and feed the stage percentiles."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from indexer.lab.evaluation.latency import stage_percentiles
from search.query.log import QueryLog, read_query_log


def test_concurrent_records_read_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "queries.jsonl"
    with QueryLog(path) as log:
        def worker(t: int) -> None:
            for i in range(50):
                log.record(query=f"q{t}-{i} ünïcode", kind="text", stages_ms={"embed": 1.0, "total": 2.0 + t},
                           cache_hit=i % 2 == 0, results=10, version="v1")

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    records = list(read_query_log(path))
    assert len(records) == 200
    assert {r["query"] for r in records} == {f"q{t}-{i} ünïcode" for t in range(4) for i in range(50)}
    assert sum(r["cache_hit"] for r in records) == 100
    rows = {(r["queries"], r["stage"]): r for r in stage_percentiles(records, (50,))}
    assert rows[("all", "embed")]["p50_ms"] == 1.0 and rows[("cache hit", "total")]["n"] == 100
    assert {stage for _, stage in rows} == {"embed", "total"}  # ts and results are not stages


def test_closed_log_and_bad_input_are_errors(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.jsonl")
    with pytest.raises(ValueError, match="results"):
        log.record(query="x", kind="text", stages_ms={}, cache_hit=None, results=-1, version=None)
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.record(query="x", kind="text", stages_ms={}, cache_hit=None, results=0, version=None)
    with pytest.raises(IsADirectoryError):
        QueryLog(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"ok": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        list(read_query_log(tmp_path / "bad.jsonl"))


def test_record_fields_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1234.56789)
    path = tmp_path / "a" / "b" / "queries.jsonl"  # missing parents are made
    with QueryLog(path) as log:
        log.record(query="café ünïcode", kind="text", stages_ms={"embed": 1.23456, "total": 2}, cache_hit=False,
                   results=3, version="v1", request_id="r-1")
        log.record(query=None, kind="image", stages_ms={}, cache_hit=None, results=0, version=None)
    raw = path.read_text(encoding="utf-8")
    assert "café ünïcode" in raw  # the text as it is, not \\u escapes
    first, second = read_query_log(path)
    assert first == {"ts": 1234.568, "kind": "text", "query": "café ünïcode", "version": "v1", "cache_hit": False,
                     "results": 3, "request_id": "r-1", "embed": 1.235, "total": 2.0}
    assert second == {"ts": 1234.568, "kind": "image", "query": None, "version": None, "cache_hit": None,
                      "results": 0}  # no request id: no key


def test_errors_say_what_is_wrong_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory; give a file name"):
        QueryLog(tmp_path)
    log = QueryLog(tmp_path / "q.jsonl")
    with pytest.raises(ValueError, match=r"^results must be >= 0$"):
        log.record(query="x", kind="text", stages_ms={}, cache_hit=None, results=-1, version=None)
    log.close()
    (tmp_path / "gaps.jsonl").write_text('{"n": 1}\n\n   \n{"n": 2}\n')
    assert [r["n"] for r in read_query_log(tmp_path / "gaps.jsonl")] == [1, 2]
