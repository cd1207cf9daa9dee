"""The service's watcher compares `current` with the version it serves: a version published while the service
was starting is loaded, and a refused version is retried once its files change (here: repaired in place), not
reopened on every poll while nothing changed."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from indexer.index.publish import flip_current
from search.artifact.reload import ArtifactHolder, watch_current
from tests.service_support import copy_store, encoder_for, publish, world_store


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return world_store(tmp_path_factory.getbasetemp() / "service-world")


def _republish(world, store) -> str:
    vectors = np.load(world.store / "vectors.npy")
    return publish(store, world.image_root, encoder_for(world.checkpoint), store / "metadata.sqlite",
                   sorted(world.ids_by_path.values()), vectors)


async def _until(condition, deadline_s: float = 20.0) -> None:
    async with asyncio.timeout(deadline_s):
        while not condition():
            await asyncio.sleep(0.02)


def test_watcher_loads_a_version_published_during_start_and_retries_a_refused_one(world, tmp_path) -> None:
    store = copy_store(world, tmp_path / "store")
    outcomes = []
    holder = ArtifactHolder(store, encoder_for(world.checkpoint).identity, on_change=outcomes.append)
    assert holder.reload().loaded
    during_start = _republish(world, store)  # published after the first load, before the watcher runs

    async def scenario() -> None:
        watcher = asyncio.create_task(watch_current(holder, 0.05))
        try:
            await _until(lambda: holder.version == during_start)
            bad = store / "versions" / (during_start + "-broken")
            shutil.copytree(store / "versions" / during_start, bad)
            index = bad / "index.faiss"
            index.chmod(0o644)
            good = index.read_bytes()
            index.write_bytes(good[:100])
            flip_current(store, bad)
            await _until(lambda: holder.last_error is not None)
            assert holder.version == during_start  # refused: the old version keeps serving
            refusals = len([o for o in outcomes if o.error])
            await _until(lambda: holder.unchanged_skips >= 3)  # three more polls: nothing changed on disk...
            assert len([o for o in outcomes if o.error]) == refusals  # ...so it was not reopened nor reported
            index.write_bytes(good)  # repaired in place: `current` does not change again
            await _until(lambda: holder.loaded_path == bad.resolve() and holder.last_error is None)
        finally:
            watcher.cancel()

    asyncio.run(scenario())
    holder.close()
