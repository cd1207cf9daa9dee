"""configs/*.yaml repeat the code defaults so an operator sees every setting in one place; these tests keep the
two from drifting apart: each file loads through the code's own loader to exactly the defaults, and names every
field (a new setting must be added to its config file too)."""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from indexer.index.index_select import IndexConfig
from indexer.settings import IndexerSettings, SettingsError
from indexer.settings import load_settings as load_indexer_settings
from search.settings import Settings
from search.settings import load_settings as load_service_settings

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _yaml(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _missing(defaults: Any, data: dict[str, Any], prefix: str = "") -> list[str]:
    """Fields of a pydantic model or dataclass (recursively for nested ones) that `data` does not name."""
    if isinstance(defaults, BaseModel):
        names = list(type(defaults).model_fields)
    elif is_dataclass(defaults):
        names = [f.name for f in fields(defaults)]
    else:
        return []
    out = []
    for name in names:
        if name not in data:
            out.append(prefix + name)
        elif isinstance(data[name], dict):
            out += _missing(getattr(defaults, name), data[name], f"{prefix}{name}.")
    return out


def test_service_yaml_equals_the_settings_defaults() -> None:
    loaded = load_service_settings(CONFIGS / "service.yaml")
    assert loaded.model_dump() == Settings().model_dump()
    # `store` is the one setting that has no default worth writing down: it comes from --store
    assert _missing(Settings(), _yaml("service.yaml")) == ["store"]


def test_indexer_yaml_equals_the_settings_defaults() -> None:
    loaded = load_indexer_settings(CONFIGS / "indexer.yaml")
    assert loaded.model_dump() == IndexerSettings().model_dump()
    assert _missing(IndexerSettings(), _yaml("indexer.yaml")) == []


def test_index_yaml_equals_the_index_config_defaults() -> None:
    assert IndexConfig.load(CONFIGS / "index.yaml") == IndexConfig()
    assert _missing(IndexConfig(), _yaml("index.yaml")["index"]) == []


def test_index_yaml_has_one_reader(tmp_path: Path) -> None:
    """The indexer's settings and IndexConfig read index.yaml the same way, and a bad file is a SettingsError."""
    options = IndexerSettings(index_config=str(CONFIGS / "index.yaml"), index={"keep_versions": 5}).index_options()
    assert IndexConfig.from_dict(options) == replace(IndexConfig.load(CONFIGS / "index.yaml"), keep_versions=5)
    bad = tmp_path / "index.yaml"
    bad.write_text("index: [not, a, mapping]\n")
    with pytest.raises(SettingsError, match="index config"):
        IndexerSettings(index_config=str(bad)).index_options()
    with pytest.raises(ValueError, match="mapping"):
        IndexConfig.load(bad)
