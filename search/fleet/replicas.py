"""What the fleet's query-encoder and shard replicas run (search/fleet/app.py deploys them): a class per
deployment around search/fleet/parts.py. No Ray and no HTTP app here: Serve imports this module in every
encoder and shard replica process it starts (the class is pickled by reference), so it stays light, and a
replica scaled up from zero starts sooner (docs/scaling.md, "Scale to zero")."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from search.fleet.parts import QueryEncoderParts, ShardServer, build_query_encoder
from search.fleet.pinning import CallTag
from search.fleet.switch import PartReady
from search.fleet.wire import to_wire
from search.query.shard import ShardHits, ShardQuery
from search.settings import Settings, load_settings

__all__ = ["QueryEncoderReplica", "ShardReplica", "replica_settings"]


def replica_settings(store: str, config: str | None) -> Settings:
    """The service settings every replica reads (the fleet's `config` YAML, `store` set)."""
    return load_settings(config, store=store)


class QueryEncoderReplica:
    def __init__(self, store: str, config: str | None):
        self.parts: QueryEncoderParts = build_query_encoder(replica_settings(store, config))

    async def text(self, text: str, phase: str, language: str | None = None) -> np.ndarray:
        return await self.parts.text(text, phase, language)

    async def pixels(self, pixels: np.ndarray) -> np.ndarray:
        return await self.parts.pixels(pixels)

    def __del__(self) -> None:
        parts = getattr(self, "parts", None)
        if parts is not None:
            parts.close()


class ShardReplica:
    def __init__(self, store: str, config: str | None, index: int):
        self.server = ShardServer(replica_settings(store, config), index)

    async def search(self, version_dir: str, vectors: np.ndarray, asks: Sequence[ShardQuery],
                     hidden: frozenset[int], tag: CallTag | None = None) -> list[ShardHits]:
        # `tag` is for ShardRouter, in the caller's process. FAISS and the rerank release the GIL: concurrent
        # calls of this replica overlap
        return to_wire(await asyncio.to_thread(self.server.search, version_dir, vectors, asks, hidden))

    async def prepare(self, version_dir: str) -> PartReady:
        return await asyncio.to_thread(self.server.prepare, version_dir)

    async def wake(self) -> None:
        """Nothing: the ingress calls this so that Serve starts a replica (search/fleet/fanout.py, `wake_cold`)."""
