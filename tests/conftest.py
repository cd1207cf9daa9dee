"""Shared fixtures. Test helpers are imported one way, as the `tests` package (`from tests.service_support
import ...`); optional inputs are requested through the fixtures below, which apply tests.optional's rule
(skip locally, fail under CI=true)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.indexer_support import ODD_IMAGES
from tests.optional import require_optional
from tests.service_support import WorldStore, world_store

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium (Playwright drives it; never a downloaded browser)."""
    require_optional("chromium", CHROMIUM.exists(),
                     f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/bootstrap "
                     "does this)")
    return CHROMIUM


@pytest.fixture(scope="session")
def odd_images() -> Path:
    """The shared corpus of odd image files (../shared/testdata/pillow-odd-images, read in place)."""
    require_optional("odd-image corpus", ODD_IMAGES.is_dir(), f"{ODD_IMAGES} not present")
    return ODD_IMAGES


@pytest.fixture(scope="session")
def ray_module() -> ModuleType:
    """The `ray` module (the `distributed` extra)."""
    require_optional("ray", importlib.util.find_spec("ray") is not None,
                     "the distributed extra is not installed (pip install -e '.[distributed]')")
    import ray

    return ray


@pytest.fixture(scope="session")
def schemathesis_module() -> ModuleType:
    """The `schemathesis` module (the `test` extra pins it)."""
    require_optional("schemathesis", importlib.util.find_spec("schemathesis") is not None,
                     "the test extra is not installed (pip install -e '.[test]')")
    import schemathesis

    return schemathesis


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldStore:
    """The service tests' synthetic-world store (built once per session, shared read-only; the one meaning
    of `world` in this suite: a module that needs another world names its fixture otherwise)."""
    return world_store(tmp_path_factory.getbasetemp() / "service-world")
