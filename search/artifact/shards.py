"""Which shard of a sharded index version holds an image: one pure rule, shared by the indexer (which writes
the shards) and every reader (which checks them, and routes by them).

Rule `splitmix64-mod`: shard = splitmix64(uint64(id)) mod S, where splitmix64 is the fixed 64-bit finaliser
of Steele, Lea and Flood's SplitMix64 (add 0x9E3779B97F4A7C15; xor-shift 30, multiply 0xBF58476D1CE4E5B9;
xor-shift 27, multiply 0x94D049BB133111EB; xor-shift 31; all modulo 2^64). Hashing first makes the shards
balanced whatever the ids look like (sequential SQLite row ids, ids of one stride, gaps after deletions):
`id mod S` alone would put every id of a stride S into one shard. The rule depends on the id and S only, so
re-sharding needs no stored table and any process can say where an id lives.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHARD_RULE", "mix64", "shard_of"]

SHARD_RULE = "splitmix64-mod"  # the name a sharded manifest records; a reader refuses any other

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(ids: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over int64 ids (two's complement as uint64): a bijection that spreads every bit
    of the id over the whole word, so any modulus of it is near uniform."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)


def shard_of(ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard (0..shards-1, int64) of each image id under SHARD_RULE."""
    if int(shards) < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    if int(shards) == 1:
        return np.zeros(np.shape(ids), dtype=np.int64)
    return (mix64(ids) % np.uint64(shards)).astype(np.int64)
