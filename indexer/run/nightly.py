"""What a scheduled build leaves for its operator: the exit code, the run report, the Prometheus textfile.

Exit codes (the nightly contract, docs/deploy/README.md):
  0  published a new version, or nothing to do
  1  finished, but more images failed in this run than `--max-new-failures` allows
  2  could not run (bad arguments or config, read-only or locked store, missing model); one line on stderr
The run report is written for every exit (STORE/runs/<run id>.json when the store is writable, and
`--report FILE` when given). The metrics file follows node_exporter's textfile-collector convention and is
written atomically by prometheus_client (temp file + rename), so a scrape never sees half a file.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["EXIT_CANNOT_RUN", "EXIT_NEW_FAILURES", "EXIT_OK", "exit_code_for", "failure_report",
           "write_metrics", "write_report"]

EXIT_OK, EXIT_NEW_FAILURES, EXIT_CANNOT_RUN = 0, 1, 2
_COUNTS = ("candidates", "indexed", "failed", "deleted", "pending", "encoded", "failed_this_run", "skipped",
           "metadata_errors", "sidecar_errors", "sidecar_updates")


def exit_code_for(report: dict[str, Any], max_new_failures: int | None) -> int:
    """0, or 1 when this run's new failures exceed the allowed number (None: any number is fine)."""
    new = int(report.get("counts", {}).get("failed_this_run", 0))
    return EXIT_NEW_FAILURES if max_new_failures is not None and new > max_new_failures else EXIT_OK


def failure_report(started: datetime, images: Path | None, store: Path | None, error: str,
                   detail: str | None = None) -> dict[str, Any]:
    """The report of a run that could not run: when, where, and the one-line reason (plus a traceback for
    an unexpected error, kept out of the terminal)."""
    report: dict[str, Any] = {
        "run_id": started.strftime("%Y%m%dT%H%M%S.%fZ"), "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(), "image_root": str(images) if images else None,
        "store": str(store) if store else None, "published": False, "version": None, "counts": {},
        "error": error,
    }
    if detail:
        report["traceback"] = detail
    return report


def write_report(report: dict[str, Any], store: Path | None, extra: Path | None) -> list[str]:
    """Save the report under STORE/runs (when possible) and to `extra`; returns the paths written.

    A read-only store is exactly the case where STORE/runs cannot be written: that is not a second error."""
    written = []
    targets = [extra] if extra else []
    if store is not None and Path(store).is_dir():  # never create a store just to say it could not be used
        targets.append(Path(store) / "runs" / f"{report['run_id']}.json")
    for target in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, target)
            written.append(str(target))
        except OSError:
            continue
    return written


def write_metrics(path: Path, report: dict[str, Any], exit_code: int, duration_s: float) -> None:
    """photostock_indexer_* gauges for node_exporter's textfile collector (written atomically)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> None:
        g = Gauge(f"photostock_indexer_{name}", doc, list(labels or {}), registry=registry)
        (g.labels(**labels) if labels else g).set(value)

    gauge("last_run_timestamp_seconds", "Unix time the last build finished", datetime.now(UTC).timestamp())
    gauge("last_run_duration_seconds", "Wall time of the last build", duration_s)
    gauge("last_run_exit_code", "0 ok, 1 new failures above the limit, 2 could not run", exit_code)
    gauge("last_run_published", "1 when the last build published a new version", float(bool(report["published"])))
    counts = Gauge("photostock_indexer_last_run_images", "Image counts of the last build", ["kind"],
                   registry=registry)
    for kind in _COUNTS:
        counts.labels(kind=kind).set(float(report.get("counts", {}).get(kind, 0)))
    gauge("current_version_info", "The version `current` points to after the last build", 1.0,
          {"version": str(report.get("version") or "")})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
