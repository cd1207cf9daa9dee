"""Service area, API fuzzing: schemathesis generates requests from /openapi.json (a bounded number per
operation) against the real app on a copy of the real store and the tiny encoder, and runs every check it has
(`--checks all`: no 5xx, statuses, content types, bodies and headers as documented, schema-invalid input
refused, schema-valid input accepted, missing headers, unsupported methods, Allow headers, auth not ignored,
...). Checks left out are listed in EXCLUDED with the reason, each documented in docs/service.md."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from search.http.app import create_app
from tests.service_support import copy_store, runtime_for, settings_for

MAX_EXAMPLES = 25
_MEANING = ("a query that cleans or tokenizes to nothing is a 422 by design; JSON Schema cannot say 'has a "
            "searchable character' without refusing valid queries in other scripts")
EXCLUDED: dict[tuple[str, str], str] = {  # (check, operation) -> why; docs/service.md, "Fuzzing"
    ("positive_data_acceptance", "GET /search"): _MEANING,
    ("positive_data_acceptance", "POST /search"): _MEANING,
    ("positive_data_acceptance", "POST /search/image"): "an upload is valid only when its bytes decode as an "
                                                        "image (else 400); a schema's binary string cannot say so",
}


@pytest.fixture(scope="module")
def app_schema(world, schemathesis_module, tmp_path_factory):
    store = copy_store(world, tmp_path_factory.mktemp("fuzz") / "store")  # admin calls may write takedowns
    app = create_app(settings_for(world, store=store), encoder=runtime_for(world))
    with TestClient(app):  # runs the lifespan: the state exists while schemathesis calls the app
        yield schemathesis_module.openapi.from_asgi("/openapi.json", app)


def _fuzz(operation: Any, mode: Any, checks: list[Any], failures: list[str], calls: list[int]) -> None:
    """Up to MAX_EXAMPLES generated cases of one operation in one mode (schema-valid or schema-invalid
    data); the first failing case is recorded."""

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        calls.append(case.call_and_validate(checks=checks, headers={"host": "localhost"}).status_code)

    try:
        fuzz()
    except Unsatisfiable:
        if mode.value != "negative":
            raise
        # no parameter or body to make invalid (/healthz, /readyz, /metrics): nothing negative to send
    except Exception as exc:  # collect every operation's failure, then fail once with all of them
        failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")


def test_fuzzed_requests_pass_every_check(app_schema, schemathesis_module):
    from schemathesis.checks import CHECKS

    every = CHECKS.get_all()
    assert len(every) >= 10  # the registry really was read
    failures: list[str] = []
    calls: list[int] = []
    operations = 0
    for result in app_schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        operations += 1
        for mode in schemathesis_module.GenerationMode:  # positive and negative, as `--mode all`
            _fuzz(operation, mode, [c for c in every if (c.__name__, name) not in EXCLUDED], failures, calls)
    print(f"schemathesis: {len(every)} checks, {len(calls)} calls over {operations} operations, "
          f"statuses {sorted(set(calls))}")
    assert operations >= 8 and len(calls) >= operations
    assert not failures, "\n\n".join(failures[:8])
