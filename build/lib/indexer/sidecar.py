"""The optional sidecar DIR/metadata.jsonl: one JSON object per line, {"path", "caption", "tags", "licence",
"popularity"}. A bad line is reported with its line number and skipped; it never fails the run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = ("caption", "tags", "licence", "popularity")


@dataclass
class Sidecar:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> fields
    errors: list[dict[str, Any]] = field(default_factory=list)  # {"line", "reason"}


def read_sidecar(path: Path) -> Sidecar:
    """Parse the sidecar if it exists; later lines for the same path win."""
    result = Sidecar()
    if not path.is_file():
        return result
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                key, record = _parse(line)
            except ValueError as exc:
                result.errors.append({"line": number, "reason": str(exc)})
                continue
            result.records[key] = record
    return result


def _parse(line: str) -> tuple[str, dict[str, Any]]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from exc
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    path = obj.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ValueError('missing "path"')
    record: dict[str, Any] = {
        "caption": _optional(obj, "caption", str),
        "tags": _tags(obj.get("tags")),
        "licence": _optional(obj, "licence", str),
        "popularity": _popularity(obj.get("popularity")),
    }
    return _normalise(path), record


def _normalise(path: str) -> str:
    """Match the store's keys: '/'-separated, relative, no leading './'."""
    path = path.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def _optional(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f'"{key}" must be a {kind.__name__}')
    return value


def _tags(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError('"tags" must be a list of strings')
    return value


def _popularity(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError('"popularity" must be a number')
    return float(value)
