"""The search fleet (search/fleet/): the fan-out's retry and 503 rules, the fleet args checked at deploy, the
service app with remote parts injected, and the fleet itself on a local Ray with Serve, queried over HTTP and
compared page by page with the single-process service on the same store.

The Ray part starts one local Ray (2 CPUs, fractional reservations, small replica counts) for the module and
shuts Serve and Ray down at the end. Without Ray it skips locally and fails under CI=true (tests/optional.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from search.artifact.manifest import ArtifactError
from search.artifact.version import current_version, open_current
from search.fleet.config import FleetConfigError, load_fleet
from search.fleet.deadline import call_with_deadline
from search.fleet.fanout import RemoteShard, ShardTiming, Warmth, fan_out
from search.fleet.hedge import HedgeRule
from search.fleet.parts import ShardServer
from search.fleet.pinning import CallTag
from search.http.app import create_app
from search.query.shard import ShardHits, ShardQuery, ShardUnavailable
from search.settings import Settings
from search.state import RemoteParts
from tests.fleet_support import Done, Stuck, StuckAwaitable, running_replica_pids
from tests.service_support import ROOT, WorldStore, copy_store, free_port, runtime_for, settings_for, sharded_copy

ONE_SECOND = ShardTiming(1.0, 1.0)  # per call, and for a cold shard
SCORE_TOL = 2e-3  # float16 rows: the fleet's scores may differ from the service's in the last float16 bits


def _hits(n: int) -> list[ShardHits]:
    return [ShardHits(np.array([i], np.int64), np.array([0.5], np.float32), None, None, True) for i in range(n)]


def _shard(name: str, outcomes: list[Done], calls: list[str]) -> RemoteShard:
    def call(version_dir: str, qv: np.ndarray, asks: Sequence[ShardQuery], hidden: frozenset[int],
             tag: CallTag) -> Done:
        calls.append(name)
        return outcomes.pop(0)
    return RemoteShard(name, call)


def test_fan_out_calls_every_shard_and_retries_a_failed_call_once() -> None:
    calls: list[str] = []
    shards = [_shard("Shard0", [Done(_hits(2))], calls),
              _shard("Shard1", [Done(error=TimeoutError("deadline")), Done(_hits(2))], calls)]
    out = fan_out(shards, "v", frozenset(), ONE_SECOND)(np.zeros((2, 4), np.float32), [ShardQuery(fetch=1)] * 2)
    assert calls == ["Shard0", "Shard1", "Shard1"] and [len(per) for per in out] == [2, 2]


def test_a_shard_failing_its_retry_too_stops_the_search_naming_it() -> None:
    calls: list[str] = []
    shards = [_shard("Shard0", [Done(_hits(1))], calls),
              _shard("Shard1", [Done(error=RuntimeError("replica died")),
                                Done(error=TimeoutError("no replica\nsecond line"))], calls)]
    with pytest.raises(ShardUnavailable, match="shard Shard1 is unavailable: TimeoutError: no replica$") as info:
        fan_out(shards, "v", frozenset(), ONE_SECOND)(np.zeros((1, 4), np.float32), [ShardQuery(fetch=1)])
    assert info.value.shard == "Shard1"


def test_a_wrong_answer_from_a_shard_is_a_failure_not_a_short_page() -> None:
    calls: list[str] = []
    shards = [_shard("Shard0", [Done(_hits(1)), Done(_hits(1))], calls)]
    with pytest.raises(ShardUnavailable, match="expected 2 ShardHits"):
        fan_out(shards, "v", frozenset(), ONE_SECOND)(np.zeros((2, 4), np.float32), [ShardQuery(fetch=1)] * 2)


def _config(settings: Settings, path: Path) -> Path:
    path.write_text(json.dumps(settings.model_dump(mode="json", exclude={"store"})), encoding="utf-8")
    return path


@pytest.mark.parametrize(("change", "message"), [
    ({"shards": {"count": 1, "replicas": 2}}, r"^fleet args: shards\.replicas: Extra inputs are not permitted$"),
    ({"shards": {"count": 2}}, r"^shards\.count is 2 but version \S+ of \S+ has 1 part\(s\)$"),
    ({"shards": {"count": 1, "num_replicas": 2, "autoscaling_config": {"min_replicas": 1}}},
     r"^fleet args: shards: Value error, give num_replicas or autoscaling_config, not both$"),
    ({"store": "/nonexistent/store"}, r"^store /nonexistent/store: .*does not exist"),
    ({"hedge": {"min_samples": 300}},
     r"^fleet args: hedge: Value error, min_samples 300 exceeds window 200: the p95 would never be used$"),
    ({"encoder_timeout_s": 0}, r"^fleet args: encoder_timeout_s: Input should be greater than 0$"),
])
def test_fleet_args_that_cannot_deploy_fail_with_one_line(world: WorldStore, tmp_path: Path,
                                                           change: dict[str, Any], message: str) -> None:
    args = {"store": str(world.store), "config": str(_config(settings_for(world), tmp_path / "service.json")),
            "shards": {"count": 1}, **change}
    with pytest.raises(FleetConfigError, match=message) as info:
        load_fleet(args)
    assert "\n" not in str(info.value)


def test_build_app_refuses_a_fleet_that_cannot_deploy(ray_module: Any, world: WorldStore) -> None:
    from search.fleet.app import build_app

    with pytest.raises(FleetConfigError, match="^shards.count is 3 but"):
        build_app({"store": str(world.store), "shards": {"count": 3}})


def test_build_app_routes_every_shard_with_the_router_that_keeps_hedges_off_the_first_replica(
        ray_module: Any, world: WorldStore) -> None:
    """Each Shard deployment gets ShardRouter as its Serve request router (the fan-out's tags need it), remembering a
    batch's replicas as long as its calls may run: the first call's budget plus the retry's, twice."""
    from search.fleet.app import build_app

    app = build_app({"store": str(world.store), "shards": {"count": 1}, "shard_timeout_s": 4})
    (shard,) = app._bound_deployment.init_args[-1]  # Ingress.bind(store, config, ..., encoder, shards)
    router = shard._bound_deployment._deployment_config.request_router_config
    assert shard._bound_deployment.name == "Shard0"
    assert router.request_router_class == "search.fleet.app.ShardRouter"
    assert router.get_request_router_class().__name__ == "ShardRouter"
    assert router.request_router_kwargs == {"ttl_s": 2 * (60.0 + 4)}


def test_fleet_args_in_configs_fleet_yaml_are_valid_for_a_one_part_store(world: WorldStore) -> None:
    import yaml

    shipped = yaml.safe_load((ROOT / "configs" / "fleet.yaml").read_text(encoding="utf-8"))
    (app,) = shipped["applications"]
    assert app["import_path"] == "search.fleet.app:build_app"
    fleet, _ = load_fleet({**app["args"], "store": str(world.store), "config": str(ROOT / app["args"]["config"])})
    assert fleet.shards.autoscaling_config is not None and fleet.shards.autoscaling_config["min_replicas"] == 2
    assert fleet.hedge is not None and fleet.hedge.rule() == HedgeRule()  # the YAML spells out the defaults
    cpus = sum(d.ray_actor_options.num_cpus * (d.autoscaling_config or {}).get("min_replicas", d.num_replicas or 1)
               * (fleet.shards.count if d is fleet.shards else 1) for d in (fleet.ingress, fleet.encoder, fleet.shards))
    assert cpus <= 2.0  # the shipped fleet starts on one 2-core machine


def test_the_scale_to_zero_variant_keeps_the_ingress_warm(world: WorldStore) -> None:
    import yaml

    shipped = yaml.safe_load((ROOT / "configs" / "fleet-scale-to-zero.yaml").read_text(encoding="utf-8"))
    (app,) = shipped["applications"]
    args = {**app["args"], "store": str(world.store), "config": str(ROOT / app["args"]["config"])}
    fleet, _ = load_fleet(args)
    assert fleet.ingress.idle_to_zero_s() is None and fleet.ingress.num_replicas == 1
    assert fleet.encoder.idle_to_zero_s() == fleet.shards.idle_to_zero_s() == 300.0
    with pytest.raises(FleetConfigError, match="^ingress.autoscaling_config.min_replicas: the ingress stays warm"):
        load_fleet({**args, "ingress": {"autoscaling_config": {"min_replicas": 0}}})


def test_the_kuberay_manifest_deploys_the_same_application_as_configs_fleet_yaml() -> None:
    import yaml

    shipped = yaml.safe_load((ROOT / "configs" / "fleet.yaml").read_text(encoding="utf-8"))
    manifest = yaml.safe_load((ROOT / "docs" / "deploy" / "photostock-fleet.rayservice.yaml").read_text("utf-8"))
    assert manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["args"].pop("store") == "/data/store"
    (want,) = shipped["applications"]
    want["args"].pop("store")
    assert app == want


# -- the service app with remote parts injected (no Ray): the seam the ingress uses -----------------------------

def _local_remote(world: WorldStore, fail: bool = False) -> RemoteParts:
    """Remote parts that run in this process: the text tower, the image tower and a ShardServer per call."""
    encoder = runtime_for(world)
    server = ShardServer(settings_for(world), 0)

    async def text(query: str, phase: str, language: str | None = None) -> np.ndarray:
        return np.asarray(encoder.text.encode([query])[0], np.float32)

    async def pixels(values: np.ndarray) -> np.ndarray:
        return np.asarray(encoder.image.encode_pixels(values[None])[0], np.float32)

    def call(version_dir: str, qv: np.ndarray, asks: Sequence[ShardQuery], hidden: frozenset[int],
             tag: CallTag) -> Done:
        if fail:
            return Done(error=ConnectionError("no replica of Shard0 is running"))
        return Done(server.search(version_dir, qv, asks, hidden))

    return RemoteParts(text, pixels, lambda artifact, hidden: fan_out([RemoteShard("Shard0", call)],
                                                                      str(artifact.path), hidden, ONE_SECOND))


def _slow_remote(world: WorldStore, encoder_stuck: int) -> tuple[RemoteParts, list[Stuck], list[StuckAwaitable]]:
    """Remote parts whose shard has a replica that never answers (every batch's first call goes to it, its
    second to the other: Serve's router would pick the replica the first call does not occupy), and whose
    encoder's first `encoder_stuck` out of every 2 calls never answer. Hedge after 10 ms; deadlines 60 s for
    shards, 0.5 s for the encoder. Returns the parts and the stuck calls made."""
    import itertools

    local = _local_remote(world)
    server = ShardServer(settings_for(world), 0)
    stuck: list[Stuck] = []
    stuck_encodes: list[StuckAwaitable] = []
    shard_calls, encoder_calls = itertools.count(), itertools.count()

    def call(version_dir: str, qv: np.ndarray, asks: Sequence[ShardQuery], hidden: frozenset[int],
             tag: CallTag) -> Any:
        if next(shard_calls) % 2 == 0:
            stuck.append(Stuck())
            return stuck[-1]
        return Done(server.search(version_dir, qv, asks, hidden))

    shard = RemoteShard("Shard0", call)
    timing = ShardTiming(60.0, 60.0, hedge=HedgeRule(min_samples=10**6, window=10**6, default_s=0.01))
    warmth, encoder_timing = Warmth(None), ShardTiming(0.5, 0.5)

    async def text(query: str, phase: str, language: str | None = None) -> np.ndarray:
        async def encode() -> np.ndarray:
            return await local.text(query, phase, language)

        def start() -> Any:
            if next(encoder_calls) % 2 < encoder_stuck:
                stuck_encodes.append(StuckAwaitable())
                return stuck_encodes[-1]
            return asyncio.ensure_future(encode())  # awaitable, with cancel(), as a DeploymentResponse

        return await call_with_deadline("QueryEncoder", start, warmth, encoder_timing)  # type: ignore[no-any-return]

    parts = RemoteParts(text, local.pixels, lambda artifact, hidden: fan_out([shard], str(artifact.path), hidden,
                                                                             timing))
    return parts, stuck, stuck_encodes


def test_a_slow_shard_replica_is_hedged_and_a_stuck_encoder_call_retried_the_pages_unchanged(
        world: WorldStore) -> None:
    requests = _requests(world)
    want = _single_process_pages(world, requests)
    remote, stuck, stuck_encodes = _slow_remote(world, encoder_stuck=1)
    got = _single_process_pages(world, requests, remote=remote)
    for g, w, (method, path, kw) in zip(got, want, requests, strict=True):
        _assert_same_page(g, w, f"{method} {path} {kw.get('params') or kw.get('json')}")
    assert len(stuck) >= 8 and all(call.cancelled.wait(10) for call in stuck)  # each lost to its hedge
    assert stuck_encodes and all(call.cancelled.wait(10) for call in stuck_encodes)  # each passed its deadline


def test_an_encoder_that_does_not_answer_gives_503_naming_it_with_retry_after(world: WorldStore) -> None:
    remote, _, stuck_encodes = _slow_remote(world, encoder_stuck=2)
    app = create_app(settings_for(world), encoder=runtime_for(world), remote=remote)
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        r = client.get("/search", params={"q": world.queries[0]["query"], "k": 5})
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    body = r.json()
    assert body["error"] == "query encoder QueryEncoder is unavailable: TimeoutError: no answer within 0.5 s"
    assert body["detail"] == {"encoder": "QueryEncoder"} and body["request_id"] == r.headers["x-request-id"]
    assert len(stuck_encodes) == 2  # the call and its one retry


def test_every_replica_of_a_shard_gone_answers_503_naming_it_with_retry_after(world: WorldStore) -> None:
    app = create_app(settings_for(world), encoder=runtime_for(world), remote=_local_remote(world, fail=True))
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        r = client.get("/search", params={"q": world.queries[0]["query"], "k": 5})
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    body = r.json()
    assert body["error"].startswith("shard Shard0 is unavailable: ConnectionError") and body["detail"] == {
        "shard": "Shard0"} and body["request_id"] == r.headers["x-request-id"]


def test_a_shard_refuses_a_corrupt_part_of_the_next_version_and_keeps_serving_its_own(world: WorldStore,
                                                                                      tmp_path: Path) -> None:
    """What a shard answers the ingress's `prepare`: ready for a good next version; for a corrupt part the reason
    (sha256 of its own files, checked before it reports ready), while the version it serves still searches."""

    from search.artifact.version import current_path
    from search.fleet.switch import PartReady, RemotePrepare, prepare_all

    store = copy_store(world, tmp_path / "store")
    server = ShardServer(settings_for(world, store), 0)
    serving = current_path(store)
    good, broken = store / "versions" / "next", store / "versions" / "next-broken"
    shutil.copytree(serving, good)
    _corrupt_copy(serving, broken)
    version = current_version(store)
    assert server.prepare(str(good)) == PartReady(str(version))
    refused = server.prepare(str(broken))
    assert refused.error == f"part 0: version {version}: vectors.f16.npy fails its sha256 checksum"
    shard = RemotePrepare("Shard0", lambda version_dir: Done(server.prepare(version_dir)))
    with pytest.raises(ArtifactError, match=r"stays on the version it serves: Shard0 refused it \(part 0: "):
        prepare_all([shard], str(broken), str(version), 1.0)
    qv = np.zeros((1, runtime_for(world).dim), np.float32)
    qv[0, 0] = 1.0
    (hits,) = server.search(str(serving), qv, [ShardQuery(fetch=3)], frozenset())
    assert len(hits.ids) == 3
    server.close()


def test_a_shard_answer_travels_as_float16_and_arrives_as_the_same_float32_rows(world: WorldStore) -> None:
    import pickle

    from search.artifact.version import current_path
    from search.fleet.wire import from_wire, to_wire

    server = ShardServer(settings_for(world), 0)
    qv = np.load(world.store / "vectors.npy")[:2].astype(np.float32)
    hits = server.search(str(current_path(world.store)), qv, [ShardQuery(fetch=20), ShardQuery(fetch=5, exact=False)],
                         frozenset())
    server.close()
    wire = to_wire(hits)
    back = from_wire(pickle.loads(pickle.dumps(wire)))
    assert hits[0].vectors is not None and hits[0].vectors.dtype == np.float32 and hits[1].vectors is None
    assert back[0].vectors is not None and back[0].vectors.dtype == np.float32
    assert np.array_equal(back[0].vectors, hits[0].vectors) and back[1].vectors is None  # exact, not close
    assert [b.ids.tolist() for b in back] == [h.ids.tolist() for h in hits]
    assert len(pickle.dumps(wire)) < 0.7 * len(pickle.dumps(hits))


# -- requests compared between the fleet and the single-process service ---------------------------------------

def _requests(world: WorldStore) -> list[tuple[str, str, dict[str, Any]]]:
    # queries no other fleet test asks (the fleet's query cache then answers "miss" as a fresh service does)
    queries = [q["query"] for q in world.queries[-3:]]
    with open_current(world.store) as artifact:
        similar = int(artifact.ids[7])
    upload = (world.image_root / next(iter(world.ids_by_path))).read_bytes()
    filters = {"licence": ["CC0-1.0"], "orientation": "landscape"}
    return [
        *[("GET", "/search", {"params": {"q": q, "k": 7}}) for q in queries],
        ("GET", "/search", {"params": {"q": queries[0], "k": 5, "offset": 5}}),
        ("GET", "/search", {"params": {"q": queries[1], "k": 6, "phase": "fast"}}),
        ("POST", "/search", {"json": {"query": queries[2], "k": 4, "offset": 3, "filters": filters, "dedup": True,
                                      "diversity": 0.3}}),
        ("POST", "/search", {"json": {"query": queries[0], "k": 10, "filters": {"orientation": "portrait"}}}),
        ("GET", f"/search/similar/{similar}", {"params": {"k": 5, "offset": 2}}),
        ("POST", "/search/image", {"params": {"k": 6, "offset": 1},
                                   "files": {"file": ("q.jpg", upload, "image/jpeg")}}),
        ("GET", "/search", {"params": {"q": queries[0], "k": 0}}),  # 422, the same body
        ("GET", "/search/similar/5", {}),  # 404: no such image
    ]


def _page(response: Any) -> dict[str, Any]:  # httpx's or TestClient's response
    body = response.json()
    body.pop("timings_ms", None)
    body.pop("request_id", None)
    return {"status": response.status_code, **body}


def _assert_same_page(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    if "hits" not in want:
        assert got == want, what
        return
    got_hits, want_hits = got.pop("hits"), want.pop("hits")
    assert got == want, what
    assert [h["id"] for h in got_hits] == [h["id"] for h in want_hits], what
    for g, w in zip(got_hits, want_hits, strict=True):
        for key in ("score", "similarity"):
            assert g[key] == pytest.approx(w[key], abs=SCORE_TOL), what
        assert {k: v for k, v in g.items() if k not in ("score", "similarity")} == \
            {k: v for k, v in w.items() if k not in ("score", "similarity")}, what


def _single_process_pages(world: WorldStore, requests: list[tuple[str, str, dict[str, Any]]],
                          remote: RemoteParts | None = None) -> list[dict[str, Any]]:
    app = create_app(settings_for(world), encoder=runtime_for(world), remote=remote)
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        return [_page(client.request(method, path, **kw)) for method, path, kw in requests]


def test_the_app_with_remote_parts_answers_the_single_process_pages(world: WorldStore) -> None:
    requests = _requests(world)
    want = _single_process_pages(world, requests)
    got = _single_process_pages(world, requests, remote=_local_remote(world))
    assert [p["status"] for p in want] == [200] * 9 + [422, 404]
    for g, w, (method, path, kw) in zip(got, want, requests, strict=True):
        _assert_same_page(g, w, f"{method} {path} {kw.get('params') or kw.get('json')}")


def _corrupt_copy(version: Path, target: Path) -> None:
    """A copy of a version whose vectors file has its last byte flipped: its size is right, its sha256 is not."""
    shutil.copytree(version, target)
    vectors = target / "vectors.f16.npy"
    vectors.chmod(0o644)
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF
    vectors.write_bytes(bytes(data))


# -- the fleet on a local Ray -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(ray_module: Any, world: WorldStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fleet app deployed by Serve's Python API on a local 2-CPU Ray, over a private copy of the world's
    store (the takedown test writes to it); yields its HTTP base URL."""
    from ray import serve

    from search.fleet.app import build_app

    base = tmp_path_factory.mktemp("fleet")
    store = copy_store(world, base / "store")
    # no result-page cache at the ingress: every search reaches the shards (the pages are the same either way)
    settings = settings_for(world, store)
    config = _config(settings.model_copy(update={"cache": settings.cache.model_copy(update={"results_max_mb": 0})}),
                     base / "service.json")
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    args = {"store": str(store), "config": str(config), "shard_timeout_s": 30,
            "ingress": {"num_replicas": 1, **small}, "encoder": {"num_replicas": 1, **small},
            "shards": {"count": 1, "num_replicas": 2, **small}}
    ray_module.init(num_cpus=2, object_store_memory=128 * 2**20, include_dashboard=False, logging_level="WARNING")
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="photostock", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray_module.shutdown()  # type: ignore[no-untyped-call]


@pytest.mark.slow
def test_fleet_pages_equal_the_single_process_service(fleet: str, world: WorldStore) -> None:
    requests = _requests(world)
    want = _single_process_pages(world, requests)
    with httpx.Client(base_url=fleet, timeout=120) as client:
        got = [_page(client.request(method, path, **kw)) for method, path, kw in requests]
    for g, w, (method, path, kw) in zip(got, want, requests, strict=True):
        _assert_same_page(g, w, f"{method} {path} {kw.get('params') or kw.get('json')}")


@pytest.mark.slow
def test_fleets_of_two_and_three_shards_answer_the_single_process_pages(fleet: str, world: WorldStore,
                                                                       tmp_path: Path) -> None:
    """The same catalogue published in 2 and 3 parts, each part a Shard deployment: the ingress merges their
    answers into the pages the single-process service gives on the unsharded version (ids, order, totals)."""
    from ray import serve

    from search.fleet.app import build_app

    requests = _requests(world)
    want = _single_process_pages(world, requests)
    small = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
    for shards in (2, 3):
        store = sharded_copy(world, tmp_path / f"s{shards}", shards)
        settings = settings_for(world, store)
        config = _config(settings.model_copy(update={"cache": settings.cache.model_copy(
            update={"results_max_mb": 0})}), tmp_path / f"service-{shards}.json")
        args = {"store": str(store), "config": str(config), "shard_timeout_s": 30, "ingress": small,
                "encoder": small, "shards": {"count": shards, **small}}
        serve.run(build_app(args), name="photostock-sharded", route_prefix="/sharded")
        try:
            with httpx.Client(base_url=f"{fleet}/sharded", timeout=120) as client:
                got = [_page(client.request(method, path, **kw)) for method, path, kw in requests]
        finally:
            serve.delete("photostock-sharded")
        # the same catalogue republished sharded: another version name, wherever a page or an error names it
        renamed = [json.loads(json.dumps(g).replace(str(current_version(store)), str(current_version(world.store))))
                   for g in got]
        for g, w, (method, path, kw) in zip(renamed, want, requests, strict=True):
            _assert_same_page(g, dict(w), f"S={shards}: {method} {path} {kw.get('params') or kw.get('json')}")


@pytest.mark.slow
def test_fleet_serves_the_service_api_around_the_search(fleet: str, world: WorldStore) -> None:
    with httpx.Client(base_url=fleet, timeout=120) as client:
        ready = client.get("/readyz")
        search = client.get("/search", params={"q": world.queries[0]["query"]}, headers={"X-Request-ID": "fleet-1"})
        bad = client.get("/search", params={"q": "x", "k": 0})  # no X-Request-ID: Serve's proxy makes one
        metrics = client.get("/metrics").text
        page = client.get("/")
        deployments = client.get("/openapi.json").json()["paths"]
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert search.status_code == 200 and search.headers.get_list("x-request-id") == ["fleet-1"]
    assert bad.status_code == 422 and [bad.json()["request_id"]] == bad.headers.get_list("x-request-id")
    assert "server-timing" in search.headers
    assert 'photostock_request_seconds_count{route="/search",status="200"}' in metrics
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert {"/search", "/search/image", "/search/similar/{image_id}", "/admin/takedown"} <= set(deployments)


@pytest.mark.slow
def test_a_takedown_through_the_fleet_hides_the_image_from_every_shard_at_once(fleet: str, world: WorldStore) -> None:
    query = {"q": world.queries[1]["query"], "k": 5}
    with httpx.Client(base_url=fleet, timeout=120) as client:
        before = [h["id"] for h in client.get("/search", params=query).json()["hits"]]
        done = client.post("/admin/takedown", json={"ids": [before[0]], "reason": "fleet test"})
        during = [h["id"] for h in client.get("/search", params=query).json()["hits"]]
        similar = client.get(f"/search/similar/{before[0]}")
        client.post("/admin/takedown", json={"ids": [before[0]], "reason": "fleet test", "restore": True})
        after = [h["id"] for h in client.get("/search", params=query).json()["hits"]]
    assert done.status_code == 200 and done.json()["active"] == 1
    assert before[0] not in during and during[:4] == before[1:]
    assert similar.status_code == 404 and after == before


def _shard_calls(client: httpx.Client, kind: str) -> float:
    """The ingress's shard calls of one kind so far (photostock_shard_calls_total in /metrics)."""
    lines = [line for line in client.get("/metrics").text.splitlines()
             if line.startswith("photostock_shard_calls_total{") and f'kind="{kind}"' in line]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


@pytest.mark.slow
def test_a_stopped_shard_replica_is_hedged_around(fleet: str, world: WorldStore) -> None:
    """One of Shard0's two replica processes stopped (SIGSTOP: alive but answering nothing, as a replica in a
    long pause): every search is answered far within the 30 s shard deadline (no deadline and retry needed), with
    the pages it gave before. A first call that Serve's router sends to the stopped replica is answered by the
    hedge to the other one; the router may also avoid it (its queue-length probe goes unanswered), so how many
    calls were hedged depends on Serve's routing and is not asserted here (tests/test_fleet_hedge.py pins the
    hedge itself): a call left on the stopped replica without a hedge would wait the 30 s deadline and fail."""
    import os
    import signal
    import time

    from ray import serve
    from ray.serve.schema import ReplicaState

    deployments = serve.status().applications["photostock"].deployments
    assert deployments["Shard0"].replica_states.get(ReplicaState.RUNNING) == 2
    pids = running_replica_pids("photostock", "Shard0", 2)
    queries = [{"q": q["query"], "k": 5} for q in world.queries[10:26]]  # no other fleet test asks these
    with httpx.Client(base_url=fleet, timeout=120) as client:
        want = [[h["id"] for h in client.get("/search", params=q).json()["hits"]] for q in queries]
        hedges, retries = _shard_calls(client, "hedge"), _shard_calls(client, "retry")
        got, slowest = [], 0.0
        os.kill(pids[0], signal.SIGSTOP)
        try:
            for q in queries:  # one at a time: about half of the first calls go to the stopped replica
                start = time.perf_counter()
                r = client.get("/search", params=q)
                slowest = max(slowest, time.perf_counter() - start)
                got.append((r.status_code, [h["id"] for h in r.json().get("hits", [])]))
        finally:
            os.kill(pids[0], signal.SIGCONT)
        hedged = _shard_calls(client, "hedge") - hedges
        assert _shard_calls(client, "retry") == retries, hedged
    assert got == [(200, ids) for ids in want]
    assert slowest < 10.0, (slowest, hedged)  # a hedged (or well-routed) answer, not the 30 s deadline


@pytest.mark.slow
def test_a_hedge_or_retry_goes_to_another_replica_than_its_first_call_with_equal_queues(
        fleet: str, ray_module: Any) -> None:
    """Serve's own routing with the Shard deployments' router, on two replicas: per round, an untagged call held
    open on one replica and a batch's first call held open (routed before the next call starts), so the queues are
    equal when the batch's hedge or retry is routed; it runs on the replica the first call did not, every round.
    Serve's default router picks by queue length, here either replica: 8 rounds would pass by chance 1 in 256."""
    from ray import serve

    class Gate:  # holds the calls that wait on it open until the test opens it (defined here: pickled by value)
        def __init__(self) -> None:
            self.opened = asyncio.Event()

        async def wait(self) -> None:
            await self.opened.wait()

        async def open(self) -> None:
            self.opened.set()

    class Probe:  # answers with the replica that ran the call, once `gate` (if any) opens
        async def call(self, gate: Any = None, tag: CallTag | None = None) -> str:
            if gate is not None:
                await gate.wait.remote()
            return str(serve.get_replica_context().replica_id.unique_id)

    probe = serve.deployment(name="Probe", num_replicas=2, max_ongoing_requests=8,
                             ray_actor_options={"num_cpus": 0.05},
                             request_router_config={"request_router_class": "search.fleet.app.ShardRouter"})(Probe)
    serve.run(probe.bind(), name="pinning", route_prefix="/pinning")
    try:
        handle = serve.get_deployment_handle("Probe", app_name="pinning")
        rounds = []
        for i in range(8):
            gate = ray_module.remote(num_cpus=0)(Gate).remote()
            tag = CallTag(f"batch-{i}", "first")
            other: Any = handle.call.remote(gate)
            other._to_object_ref_sync(_timeout_s=60)  # assigned to a replica
            first: Any = handle.call.remote(gate, tag=tag)
            first._to_object_ref_sync(_timeout_s=60)
            again = handle.call.remote(tag=CallTag(tag.id, "hedge" if i % 2 else "retry")).result(timeout_s=60)
            gate.open.remote()
            rounds.append((first.result(timeout_s=60), again, other.result(timeout_s=60)))
    finally:
        serve.delete("pinning")
    assert len({r for r, _, _ in rounds} | {r for _, r, _ in rounds}) == 2  # both replicas ran calls
    assert all(first != again for first, again, _ in rounds), rounds


@pytest.mark.slow
def test_a_stopped_query_encoder_gives_503_naming_it_not_a_hang(fleet: str, world: WorldStore) -> None:
    """The QueryEncoder's one replica stopped (SIGSTOP): a query whose vector is not cached waits the encoder
    deadline twice (the call, then its one retry; 5 s each, the default) and answers 503 naming the encoder with
    Retry-After; a cached query still answers; once the replica runs again, the query is answered."""
    import os
    import signal
    import time

    (pid,) = running_replica_pids("photostock", "QueryEncoder", 1)
    cached, fresh = world.queries[30]["query"], world.queries[31]["query"]  # no other fleet test asks these
    with httpx.Client(base_url=fleet, timeout=120) as client:
        assert client.get("/search", params={"q": cached, "k": 3}).status_code == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.perf_counter()
            refused = client.get("/search", params={"q": fresh, "k": 3})
            waited = time.perf_counter() - start
            still = client.get("/search", params={"q": cached, "k": 3})
        finally:
            os.kill(pid, signal.SIGCONT)
        later = client.get("/search", params={"q": fresh, "k": 3})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.json()["error"] == "query encoder QueryEncoder is unavailable: TimeoutError: no answer within 5 s"
    assert refused.json()["detail"] == {"encoder": "QueryEncoder"}
    assert 10.0 <= waited < 60.0, waited  # two deadlines, then the answer: no hang
    assert still.status_code == 200 and later.status_code == 200


@pytest.mark.slow
def test_a_killed_shard_replica_fails_no_request(fleet: str, world: WorldStore, ray_module: Any) -> None:
    """One of Shard0's two replicas killed (ray.kill: no graceful exit, like kill -9) while 8 clients search:
    calls it had or gets before the router learns of it are retried on the other replica, so every request is
    answered in full and equal to the page before the kill."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve
    from ray.serve.schema import ReplicaState

    status = serve.status().applications["photostock"]  # one deployment per shard, two replicas each
    assert set(status.deployments) == {"Ingress", "QueryEncoder", "Shard0"}
    assert status.deployments["Shard0"].replica_states.get(ReplicaState.RUNNING) == 2
    mine = "SERVE_REPLICA::photostock#Shard0#"  # this app's replicas, not another test app's Shard0
    replicas = [a for a in ray_module.util.list_named_actors(all_namespaces=True) if a["name"].startswith(mine)]
    assert len(replicas) == 2
    queries = [{"query": q["query"], "k": 5} for q in world.queries[:8]]
    with httpx.Client(base_url=fleet, timeout=120) as client:
        want = [[h["id"] for h in client.post("/search", json=q).json()["hits"]] for q in queries]
    answered = threading.Event()

    def ask(query: dict[str, Any]) -> tuple[int, list[int]]:
        with httpx.Client(base_url=fleet, timeout=120) as client:  # every search reaches the shards (no page cache)
            r = client.post("/search", json=query)
        answered.set()
        return r.status_code, [h["id"] for h in r.json().get("hits", [])]

    with ThreadPoolExecutor(8) as pool:
        load = pool.map(ask, queries * 6)
        assert answered.wait(120)  # the load is running: kill a replica under it
        ray_module.kill(ray_module.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]))
        got = list(load)
    assert [status for status, _ in got] == [200] * len(got)
    assert [ids for _, ids in got] == want * 6


# -- a fleet whose encoder and shards scale to zero, over a store that gets new versions -------------------------

ZERO = {"min_replicas": 0, "max_replicas": 1, "upscale_delay_s": 0, "downscale_delay_s": 2,
        "downscale_to_zero_delay_s": 2, "metrics_interval_s": 0.5, "look_back_period_s": 2}


@pytest.fixture(scope="module")
def zero_fleet(fleet: str, world: WorldStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A second application on the module's Ray: QueryEncoder and Shard0 with min_replicas 0 (they start at
    zero and go back to zero after 2 s idle), the ingress watching its private store copy every 0.2 s with
    size checks (the shards check a new part's sha256 themselves). Yields (base URL, store)."""
    from ray import serve

    from search.fleet.app import build_app

    base = tmp_path_factory.mktemp("zero-fleet")
    store = copy_store(world, base / "store")
    settings = settings_for(world, store)
    settings = settings.model_copy(update={
        "cache": settings.cache.model_copy(update={"results_max_mb": 0}),
        "reload": settings.reload.model_copy(update={"watch": True, "poll_s": 0.2, "verify_checksums": False})})
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    args = {"store": str(store), "config": str(_config(settings, base / "service.json")), "shard_timeout_s": 30,
            "cold_start_timeout_s": 120, "ingress": {"num_replicas": 1, **small},
            "encoder": {"autoscaling_config": ZERO, **small},
            "shards": {"count": 1, "autoscaling_config": ZERO, **small}}
    serve.run(build_app(args), name="photostock-zero", route_prefix="/zero")
    try:
        yield f"{fleet}/zero", store
    finally:
        serve.delete("photostock-zero")


def _until(what: str, probe: Any, deadline_s: float = 120.0) -> Any:
    """Poll `probe` until it returns something true (a condition on a running fleet, not a fixed wait)."""
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = probe()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"not within {deadline_s} s: {what}")


@pytest.mark.slow
def test_the_first_query_after_scale_to_zero_is_answered(zero_fleet: tuple[str, Path], world: WorldStore) -> None:
    from ray import serve
    from ray.serve.schema import ReplicaState  # type: ignore[attr-defined]

    url, _ = zero_fleet

    def at_zero() -> bool:
        deployments = serve.status().applications["photostock-zero"].deployments
        return all(not deployments[name].replica_states.get(ReplicaState.RUNNING)
                   for name in ("QueryEncoder", "Shard0"))

    _until("encoder and shard at zero replicas", at_zero)
    with httpx.Client(base_url=url, timeout=180) as client:
        ready = client.get("/readyz")  # the ingress stays warm: ready with nothing else running
        assert at_zero()
        wakes = _shard_calls(client, "wake")
        first = client.get("/search", params={"q": world.queries[3]["query"], "k": 5})
        woken = _shard_calls(client, "wake") - wakes
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert first.status_code == 200, first.text
    assert len(first.json()["hits"]) == 5
    assert woken == 1  # Shard0 was woken as the encode started (its replica starting beside the encoder's)


@pytest.mark.slow
def test_versions_switch_together_and_a_reload_under_load_fails_no_request(zero_fleet: tuple[str, Path],
                                                                             world: WorldStore) -> None:
    """v+1 with a corrupt part (one byte of the rerank vectors changed) keeps the fleet on v with the reason in
    /readyz (on this tiny store the ingress's own open already hashes files of at most 4 MiB and refuses it; a
    shard's refusal is tested without Ray below); then a good v+2, published while a client searches in a
    loop, is switched to with no failed request and the answers change to v+2's."""
    import threading

    from indexer.index.publish import flip_current
    from search.artifact.version import current_path
    from tests.service_support import encoder_for, publish

    url, store = zero_fleet
    query = {"q": world.queries[2]["query"], "k": 5}
    client = httpx.Client(base_url=url, timeout=180)
    before = [h["id"] for h in client.get("/search", params=query).json()["hits"]]
    serving = client.get("/readyz").json()["version"]

    current = current_path(store)
    broken = store / "versions" / f"{current.name}-broken"
    _corrupt_copy(current, broken)
    flip_current(store, broken)
    ready = _until("the broken version refused", lambda: (r := client.get("/readyz").json())["last_reload_error"] and r)
    assert ready["ready"] is True and ready["version"] == serving
    assert "vectors.f16.npy fails its sha256 checksum" in ready["last_reload_error"], ready
    assert [h["id"] for h in client.get("/search", params=query).json()["hits"]] == before

    answers: list[tuple[int, list[int]]] = []
    stop, started = threading.Event(), threading.Event()

    def search_in_a_loop() -> None:
        with httpx.Client(base_url=url, timeout=180) as loop_client:
            while not stop.is_set():
                r = loop_client.get("/search", params=query)
                answers.append((r.status_code, [h["id"] for h in r.json().get("hits", [])]))
                started.set()

    thread = threading.Thread(target=search_in_a_loop)
    thread.start()
    try:
        assert started.wait(120)
        with open_current(world.store) as artifact:
            ids = [int(i) for i in artifact.ids]
        keep = [row for row, image_id in enumerate(ids) if image_id != before[0]]  # v+2 lacks v's top hit
        newer = publish(store, world.image_root, encoder_for(world.checkpoint), store / "metadata.sqlite",
                        [ids[row] for row in keep], np.load(store / "vectors.npy")[keep], onnx_cache=world.onnx_cache)
        _until("answers from v+2", lambda: answers and answers[-1][1] and before[0] not in answers[-1][1])
        switched = client.get("/readyz").json()
    finally:
        stop.set()
        thread.join()
        client.close()
    assert switched["version"] == newer and switched["last_reload_error"] is None
    assert [status for status, _ in answers] == [200] * len(answers)
    assert answers[0][1] == before and answers[-1][1][:4] == before[1:]
