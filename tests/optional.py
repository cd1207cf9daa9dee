"""The one rule for optional test inputs (Debian chromium, Ray, the shared odd-image corpus): skip when one is
missing on a developer's machine, FAIL under CI=true, so a CI run can never be green with those tests unrun."""

from __future__ import annotations

import os

import pytest

__all__ = ["in_ci", "require_optional"]


def in_ci() -> bool:
    """CI=true (or 1/yes), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_optional(name: str, available: bool, reason: str) -> None:
    """Return when `name` is available; else skip the test, or fail it under CI=true."""
    if available:
        return
    message = f"optional input {name!r} is missing: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing optional input fails the run)", pytrace=False)
    pytest.skip(message)
