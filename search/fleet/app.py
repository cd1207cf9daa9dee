"""The fleet as one Serve application: `serve run configs/fleet.yaml` (or `serve.run(build_app(args))`).

- `Ingress`: the service's own FastAPI app (`create_app`) with the remote parts injected (`RemoteParts`): text
  and upload encodes go to `QueryEncoder`, each search batch fans out to every `Shard<i>` through
  search/fleet/fanout.py; the merge, refetch rounds, metadata, pagination and every route stay the service's.
- `QueryEncoder`: the session pool, micro-batcher and query cache (search/fleet/parts.py), scaled on its own.
- `Shard<i>`: `shard_search` over part i of the version the ingress names, returning only `ShardHits`. Its
  handles route with `ShardRouter`: a hedge or retry goes to another replica than its batch's earlier calls
  (search/fleet/pinning.py).
The encoder's and the shards' replica classes live in search/fleet/replicas.py, which does not import the
service's HTTP app: a replica process imports only what it runs, and starts sooner from zero.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from search.artifact.version import Artifact
from search.fleet.config import load_fleet
from search.fleet.deadline import AwaitablePending, call_with_deadline
from search.fleet.fanout import RemoteShard, ShardTiming, Warmth, encode_waking, fan_out
from search.fleet.hedge import LatencyWindow
from search.fleet.pinning import CallTag, Pins
from search.fleet.replicas import QueryEncoderReplica, ShardReplica, replica_settings
from search.fleet.switch import RemotePrepare, version_gate
from search.fleet.wire import from_wire
from search.http.app import create_app
from search.query.shard import ShardFanout, ShardHits, ShardQuery
from search.state import RemoteParts

__all__ = ["Ingress", "QueryEncoder", "Shard", "ShardRouter", "build_app"]


class IngressReplica:
    def __init__(self, store: str, config: str | None, timing: ShardTiming, encoder_timing: ShardTiming,
                 encoder: DeploymentHandle, shards: list[DeploymentHandle]):  # type: ignore[type-arg]
        self.settings = replica_settings(store, config)
        self.encoder = encoder
        self.encoder_timing = encoder_timing
        self.encoder_warmth = Warmth(encoder_timing.idle_s)
        window = timing.hedge.window if timing.hedge is not None else 1
        self.shards = [RemoteShard(handle.deployment_name, _shard_call(handle), Warmth(timing.idle_s),
                                   LatencyWindow(window), _wake_call(handle)) for handle in shards]
        self.gate = version_gate([RemotePrepare(handle.deployment_name, _prepare_call(handle)) for handle in shards],
                                 max(timing.timeout_s, timing.cold_start_timeout_s))
        self.timing = timing
        self.service_app: Any = None  # the service app (its state holds the metrics the fan-out counts calls in)

    def __serve_build_asgi_app__(self) -> Any:
        remote = RemoteParts(self._text, self._pixels, self._fanout_for, self.gate)
        self.service_app = create_app(self.settings, remote=remote)
        return OneRequestId(self.service_app)

    async def _text(self, text: str, phase: str, language: str | None = None) -> np.ndarray:
        return await self._encode(lambda: self.encoder.text.remote(text, phase, language))

    async def _pixels(self, pixels: np.ndarray) -> np.ndarray:
        return await self._encode(lambda: self.encoder.pixels.remote(pixels))

    async def _encode(self, start: Callable[[], AwaitablePending]) -> np.ndarray:
        """The encoder's answer; the cold shards are woken as it starts (search/fleet/fanout.py)."""
        return await encode_waking(
            lambda: call_with_deadline(self.encoder.deployment_name, start, self.encoder_warmth, self.encoder_timing),
            self.shards, self.timing, self._count)

    def _fanout_for(self, artifact: Artifact, hidden: frozenset[int]) -> ShardFanout:
        return fan_out(self.shards, str(artifact.path), hidden, self.timing, self._count)

    def _count(self, shard: str, kind: str) -> None:
        service = getattr(getattr(self.service_app, "state", None), "service", None)  # built at the app's start
        if service is not None:
            service.metrics.shard_calls.labels(shard=shard, kind=kind).inc()


