"""Service area: the session pool's dispatch policy (overflow to a slower member under load) and its faults
(a member that raises or hangs is taken out and its batch retried once elsewhere; none left: not ready)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.models.clip import load_encoder
from indexer.models.towers import TorchTextEncoder
from search.http.app import create_app
from search.runtime.costs import CostModel
from search.runtime.pool import Member, PoolMetrics, PoolUnavailable, SessionPool
from tests.service_support import runtime_for, settings_for

WORDS = "a small large red green blue star circle square on sand grass water background next to the".split()


@pytest.fixture(scope="module")
def text():
    import torch

    torch.manual_seed(5)
    return TorchTextEncoder(load_encoder("tiny", pretrained="random", device="cpu"))


def _queries(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)))) for _ in range(n)]


def slowed(run, delay_s: float):
    """A real session with an added delay: a slower device of known, measured cost."""
    def slow(tokens: np.ndarray) -> np.ndarray:
        time.sleep(delay_s)
        return run(tokens)
    return slow


def _member(name: str, run, cap: int = 2) -> Member:
    return Member(name, "cpu", run, CostModel(), max_batch=cap)


def _calibrated(members: list[Member], text: TorchTextEncoder) -> list[Member]:
    tokens = text.tokenize(["a large orange square on sand"])
    for m in members:
        m.cost.calibrate(m.run, tokens[:, : int(text.lengths(tokens)[0])])
    return members


async def _submit_all(pool: SessionPool, text: TorchTextEncoder, queries: list[str]):
    """Every query at once; returns (vectors, seconds from submit to result per query)."""
    async def one(q: str) -> tuple[np.ndarray, float]:
        tokens = text.tokenize([q])
        start = time.perf_counter()
        vec = await pool.submit(tokens[0], int(text.lengths(tokens)[0]))
        return vec, time.perf_counter() - start
    out = await asyncio.gather(*(one(q) for q in queries))
    return np.stack([v for v, _ in out]), np.array([s for _, s in out])


def _count(metrics: PoolMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_overflow_sends_batches_to_a_slower_member_when_the_primary_cannot_hold_the_budget(text):
    """Dispatch behaviour only: which member ran how many batches, and that every answer is right. What the
    overflow does to the tail and to queueing is a speed figure: benchmarks/pool_overflow.py measures it
    against a single-member baseline in the same run."""
    queries = _queries(96)
    budget = 0.05
    # The "GPU" costs 20 ms a batch, the "CPU" 60 ms (calibrated, so the costs the pool predicts are these):
    # 48 batches of 2 cannot all wait < 50 ms on one member, so the policy must overflow some.
    fast = slowed(text.encode_token_ids, 0.020)
    slow = slowed(text.encode_token_ids, 0.060)
    results = {}
    for config, members in {"single": [_member("gpu", fast)],
                            "pool": [_member("gpu", fast), _member("cpu", slow)]}.items():
        metrics = PoolMetrics()
        pool = SessionPool(_calibrated(members, text), latency_budget_s=budget, timeout_s=30, metrics=metrics,
                           batch_budget_s=10.0)
        try:
            vectors, _ = asyncio.run(_submit_all(pool, text, queries))
        finally:
            pool.close()
        results[config] = (vectors, metrics)
    expected = np.stack([text.encode([q])[0] for q in queries])
    for vectors, _ in results.values():
        np.testing.assert_allclose(vectors, expected, atol=1e-5, rtol=0)
    metrics = results["pool"][1]
    to_cpu = sum(_count(metrics, "photostock_pool_dispatch_total", member="cpu", reason=r)
                 for r in ("best", "overflow"))
    to_gpu = sum(_count(metrics, "photostock_pool_dispatch_total", member="gpu", reason=r)
                 for r in ("best", "overflow"))
    overflowed = _count(metrics, "photostock_pool_dispatch_total", member="cpu", reason="overflow")
    single = results["single"][1]
    alone = sum(_count(single, "photostock_pool_dispatch_total", member="gpu", reason=r) for r in ("best", "overflow"))
    assert overflowed >= 3 and to_cpu >= 3 and to_gpu > to_cpu  # the primary keeps most work; overflow goes
    assert _count(single, "photostock_pool_dispatch_total", member="cpu", reason="overflow") == 0
    assert to_gpu < alone  # the batches the slower member ran are batches the primary no longer had to


def test_a_member_that_raises_is_taken_out_and_its_batch_retried_elsewhere(text, caplog):
    calls = {"n": 0}

    def broken(tokens: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        raise RuntimeError("CUDA error: device lost")

    metrics = PoolMetrics()
    members = [Member("gpu", "cuda", broken, CostModel(0.0001, 1e-7)), _member("cpu", text.encode_token_ids)]
    pool = SessionPool(members, latency_budget_s=1.0, timeout_s=30, metrics=metrics)
    queries = _queries(6)
    try:
        vectors, _ = asyncio.run(_submit_all(pool, text, queries))
        assert pool.ready
    finally:
        pool.close()
    np.testing.assert_allclose(vectors, np.stack([text.encode([q])[0] for q in queries]), atol=1e-5, rtol=0)
    assert calls["n"] == 1  # out after its first failure
    assert _count(metrics, "photostock_pool_member_failures_total", member="gpu", kind="error") == 1
    assert _count(metrics, "photostock_pool_member_up", member="gpu") == 0
    assert _count(metrics, "photostock_pool_dispatch_total", member="cpu", reason="retry") >= 1
    assert "taken out of the pool" in caplog.text


def test_a_member_that_hangs_times_out_and_its_batch_is_retried(text):
    release = threading.Event()

    def hangs(tokens: np.ndarray) -> np.ndarray:
        release.wait(60)
        return text.encode_token_ids(tokens)

    metrics = PoolMetrics()
    members = [Member("gpu", "cuda", hangs, CostModel(0.0001, 1e-7)), _member("cpu", text.encode_token_ids)]
    pool = SessionPool(members, latency_budget_s=1.0, timeout_s=0.3, metrics=metrics)
    queries = _queries(4)
    try:
        vectors, _ = asyncio.run(_submit_all(pool, text, queries))
    finally:
        release.set()
        pool.close()
    np.testing.assert_allclose(vectors, np.stack([text.encode([q])[0] for q in queries]), atol=1e-5, rtol=0)
    assert _count(metrics, "photostock_pool_member_failures_total", member="gpu", kind="timeout") == 1
    assert _count(metrics, "photostock_pool_member_up", member="cpu") == 1


def test_no_member_left_fails_requests_and_readyz(world):
    app = create_app(settings_for(world), encoder=runtime_for(world))
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        assert client.get("/readyz").json()["ready"] is True
        member = app.state.service.batcher.pool.members[0]

        def broken(tokens: np.ndarray) -> np.ndarray:
            raise RuntimeError("session lost")

        member.run = broken
        member.solo = broken if member.solo is not None else None  # its lone-query session is lost too
        r = client.get("/search", params={"q": "a red star never asked before"})
        assert r.status_code == 503 and r.json()["error"] == "no encode session is available"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        metrics = client.get("/metrics").text
        assert 'photostock_pool_member_up{member="text-cpu-fp32"} 0.0' in metrics
    with pytest.raises(PoolUnavailable):
        asyncio.run(app.state.service.batcher.encode("x"))


def test_close_waits_for_the_running_batch_then_stops_its_threads(text):
    started, release = threading.Event(), threading.Event()

    def held(tokens: np.ndarray) -> np.ndarray:
        started.set()
        release.wait(10)
        return text.encode_token_ids(tokens)

    pool = SessionPool([_member("held", held)], latency_budget_s=1.0, timeout_s=10)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    tokens = text.tokenize(["a red star on sand"])
    answer = asyncio.run_coroutine_threadsafe(pool.submit(tokens[0], int(text.lengths(tokens)[0])), loop)
    try:
        assert started.wait(10)
        closer = threading.Thread(target=pool.close)
        closer.start()
        closer.join(0.2)
        assert closer.is_alive()  # the batch is still running: close() waits for it
        release.set()
        closer.join(10)
        assert not closer.is_alive()
        np.testing.assert_allclose(answer.result(10), text.encode(["a red star on sand"])[0], atol=1e-5, rtol=0)
        assert not [t for t in threading.enumerate() if t.name == "encode-held"]  # its thread has ended
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()


def test_a_lone_request_on_an_idle_pool_runs_on_the_solo_session() -> None:
    """The load-time thread budget never slows a query that is alone: an idle pool's lone request runs on the
    member's solo session; requests that queue behind others run on the load-time session."""
    calls: list[tuple[str, int]] = []

    def session(kind: str):
        def run(tokens: np.ndarray) -> np.ndarray:
            calls.append((kind, len(tokens)))
            return np.ones((len(tokens), 4), np.float32)
        return run

    member = _member("m", session("load"), cap=8)
    member.solo = session("solo")
    pool = SessionPool([member], latency_budget_s=1.0)

    async def go() -> None:
        await pool.submit(np.zeros(4, np.int64), 4)
        await asyncio.gather(*(pool.submit(np.zeros(4, np.int64), 4) for _ in range(6)))

    try:
        asyncio.run(go())
    finally:
        pool.close()
    assert calls[0] == ("solo", 1) and calls[1] == ("solo", 1)  # alone, then the head of a burst on an idle pool
    assert ("load", 5) in calls or any(kind == "load" for kind, _ in calls[2:])
    assert all(n == 1 for kind, n in calls if kind == "solo")
