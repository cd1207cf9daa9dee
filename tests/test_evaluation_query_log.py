"""search/query/log.py: lines written from many threads read back whole, and feed the stage percentiles."""

from __future__ import annotations

import threading
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