class ShardRouter(RequestRouter):
    """Serve's request router for the Shard deployments: power of two choices (two random replicas, the shorter
    queue wins, as Serve's default) among the replicas `Pins` allows a call, which keeps a hedge or retry
    (`tag=CallTag` kwarg) off the replicas its batch's earlier calls were sent to. A replica counts as sent to
    when Serve assigns it, before it accepts: a stopped replica that never answers is still avoided.

    No FIFO mixin: a replica chosen for a hedge goes to that hedge, not to the oldest call waiting (Serve's default
    may hand it to another); no locality mixin either (the default's same-zone preference is dropped for shards).
    `request_router_kwargs`: `ttl_s` and `capacity` of `Pins`."""

    def initialize_state(self, **kwargs: Any) -> None:
        self.pins: Pins[ReplicaID] = Pins(**kwargs)
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()  # assignments whose replica is recorded on arrival

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        tag = _tag(pending_request)
        by_id = {r.replica_id: r for r in candidate_replicas}
        allowed = self.pins.allowed(list(by_id), tag)
        if tag is not None and pending_request is not None and pending_request.future not in self._watched:
            self._watched.add(pending_request.future)  # Serve resets it when it routes the call again
            pending_request.future.add_done_callback(lambda assigned: self._sent(tag, assigned))
        return [[by_id[i] for i in random.sample(allowed, min(2, len(allowed)))]] if allowed else []

    def _sent(self, tag: CallTag, assigned: Any) -> None:
        if not assigned.cancelled() and assigned.exception() is None:
            self.pins.sent(tag, assigned.result().replica_id)


def _tag(pending_request: PendingRequest | None) -> CallTag | None:
    tag = pending_request.kwargs.get("tag") if pending_request is not None else None
    return tag if isinstance(tag, CallTag) else None


class OneRequestId:
    """Serve's proxy always echoes the request's X-Request-ID (making one when the client sent none) and hands
    that id to the app, whose own echo would repeat it: the app's copy is dropped from the response. The app
    still logs with it and puts it in error bodies and the query log."""

    def __init__(self, app: Any):
        self.app = app

    def __getattr__(self, name: str) -> Any:  # Serve reads the app's routes, docs URL and exception handlers
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not any(k == b"x-request-id" for k, _ in scope.get("headers", [])):
            await self.app(scope, receive, send)
            return

        async def send_once(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            await send(message)

        await self.app(scope, receive, send_once)


QueryEncoder: Deployment = serve.deployment(name="QueryEncoder")(QueryEncoderReplica)
Shard: Deployment = serve.deployment(name="Shard")(ShardReplica)
Ingress: Deployment = serve.deployment(name="Ingress")(serve.ingress()(IngressReplica))


class WireAnswer:
    """A shard call whose answer is widened back from the wire (search/fleet/wire.py) when it arrives."""

    def __init__(self, response: Any):
        self.response = response

    def result(self, *, timeout_s: float | None = None) -> list[ShardHits]:
        return from_wire(self.response.result(timeout_s=timeout_s))

    def cancel(self) -> None:
        self.response.cancel()


def _shard_call(handle: DeploymentHandle) -> Any:  # type: ignore[type-arg]
    def call(version_dir: str, vectors: np.ndarray, asks: Sequence[ShardQuery], hidden: frozenset[int],
             tag: CallTag) -> Any:
        return WireAnswer(handle.search.remote(version_dir, vectors, asks, hidden, tag=tag))
    return call


def _wake_call(handle: DeploymentHandle) -> Any:  # type: ignore[type-arg]
    return lambda: handle.wake.remote()


def _prepare_call(handle: DeploymentHandle) -> Any:  # type: ignore[type-arg]
    def call(version_dir: str) -> Any:
        return handle.prepare.remote(version_dir)
    return call


def build_app(args: dict[str, Any]) -> Application:
    """The application of configs/fleet.yaml (`args`: search/fleet/config.py); config errors raise here, at
    deploy, as one line."""
    fleet, _ = load_fleet(args)
    store, config = str(fleet.store.resolve()), str(fleet.config.resolve()) if fleet.config else None
    encoder = QueryEncoder.options(**fleet.encoder.serve_options()).bind(store, config)
    # a batch's calls to one shard end within the first call's budget plus the retry's: ids are kept that long
    pins = {"ttl_s": 2 * (max(fleet.shard_timeout_s, fleet.cold_start_timeout_s) + fleet.shard_timeout_s)}
    router = {"request_router_class": f"{__name__}.{ShardRouter.__name__}", "request_router_kwargs": pins}
    shard_options = {**fleet.shards.serve_options(), "request_router_config": router}
    shards = [Shard.options(name=f"Shard{i}", **shard_options).bind(store, config, i)
              for i in range(fleet.shards.count)]
    timing = ShardTiming(fleet.shard_timeout_s, fleet.cold_start_timeout_s, fleet.shards.idle_to_zero_s(),
                         fleet.hedge.rule() if fleet.hedge is not None else None)
    encoder_timing = ShardTiming(fleet.encoder_timeout_s, fleet.cold_start_timeout_s, fleet.encoder.idle_to_zero_s())
    app: Application = Ingress.options(**fleet.ingress.serve_options()).bind(store, config, timing, encoder_timing,
                                                                             encoder, shards)
    return app
