"""The fleet's application arguments (`args` of configs/fleet.yaml): the store, the service YAML and each
deployment's Serve options. Checked at deploy time, before any replica starts; every error is one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from search.artifact.manifest import ArtifactError
from search.artifact.version import current_path
from search.fleet.hedge import HedgeRule
from search.fleet.parts import part_count
from search.settings import Settings, load_settings

__all__ = ["DeploymentOptions", "FleetArgs", "FleetConfigError", "HedgeOptions", "ShardOptions", "load_fleet"]


class FleetConfigError(ValueError):
    """A fleet.yaml that cannot deploy: the message is one line naming the key and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActorOptions(_Strict):
    num_cpus: float = Field(0.1, ge=0)  # fractional reservations: the shipped fleet fits one 2-core machine
    memory: int | None = Field(None, ge=0)  # bytes reserved for scheduling (None: none)


class DeploymentOptions(_Strict):
    """Serve options of one deployment: a fixed replica count or an autoscaling_config (Serve checks its keys)."""

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int = Field(16, ge=1)
    ray_actor_options: ActorOptions = ActorOptions()

    @model_validator(mode="after")
    def _one_scaling(self) -> DeploymentOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("give num_replicas or autoscaling_config, not both")
        return self

    def idle_to_zero_s(self) -> float | None:
        """Seconds idle before Serve takes this deployment to zero replicas (min_replicas 0: Serve's
        downscale_to_zero_delay_s, else downscale_delay_s, default 600); None when it keeps a replica."""
        scaling = self.autoscaling_config or {}
        if not scaling or scaling.get("min_replicas", 1) != 0:
            return None
        delay = scaling.get("downscale_to_zero_delay_s") or scaling.get("downscale_delay_s", 600.0)
        return float(delay)

    def serve_options(self) -> dict[str, Any]:
        """The keyword arguments of `Deployment.options`."""
        out: dict[str, Any] = {"max_ongoing_requests": self.max_ongoing_requests,
                               "ray_actor_options": self.ray_actor_options.model_dump(exclude_none=True)}
        if self.autoscaling_config is not None:
            out["autoscaling_config"] = dict(self.autoscaling_config)
        else:
            out["num_replicas"] = self.num_replicas or 1
        return out


class HedgeOptions(_Strict):
    """When a shard call that has not answered gets a second call (search/fleet/hedge.py); `hedge: null` in
    the YAML turns hedging off (a failed or late call is still retried once)."""

    quantile: float = Field(0.95, gt=0, le=1)  # hedge after this quantile of the shard's measured answer times
    window: int = Field(200, ge=1)  # answer times kept per shard
    min_samples: int = Field(20, ge=1)  # fewer answers than this: wait default_ms
    floor_ms: float = Field(5.0, ge=0)  # never hedge sooner
    default_ms: float = Field(50.0, gt=0)  # the wait before the window has min_samples answers

    @model_validator(mode="after")
    def _reachable(self) -> HedgeOptions:
        if self.min_samples > self.window:
            raise ValueError(f"min_samples {self.min_samples} exceeds window {self.window}: the p95 would never "
                             "be used")
        return self

    def rule(self) -> HedgeRule:
        return HedgeRule(quantile=self.quantile, window=self.window, min_samples=self.min_samples,
                         floor_s=self.floor_ms / 1000, default_s=self.default_ms / 1000)


class ShardOptions(DeploymentOptions):
    count: int = Field(ge=1)  # must equal the parts of the store's current version


class FleetArgs(_Strict):
    store: Path
    config: Path | None = None  # the service YAML (configs/service.yaml); None: the defaults
    shard_timeout_s: float = Field(5.0, gt=0)  # one shard call; after a retry that also fails: 503 naming it
    encoder_timeout_s: float = Field(5.0, gt=0)  # one query-encoder call; after a retry that also fails: 503
    hedge: HedgeOptions | None = HedgeOptions()  # None: shard calls are not hedged
    # a shard call that may wait for a replica to start (shards scaled to zero), and every shard's loading of
    # the next version before the fleet switches to it
    cold_start_timeout_s: float = Field(60.0, gt=0)
    ingress: DeploymentOptions = DeploymentOptions()
    encoder: DeploymentOptions = DeploymentOptions()
    shards: ShardOptions


def _one_line(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors())


def load_fleet(args: dict[str, Any]) -> tuple[FleetArgs, Settings]:
    """The application's `args` -> (fleet arguments, service settings), or FleetConfigError (one line): unknown
    keys, a bad service YAML, a store without a version, a shard count that does not match the store."""
    try:
        fleet = FleetArgs.model_validate(args)
    except ValidationError as exc:
        raise FleetConfigError(f"fleet args: {_one_line(exc)}") from None
    try:
        settings = load_settings(fleet.config, store=str(fleet.store))
    except ValidationError as exc:
        raise FleetConfigError(f"service config {fleet.config}: {_one_line(exc)}") from None
    except OSError as exc:
        raise FleetConfigError(f"service config {fleet.config}: {exc.strerror or exc}") from None
    try:
        version_dir = current_path(fleet.store)
        parts = part_count(version_dir)
    except (ArtifactError, OSError) as exc:
        raise FleetConfigError(f"store {fleet.store}: {exc}") from None
    if parts != fleet.shards.count:
        raise FleetConfigError(f"shards.count is {fleet.shards.count} but version {version_dir.name} of "
                               f"{fleet.store} has {parts} part(s)")
    if fleet.ingress.idle_to_zero_s() is not None:
        raise FleetConfigError("ingress.autoscaling_config.min_replicas: the ingress stays warm (at least 1); "
                               "the encoder and the shards may scale to zero")
    return fleet, settings
