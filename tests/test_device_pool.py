"""indexer/encoding/device_pool.py and its use by the indexer: CPU overflow workers take batches when the
primary's queue is full, results come back per batch in submission order and equal a single encoder's, a member
that raises is taken out and its batch retried once elsewhere; a build with overflow on indexes exactly what one
without does.

The encoders are the real tiny CLIP (ONNX Runtime and torch on the CPU). The primary is "slowed" in two ways:
held at a gate the test opens (the dispatch tests: deterministic, no timing) or sleeping per batch (the build
test's load; never used to synchronise anything). A hung device blocks on an event the test releases at its end."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.encoding.device_pool import (
    TIMEOUT_BATCHES,
    DevicePool,
    EncodeTimeout,
    PoolExhausted,
    overflow_threads,
    overflow_workers,
)
from indexer.encoding.encode import device_pool_for, encode_pending
from indexer.models.towers import TorchImageEncoder, onnx_image_encoder
from indexer.settings import IndexerSettings
from indexer.storage.store import MetadataStore
from search.runtime.towers import ImageEncoder
from tests.indexer_support import cli, make_tree, rows, settings, tiny_encoder

ATOL = 1e-5  # ONNX Runtime vs eager torch on the CPU, float32 (tests/test_image_encoder.py)


class Gated:
    """A real encoder that waits at a gate before each batch: a primary that is "busy" until the test says."""

    def __init__(self, inner: ImageEncoder):
        self.inner, self.gate, self.entered = inner, threading.Event(), threading.Event()

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.entered.set()  # a batch is running (held at the gate)
        if not self.gate.wait(timeout=120):
            raise TimeoutError("the test never opened the gate")
        return self.inner.encode_pixels(pixels)


class Slowed:
    """A real encoder slowed on purpose (the load of a slow device; the sleep synchronises nothing)."""

    def __init__(self, inner: ImageEncoder, seconds: float):
        self.inner, self.seconds = inner, seconds

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return self.inner.encode_pixels(pixels)


class Broken:
    """A real encoder whose device fails after `good` batches (every later call raises)."""

    def __init__(self, inner: ImageEncoder, good: int = 0, message: str = "device lost"):
        self.inner, self.good, self.message, self.calls = inner, good, message, 0

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls > self.good:
            raise RuntimeError(self.message)
        return self.inner.encode_pixels(pixels)


class Hung:
    """A real encoder whose device hangs: each call blocks until the test releases it, then returns wrong vectors
    (zeros) on purpose, so a late result that got through to a caller would show."""

    def __init__(self, inner: ImageEncoder):
        self.inner, self.release, self.entered = inner, threading.Event(), threading.Event()

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.release.wait(timeout=120):
            raise TimeoutError("the test never released the hung device")
        return np.zeros_like(self.inner.encode_pixels(pixels))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def onnx(cache: Path) -> ImageEncoder:
    """A fresh ONNX Runtime CPU session of the tiny CLIP's image tower (one per member, as in the indexer)."""
    return onnx_image_encoder(tiny_encoder(), cache, threads=1)


@pytest.fixture
def hung(onnx_cache: Path) -> Iterator[Callable[[], Hung]]:
    """Makes hung devices and releases them all when the test ends (their threads then exit)."""
    made: list[Hung] = []

    def make() -> Hung:
        made.append(Hung(onnx(onnx_cache)))
        return made[-1]

    yield make
    for device in made:
        device.release.set()


def member_thread(name: str) -> threading.Thread:
    """The pool's thread for member `name` (names are unique per test)."""
    return next(t for t in threading.enumerate() if t.name == f"encode-{name}")


def batches(n: int, size: int = 3) -> list[np.ndarray]:
    """n batches of preprocessed pixels (each batch distinct, so a mix-up of results would show)."""
    side = tiny_encoder().model.visual.image_size
    side = side if isinstance(side, int) else side[0]
    rng = np.random.default_rng(7)
    return [rng.standard_normal((size, 3, side, side)).astype(np.float32) for _ in range(n)]


