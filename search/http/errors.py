"""Error bodies that always serialize, and bounded: `{error, detail, request_id}` for every 4xx/5xx.

Why one place: validation errors echo the client's input back, and that input may be a lone surrogate, a
NaN, an infinity or ten megabytes of text; `json.dumps` (or UTF-8 encoding) of such a value raised inside the
error handler and turned a 422 into a 500. Here every value is described instead: strings cut to
`MAX_ECHO_CHARS` with lone surrogates escaped, non-finite floats named, containers summarised past a size or
depth, anything else by its type. Pure ASGI middleware use `send_error` so their refusals look the same.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.types import Send

from search.http.request_id import current_request_id

__all__ = ["MAX_ECHO_CHARS", "describe", "error_body", "send_error"]

MAX_ECHO_CHARS = 120  # an echoed string is cut here ("...(N chars)" says how long it was)
_MAX_ITEMS = 20  # container entries echoed before "... N more"
_MAX_DEPTH = 6
_MAX_MESSAGE = 1000  # our own messages, which may quote a client's text


def _text(value: str) -> str:
    """`value` cut short, with anything UTF-8 cannot carry (lone surrogates) written as \\uXXXX."""
    cut = value[:MAX_ECHO_CHARS]
    safe = cut.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(value) <= MAX_ECHO_CHARS else f"{safe}...({len(value)} chars)"


def describe(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, bounded stand-in for `value` (the value itself when it is already small and plain)."""
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 10**30 else f"integer of {len(str(value))} digits"
    if isinstance(value, float):
        return value if math.isfinite(value) else ("NaN" if math.isnan(value) else ("Infinity" if value > 0
                                                                                     else "-Infinity"))
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    if depth >= _MAX_DEPTH:
        return f"{type(value).__name__} nested deeper than {_MAX_DEPTH}"
    if isinstance(value, dict):
        items = list(value.items())
        out = {_text(str(k)): describe(v, depth + 1) for k, v in items[:_MAX_ITEMS]}
        if len(items) > _MAX_ITEMS:
            out["..."] = f"{len(items) - _MAX_ITEMS} more keys"
        return out
    if isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        described = [describe(v, depth + 1) for v in seq[:_MAX_ITEMS]]
        return described + ([f"... {len(seq) - _MAX_ITEMS} more"] if len(seq) > _MAX_ITEMS else [])
    if isinstance(value, BaseException):
        return _text(f"{type(value).__name__}: {value}")
    return _text(str(value))


def error_body(error: str, detail: Any = None) -> bytes:
    """The JSON error body; never raises on what a client sent (strict JSON: no NaN, valid UTF-8)."""
    message = error[:_MAX_MESSAGE].encode("utf-8", "backslashreplace").decode("utf-8")  # may quote client text
    document = {"error": message, "detail": describe(detail), "request_id": current_request_id()}
    return json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")


async def send_error(send: Send, status: int, error: str, detail: Any = None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer from a pure ASGI middleware with the API's JSON error body."""
    body = error_body(error, detail)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
