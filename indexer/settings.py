"""Indexer settings: defaults < configs/indexer.yaml (or --config FILE) < CLI flags.

A pydantic model rather than loose dicts so a typo in the YAML or a negative batch size fails at start-up
with a clear message instead of half-way through a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "indexer.yaml"
DEFAULT_INDEX_CONFIG = CONFIGS_DIR / "index.yaml"
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ico")


class SettingsError(ValueError):
    """The configuration file or an override is invalid; the message says which field and why."""


class IndexerSettings(BaseModel):
    """Everything a build run needs besides the image root and the store."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = "tiny"
    pretrained: str | None = None
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    image_backend: Literal["auto", "torch", "onnx"] = "auto"  # auto: ONNX Runtime on CPU, torch (AMP) on CUDA
    onnx_cache_dir: str | None = None  # None: ~/.cache/photostock/onnx, keyed by encoder identity
    image_precision: Literal["fp32", "int8"] = "fp32"  # onnx image backend; int8: benchmarks/int8_towers.py
    onnx_micro_batch: int = Field(8, ge=1)  # images per ONNX Runtime call (why 8: benchmarks/README.md)
    batch_size: int = Field(64, ge=1)
    # CPU ONNX sessions taking batches when the primary (GPU) encoder's queue is full; None: 1 on CUDA, 0 on CPU
    overflow_workers: int | None = Field(None, ge=0)
    overflow_queue_depth: int = Field(2, ge=1)  # batches the primary holds (running + waiting) before overflow
    overflow_threads: int = Field(0, ge=0)  # intra-op threads per overflow session; 0: CPUs left by the workers
    # a pipelined pool (overflow on) takes out a member whose batch runs longer than this, or 10x its mean batch
    # time when longer, and retries the batch elsewhere; 300 s never trips a first CUDA batch (context, cudnn
    # autotune: seconds to ~1 min) nor a 64-image CPU batch of a large model, and bounds a hang's stall
    encode_batch_timeout_s: float = Field(300.0, gt=0)
    workers: int = Field(2, ge=1)
    jpeg_draft: bool = True  # decode JPEGs at a reduced DCT scale that still covers the encoder's input size
    decode_timeout_s: float = Field(60.0, gt=0)
    max_image_pixels: int = Field(89_478_485, ge=1)
    hash_threads: int = Field(4, ge=1)
    sidecar: str = "metadata.jsonl"
    extensions: tuple[str, ...] = Field(DEFAULT_EXTENSIONS, validate_default=True)  # normalised like a loaded value
    read_file_metadata: bool = True  # EXIF/IPTC/XMP fields, read in the decode worker (indexer/ingest/file_meta.py)
    index_config: str | None = None  # YAML read by IndexConfig (default configs/index.yaml when present)
    index: dict[str, Any] = Field(default_factory=dict)  # top-level overrides on top of index_config

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted({("." + e.lstrip(".")).lower() for e in value}))

    def index_options(self) -> dict[str, Any]:
        """The index build settings: the index config file's `index:` mapping, then `index` overrides."""
        from indexer.index.index_select import read_index_yaml

        path = Path(self.index_config) if self.index_config else DEFAULT_INDEX_CONFIG
        data: dict[str, Any] = {}
        if self.index_config or path.is_file():
            try:
                data = read_index_yaml(path)
            except (OSError, ValueError) as exc:
                raise SettingsError(f"cannot read index config {path}: {exc}") from exc
        return {**data, **self.index}


def load_settings(
    config: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> IndexerSettings:
    """Read `config` (or the repo default when it exists), then apply non-None `overrides`."""
    data: dict[str, Any] = {}
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    if path is not None:
        data = _read_yaml(Path(path))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return IndexerSettings(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid indexer settings ({path or 'defaults'}): {problems}") from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read config {path}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"config {path} must be a mapping of settings, got {type(loaded).__name__}")
    return loaded
