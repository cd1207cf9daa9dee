r"""The optional sidecar DIR/metadata.jsonl: one JSON object per line, {"path", "caption", "tags", "licence",
"popularity", "creator", "taken_at"}.

A line sets only the fields it names (an explicit null clears one); a field it leaves out keeps its stored
value. A bad line (not UTF-8, not JSON, wrong types) is reported with its line number and changes nothing; an
unreadable sidecar is reported and changes nothing; a missing one changes nothing. Paths are the image's path
relative to DIR; a name that is not valid UTF-8 is written with JSON's `\udcXX` escapes (Python's
surrogateescape form of each undecodable byte), exactly as `json.dumps(os.fsdecode(name))` writes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

FIELDS = ("caption", "tags", "licence", "popularity", "creator", "taken_at")


@dataclass
class Sidecar:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> fields
    errors: list[dict[str, Any]] = field(default_factory=list)  # {"line", "reason"}


def read_sidecar(path: Path) -> Sidecar:
    """Parse the sidecar if it exists; later lines for the same path win field by field."""
    result = Sidecar()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return result
    except OSError as exc:
        result.errors.append({"line": 0, "reason": f"sidecar unreadable, nothing changed: {exc.strerror or exc}"})
        return result
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            key, record = _parse(raw)
        except ValueError as exc:
            result.errors.append({"line": number, "reason": str(exc)})
            continue
        result.records[key] = {**result.records.get(key, {}), **record}
    return result


def _parse(raw: bytes) -> tuple[str, dict[str, Any]]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from exc
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    path = obj.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ValueError('missing "path"')
    key = _normalise(path)
    try:
        os.fsencode(key)
    except UnicodeEncodeError as exc:
        raise ValueError('"path" holds a surrogate that is not an escaped byte') from exc
    checks = {"caption": _text("caption"), "tags": _tags, "licence": _text("licence"), "popularity": _popularity,
              "creator": _text("creator"), "taken_at": _taken_at}
    unknown = sorted(set(obj) - set(checks) - {"path"})
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    record = {name: check(obj[name]) for name, check in checks.items() if name in obj}
    return key, record


def _normalise(path: str) -> str:
    """Match the store's keys: '/'-separated, relative, no leading './'."""
    path = path.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def _text(key: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise ValueError(f'"{key}" must be a string or null')
        return value

    return check


def _taken_at(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError('"taken_at" must be an ISO 8601 string or null')
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat()
    except ValueError as exc:
        raise ValueError(f'"taken_at" is not ISO 8601: {value!r}') from exc


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
