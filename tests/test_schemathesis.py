"""Service area, API fuzzing: schemathesis generates requests from /openapi.json (a bounded number per
operation) against the real app on the real store and tiny encoder; no response may be a 5xx or break the
schema (status documented, body matching its model, headers as declared)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from search.http.app import create_app
from tests.service_support import runtime_for, settings_for, world_store

schemathesis = pytest.importorskip("schemathesis")  # the `test` extra pins it; .ci installs the extra

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def app_schema(tmp_path_factory):
    world = world_store(tmp_path_factory.getbasetemp() / "service-world")
    app = create_app(settings_for(world), encoder=runtime_for(world))
    with TestClient(app):  # runs the lifespan: the state exists while schemathesis calls the app
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def _fuzz(operation: Any, checks: list[Any], failures: list[str], calls: list[int]) -> None:
    """Up to MAX_EXAMPLES generated cases of one operation; the first failing case is recorded."""

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def fuzz(case: Any) -> None:
        calls.append(case.call_and_validate(checks=checks).status_code)

    try:
        fuzz()
    except Exception as exc:  # collect every operation's failure, then fail once with all of them
        failures.append(f"{operation.method.upper()} {operation.path}: {exc}")


def test_fuzzed_requests_get_no_5xx_and_match_the_schema(app_schema):
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              response_headers_conformance]
    failures: list[str] = []
    calls: list[int] = []
    operations = 0
    for result in app_schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith("/admin"):
            continue  # mutating; covered by tests/test_service_access.py
        operations += 1
        _fuzz(operation, checks, failures, calls)
    print(f"schemathesis: {len(calls)} calls over {operations} operations, statuses {sorted(set(calls))}")
    assert operations >= 6 and len(calls) >= operations
    assert not failures, "\n\n".join(failures[:5])