def reference(pixels: list[np.ndarray]) -> list[np.ndarray]:
    """The same batches through one eager torch encoder: what the indexer produced before the pool."""
    return [tiny_encoder().encode_pixels(p) for p in pixels]


def assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)


def test_overflow_takes_batches_while_the_primary_queue_is_full(onnx_cache: Path) -> None:
    primary = Gated(onnx(onnx_cache))
    data = batches(4)
    with DevicePool(("primary", primary), [("cpu-overflow-1", onnx(onnx_cache))], depth=1) as pool:
        first = pool.submit(data[0])  # the primary holds it (depth 1: its queue is now full)
        second = pool.submit(data[1])  # -> the idle overflow worker
        second.result(timeout=60)
        third = pool.submit(data[2])  # the primary is still full, the overflow idle again -> overflow
        third.result(timeout=60)
        assert not first.done()
        primary.gate.set()
        first.result(timeout=60)
        fourth = pool.submit(data[3])  # the primary has room again
        got = [f.result(timeout=60) for f in (first, second, third, fourth)]
        stats = pool.stats()
    assert (stats["primary"].batches, stats["cpu-overflow-1"].batches) == (2, 2)
    assert (stats["primary"].images, stats["cpu-overflow-1"].images) == (6, 6)
    assert stats["primary"].role == "primary" and stats["cpu-overflow-1"].role == "overflow"
    assert all(s.encode_s > 0 and s.failures == 0 and s.out is None for s in stats.values())
    assert_same(got, reference(data))


def test_with_no_idle_overflow_a_batch_waits_for_the_primary(onnx_cache: Path) -> None:
    primary, spare = Gated(onnx(onnx_cache)), Gated(onnx(onnx_cache))
    data = batches(3)
    seen: dict[str, Any] = {}
    with DevicePool(("primary", primary), [("cpu-overflow-1", spare)], depth=1) as pool:
        first, second = pool.submit(data[0]), pool.submit(data[1])  # primary full, overflow busy

        def third() -> None:
            seen["future"] = pool.submit(data[2])
            seen["first_done_when_accepted"] = first.done()

        waiter = threading.Thread(target=third)
        waiter.start()
        waiter.join(timeout=0.5)  # a bounded negative check: it must still be waiting for room
        assert waiter.is_alive()
        primary.gate.set()
        waiter.join(timeout=60)
        assert seen["first_done_when_accepted"] is True
        seen["future"].result(timeout=60)
        assert not second.done()  # the overflow is still held: the third batch went to the primary
        spare.gate.set()
        got = [f.result(timeout=60) for f in (first, second, seen["future"])]
        stats = pool.stats()
    assert (stats["primary"].batches, stats["cpu-overflow-1"].batches) == (2, 1)
    assert_same(got, reference(data))


def test_a_deep_primary_queue_leaves_the_overflow_idle(onnx_cache: Path) -> None:
    data = batches(6)
    with DevicePool(("primary", Slowed(onnx(onnx_cache), 0.02)), [("cpu-overflow-1", onnx(onnx_cache))],
                    depth=100) as pool:
        got = [f.result(timeout=60) for f in [pool.submit(p) for p in data]]
        stats = pool.stats()
    assert (stats["primary"].batches, stats["cpu-overflow-1"].batches) == (6, 0)
    assert_same(got, reference(data))


def test_two_backends_give_the_single_encoder_vectors_in_submission_order(onnx_cache: Path) -> None:
    """A torch primary and an ONNX overflow: whichever encodes a batch, its future holds its own vectors."""
    data = batches(8)
    primary = Gated(TorchImageEncoder(tiny_encoder()))
    with DevicePool(("cpu:torch", primary), [("cpu-overflow-1", onnx(onnx_cache))], depth=1) as pool:
        futures = [pool.submit(p) for p in data[:4]]  # the first is held by the primary, the next three overflow
        primary.gate.set()
        futures += [pool.submit(p) for p in data[4:]]  # from here on either member, as they free up
        got = [f.result(timeout=60) for f in futures]
        stats = pool.stats()
    assert stats["cpu-overflow-1"].batches >= 3 and stats["cpu:torch"].batches >= 1
    assert stats["cpu:torch"].batches + stats["cpu-overflow-1"].batches == 8
    assert_same(got, reference(data))


