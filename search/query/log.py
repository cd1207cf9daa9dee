"""Optional query log for offline analysis: one JSON line per answered query (time, query text or kind, version,
per-stage latency in ms, cache hit, results count). Self-contained so the service can wire it in with one
call after each search; `indexer.lab.evaluation.latency.stage_percentiles` reads the records as they are.

Appends go through one lock and are flushed per line, so concurrent requests never interleave partial lines
and a crash loses at most the line being written.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["QueryLog", "read_query_log"]


class QueryLog:
    """Append-only JSONL writer; open it once at startup, `close()` at shutdown."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"query log path {self.path} is a directory; give a file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def record(self, *, query: str | None, kind: str, stages_ms: Mapping[str, float], cache_hit: bool | None,
               results: int, version: str | None, request_id: str | None = None) -> None:
        """One line. `kind`: text | image | similar; `query` is None for image searches."""
        if results < 0:
            raise ValueError("results must be >= 0")
        line = json.dumps({"ts": round(time.time(), 3), "kind": kind, "query": query, "version": version,
                           "cache_hit": cache_hit, "results": int(results),
                           **({"request_id": request_id} if request_id is not None else {}),
                           **{str(k): round(float(v), 3) for k, v in stages_ms.items()}}, ensure_ascii=False)
        with self._lock:
            if self._file.closed:
                raise ValueError(f"query log {self.path} is closed")
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> QueryLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_query_log(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a query log; a malformed line is an error naming its line number."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc
