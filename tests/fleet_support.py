"""Shared by the fleet tests that run without Ray: a finished remote call as the fan-out and the version gate
see it."""

from __future__ import annotations

from typing import Any


class Done:
    """A Serve DeploymentResponse that already has its value (or its error)."""

    def __init__(self, value: Any = None, error: BaseException | None = None):
        self.value, self.error = value, error

    def result(self, *, timeout_s: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.value
