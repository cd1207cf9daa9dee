"""Strict JSON request bodies: what RFC 8259 allows and nothing a response could not carry back.

Python's `json.loads` accepts NaN and Infinity, turns 1e309 into inf, decodes `"\\ud800"` to a lone surrogate
(which no UTF-8 response can hold) and converts digit strings of any length. Each of those reached a handler
or an error body and ended as a 500. Here each is a `json.JSONDecodeError` with a description, which FastAPI
answers as a 422 `json_invalid` naming it. Routes get this through `StrictJsonRoute` (the router's route class).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

__all__ = ["strict_loads", "StrictJsonRoute"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_INT_DIGITS = 30  # ids are < 2**63 (19 digits); anything much longer is not a number this API takes


class _Rejected(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _Rejected(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected(f"number {text[:40]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _Rejected(f"integer of {len(text)} digits is out of range")
    return int(text)


def _check_strings(document: Any) -> None:
    """Every string and key is valid Unicode text (no lone surrogate); iterative, so depth costs no stack."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            texts: list[str] = [value]
        elif isinstance(value, dict):
            texts = list(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
            continue
        else:
            continue
        for text in texts:
            found = _SURROGATE.search(text)
            if found is not None:
                raise _Rejected(f"a string holds a lone surrogate (\\u{ord(found.group()):04x}), which is not text")


def strict_loads(body: bytes) -> Any:
    """The parsed document, or json.JSONDecodeError saying what is not allowed."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"body is not UTF-8 (byte {exc.start})", "", 0) from None
    try:
        document = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
        _check_strings(document)
    except json.JSONDecodeError as exc:
        raise json.JSONDecodeError(exc.msg, "", exc.pos) from None  # FastAPI keeps `doc`: do not hold the body
    except _Rejected as exc:
        raise json.JSONDecodeError(str(exc), "", 0) from None
    except RecursionError:
        raise json.JSONDecodeError("JSON nested too deeply", "", 0) from None
    return document


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """An APIRoute whose request parses its JSON body with `strict_loads` (FastAPI's custom-request pattern)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict
