"""tests.optional: a missing optional input skips locally and fails under CI=true; a present one does neither."""

from __future__ import annotations

import pytest

from tests.optional import in_ci, require_optional


@pytest.mark.parametrize("value", ["true", "1", "TRUE", "yes"])
def test_missing_input_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_optional("chromium", False, "not installed")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_missing_input_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="chromium"):
        require_optional("chromium", False, "not installed")


def test_present_input_passes_in_and_out_of_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("true", "false"):
        monkeypatch.setenv("CI", value)
        require_optional("ray", True, "unused")