def test_a_member_that_raises_is_taken_out_and_its_batch_retried(onnx_cache: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    data = batches(5)
    caplog.set_level(logging.WARNING, logger="indexer.encoding.device_pool")
    broken = Broken(onnx(onnx_cache), good=1, message="CUDA error: device lost")
    with DevicePool(("cuda:torch", broken), [("cpu-overflow-1", onnx(onnx_cache))], depth=8) as pool:
        got = [f.result(timeout=60) for f in [pool.submit(p) for p in data]]
        stats = pool.stats()
    assert_same(got, reference(data))  # nothing lost: the failed batch and the ones queued behind it moved
    assert stats["cuda:torch"].batches == 1 and stats["cuda:torch"].failures == 1
    assert stats["cuda:torch"].out == "RuntimeError: CUDA error: device lost"
    assert stats["cpu-overflow-1"].batches == 4 and stats["cpu-overflow-1"].out is None
    assert broken.calls == 2  # taken out after its failure: never called again
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cuda:torch taken out" in errors[0].getMessage()
    assert "device lost" in errors[0].getMessage()


def test_a_failing_overflow_member_leaves_the_primary_serving(onnx_cache: Path) -> None:
    primary = Gated(onnx(onnx_cache))
    data = batches(3)
    with DevicePool(("primary", primary), [("cpu-overflow-1", Broken(onnx(onnx_cache)))], depth=1) as pool:
        futures = [pool.submit(data[0]), pool.submit(data[1])]  # the second goes to the overflow, which raises
        primary.gate.set()
        futures.append(pool.submit(data[2]))
        got = [f.result(timeout=60) for f in futures]
        stats = pool.stats()
    assert_same(got, reference(data))
    assert stats["cpu-overflow-1"].out is not None and stats["cpu-overflow-1"].batches == 0
    assert stats["primary"].batches == 3


def test_a_batch_that_fails_everywhere_is_retried_once_then_raises(onnx_cache: Path) -> None:
    """A poison batch (or two dead devices): one retry, then the error reaches the run; nothing is left."""
    data = batches(2)
    with DevicePool(("primary", Broken(onnx(onnx_cache), message="bad batch")),
                    [("cpu-overflow-1", Broken(onnx(onnx_cache), message="bad batch"))], depth=4) as pool:
        with pytest.raises(RuntimeError, match="bad batch"):
            pool.submit(data[0]).result(timeout=60)
        with pytest.raises(PoolExhausted, match="taken out"):
            pool.submit(data[1])
        stats = pool.stats()
    assert stats["primary"].failures == stats["cpu-overflow-1"].failures == 1


def test_a_member_that_hangs_is_taken_out_its_batches_move_and_its_late_result_is_ignored(
        onnx_cache: Path, hung: Callable[[], Hung], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="indexer.encoding.device_pool")
    gpu = hung()
    data = batches(3)
    with DevicePool(("hung-gpu", gpu), [("cpu-overflow-1", onnx(onnx_cache))], depth=3, timeout_s=0.3) as pool:
        futures = [pool.submit(p) for p in data]  # the primary takes all three (depth 3): the first hangs
        got = [f.result(timeout=60) for f in futures]
        assert_same(got, reference(data))  # the hung batch was retried, the two queued behind it moved
        thread = member_thread("hung-gpu")
        assert thread.is_alive()  # abandoned, still blocked in the encoder
        gpu.release.set()  # the device comes back: its (wrong) result must not reach anyone
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert_same([f.result() for f in futures], reference(data))
        stats = pool.stats()
    assert (stats["hung-gpu"].batches, stats["hung-gpu"].failures) == (0, 1)
    assert (stats["hung-gpu"].out or "").startswith("EncodeTimeout: a batch of 3 images still running after")
    assert stats["cpu-overflow-1"].batches == 3 and stats["cpu-overflow-1"].out is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "hung-gpu taken out" in errors[0] and "timeout 0.3 s" in errors[0]
    assert any("hung-gpu finished a batch after it was taken out" in r.getMessage() and "ignored" in r.getMessage()
               for r in caplog.records)


def test_when_every_member_hangs_callers_get_pool_exhausted(hung: Callable[[], Hung]) -> None:
    data = batches(3)
    raised: dict[str, BaseException] = {}
    with DevicePool(("hung-a", hung()), [("hung-b", hung())], depth=1, timeout_s=0.3) as pool:
        first, second = pool.submit(data[0]), pool.submit(data[1])  # one on each member; both hang

        def third() -> None:  # no member has room: it waits, and must end with PoolExhausted, not hang
            try:
                pool.submit(data[2])
            except PoolExhausted as exc:
                raised["error"] = exc

        waiter = threading.Thread(target=third)
        waiter.start()
        waiter.join(timeout=60)
        assert not waiter.is_alive()
        assert "taken out" in str(raised["error"])
        for owed in (first, second):
            with pytest.raises(PoolExhausted, match="no image encoder left"):
                owed.result(timeout=60)
        with pytest.raises(PoolExhausted):
            pool.submit(data[2])
        stats = pool.stats()
    assert all(s.failures == 1 and (s.out or "").startswith("EncodeTimeout") for s in stats.values())


def test_close_returns_with_a_hung_member(onnx_cache: Path, hung: Callable[[], Hung]) -> None:
    """Closing never waits on a thread stuck in an encoder: not once the member is out, nor while it hangs."""
    data = batches(3)
    pool = DevicePool(("hung-late", hung()), [("cpu-overflow-1", onnx(onnx_cache))], depth=1, timeout_s=0.3)
    assert_same([pool.submit(data[0]).result(timeout=60)], reference(data[:1]))  # retried on the overflow
    pool.close()  # returns although the primary's thread is still blocked
    assert member_thread("hung-late").is_alive()

    devices = [hung(), hung()]
    pool = DevicePool(("hung-c", devices[0]), [("hung-d", devices[1])], depth=1, timeout_s=0.3)
    owed = [pool.submit(data[1]), pool.submit(data[2])]  # both members hold a batch and hang
    assert all(d.entered.wait(timeout=60) for d in devices)  # running, not just queued (close cancels those)
    closer = threading.Thread(target=pool.close)
    closer.start()
    closer.join(timeout=60)
    assert not closer.is_alive()  # close() waited for the running batches only until their timeout
    # nobody is left waiting: each batch timed out under close(), or (taken out just before) moved and cancelled
    assert all(f.cancelled() or isinstance(f.exception(timeout=0), EncodeTimeout | PoolExhausted) for f in owed)
    assert all(s.out is not None for s in pool.stats().values())


def test_a_slow_member_within_its_timeout_stays_and_its_limit_follows_its_batch_time(onnx_cache: Path) -> None:
    data = batches(4)
    with DevicePool(("slow", Slowed(onnx(onnx_cache), 0.3)), [("cpu-overflow-1", onnx(onnx_cache))], depth=8,
                    timeout_s=1.5) as pool:
        got = [f.result(timeout=60) for f in [pool.submit(p) for p in data]]
        stats, report = pool.stats(), pool.report()
    assert_same(got, reference(data))
    assert (stats["slow"].batches, stats["slow"].failures, stats["slow"].out) == (4, 0, None)
    mean = stats["slow"].encode_s / 4
    assert report["slow"]["timeout_s"] == round(max(1.5, TIMEOUT_BATCHES * mean), 3) >= TIMEOUT_BATCHES * 0.3
    assert report["cpu-overflow-1"]["timeout_s"] == 1.5  # no batch measured yet: the setting


def test_closing_cancels_queued_batches_and_finishes_the_running_one(onnx_cache: Path) -> None:
    """The error path of a build: the pool closes with work queued; nothing hangs, nothing runs after."""
    primary = Gated(onnx(onnx_cache))
    data = batches(3)
    pool = DevicePool(("primary", primary), [("cpu-overflow-1", Gated(onnx(onnx_cache)))], depth=3)
    futures = [pool.submit(p) for p in data]  # all on the primary: the first runs (held), two wait
    assert primary.entered.wait(timeout=60)
    closer = threading.Thread(target=pool.close)
    closer.start()
    wait(futures[1:], timeout=60)  # close() cancels the waiting batches, then waits for the running one
    primary.gate.set()
    closer.join(timeout=60)
    assert not closer.is_alive()
    np.testing.assert_allclose(futures[0].result(timeout=60), reference(data[:1])[0], atol=ATOL, rtol=0)
    assert futures[1].cancelled() and futures[2].cancelled()
    with pytest.raises(PoolExhausted, match="closed"):
        pool.submit(data[0])


def test_without_overflow_the_pool_encodes_inline_as_before(onnx_cache: Path) -> None:
    """CPU-only default: no threads, the caller encodes (a failure raises from the batch's result, as before)."""
    threads: list[threading.Thread] = []

    class Where:
        def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
            threads.append(threading.current_thread())
            return tiny_encoder().encode_pixels(pixels)

    data = batches(2)
    with DevicePool(("cpu:onnx", Where())) as pool:
        assert not pool.pipelined
        futures = [pool.submit(p) for p in data]
        assert all(f.done() for f in futures)
        assert pool.report()["cpu:onnx"]["timeout_s"] is None  # inline: no timeout (nowhere to retry)
        assert_same([f.result() for f in futures], reference(data))
    assert threads == [threading.main_thread()] * 2
    with DevicePool(("cpu:onnx", Broken(onnx(onnx_cache)))) as pool, pytest.raises(RuntimeError, match="lost"):
        pool.submit(data[0]).result()


def test_overflow_defaults_leave_cpu_only_runs_unchanged() -> None:
    assert overflow_workers(None, "cpu") == 0 and overflow_workers(None, "cuda") == 1
    assert overflow_workers(None, "cuda:0") == 1 and overflow_workers(3, "cpu") == 3
    assert overflow_threads(0, 1, decode_workers=14, cpus=16) == 1
    assert overflow_threads(0, 2, decode_workers=2, cpus=16) == 6
    assert overflow_threads(4, 2, decode_workers=2, cpus=16) == 4
    assert overflow_threads(0, 1, decode_workers=8, cpus=2) == 1
    pool = device_pool_for(tiny_encoder(), settings())
    assert not pool.pipelined and pool.members == 1
    with pytest.raises(ValueError, match="overflow_queue_depth"):
        IndexerSettings(overflow_queue_depth=0)
    with pytest.raises(ValueError, match="encode_batch_timeout_s"):
        IndexerSettings(encode_batch_timeout_s=0)


def test_pool_from_settings_builds_cpu_overflow_sessions(onnx_cache: Path) -> None:
    with device_pool_for(tiny_encoder(), settings(overflow_workers=2, onnx_cache_dir=str(onnx_cache),
                                                  encode_batch_timeout_s=7)) as pool:
        assert pool.pipelined and pool.members == 3
        assert set(pool.report()) == {"cpu:onnx", "cpu-overflow-1", "cpu-overflow-2"}
        assert {d["timeout_s"] for d in pool.report().values()} == {7.0}


# -- the indexer with overflow on ------------------------------------------------------------------------------
def _slowed_pool(seconds: float, depth: int, cache: Path, encoder: Any, s: IndexerSettings) -> DevicePool:
    """The build's pool with its primary slowed: a slow device the CPU overflow worker must help."""
    return DevicePool(("slow:onnx", Slowed(onnx(cache), seconds)), [("cpu-overflow-1", onnx(cache))], depth)


def _build(images: Path, store: Path, stage: Any = None, **overrides: Any) -> dict[str, Any]:
    from indexer.run.pipeline import run_build

    return run_build(images, store, settings(**overrides), tiny_encoder(), encode_stage=stage)


def _searchable(store: Path, queries: np.ndarray) -> list[list[str]]:
    """Top-3 paths for each query vector from the store's published version."""
    from search.artifact.version import open_current

    by_id = {r["id"]: p for p, r in rows(store).items()}
    artifact = open_current(store)
    return [[by_id[int(i)] for i in ids] for ids in artifact.search(queries, 3).ids]


def test_a_build_with_a_slow_primary_and_overflow_indexes_what_one_encoder_does(tmp_path: Path,
                                                                                  onnx_cache: Path) -> None:
    images = tmp_path / "images"
    make_tree(images, 22)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    commits: list[str | None] = []

    def recording_stage(pending: Any, root: Path, encoder: Any, store: MetadataStore, *rest: Any) -> Any:
        original = store.commit_batch

        def commit_batch(shard: str | None, *args: Any, **kwargs: Any) -> Any:
            commits.append(shard)
            return original(shard, *args, **kwargs)

        store.commit_batch = commit_batch  # type: ignore[method-assign]
        make_pool = functools.partial(_slowed_pool, 0.3, 1, onnx_cache)
        return encode_pending(pending, root, encoder, store, *rest, make_pool=make_pool)

    base = _build(images, tmp_path / "one", onnx_cache_dir=str(onnx_cache))
    pooled = _build(images, tmp_path / "pool", recording_stage, onnx_cache_dir=str(onnx_cache))
    for key in ("encoded", "failed_this_run", "indexed", "failed"):
        assert pooled["counts"][key] == base["counts"][key], key
    assert (pooled["counts"]["indexed"], pooled["counts"]["failed"]) == (22, 1)
    devices = pooled["encode_devices"]
    assert devices["cpu-overflow-1"]["batches"] >= 1  # the slow primary's queue (depth 1) was full
    assert devices["slow:onnx"]["batches"] + devices["cpu-overflow-1"]["batches"] == 6  # 23 files, batch 4
    assert devices["slow:onnx"]["images"] + devices["cpu-overflow-1"]["images"] == 22
    assert list(base["encode_devices"]) == ["cpu:onnx"] and base["encode_devices"]["cpu:onnx"]["batches"] == 6
    assert [c for c in commits if c is not None] == sorted(c for c in commits if c is not None)
    assert len(commits) == 6  # shard numbering and commit order as with one encoder
    base_rows, pool_rows = rows(tmp_path / "one"), rows(tmp_path / "pool")
    assert {p: (r["status"], r["shard"], r["shard_row"]) for p, r in base_rows.items()} == \
        {p: (r["status"], r["shard"], r["shard_row"]) for p, r in pool_rows.items()}
    vectors = {n: np.load(tmp_path / n / "current" / "vectors.f16.npy").astype(np.float32) for n in ("one", "pool")}
    np.testing.assert_allclose(vectors["pool"], vectors["one"], atol=2e-3, rtol=0)  # float16 storage
    assert _searchable(tmp_path / "pool", vectors["one"][:8]) == _searchable(tmp_path / "one", vectors["one"][:8])


def test_indexer_build_cli_with_an_overflow_worker(tmp_path: Path, onnx_cache: Path) -> None:
    images = tmp_path / "images"
    make_tree(images, 9)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    report_path = tmp_path / "report.json"
    done = cli("build", "--images", str(images), "--store", str(tmp_path / "store"), "--model", "tiny",
               "--pretrained", "random", "--device", "cpu", "--batch-size", "2", "--workers", "1",
               "--overflow-workers", "1", "--report", str(report_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert (report["counts"]["indexed"], report["counts"]["failed"]) == (9, 1)
    assert report["settings"]["overflow_workers"] == 1
    devices = report["encode_devices"]
    assert set(devices) == {"cpu:onnx", "cpu-overflow-1"}
    assert sum(d["images"] for d in devices.values()) == 9 and all(d["out"] is None for d in devices.values())
