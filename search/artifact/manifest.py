"""The manifest of an index version: what was built, from what, how well it searches, and file checksums.

The manifest is written last into a version directory, so its presence (and its checksums) is what makes a
version complete. Readers check `schema_version` before trusting any other field; a version written by a newer
schema is refused rather than half-understood.

Schema 1 is one unsharded version: index.faiss, vectors.f16.npy, ids.npy and metadata.sqlite side by side.
Schema 2 is a sharded version (written only when S > 1, so a reader that knows only schema 1 refuses it with
"schema_version 2 is not supported"): `files` holds the shared metadata.sqlite, `sharding` names the rule
(search.artifact.shards) and S, and `shards` lists each part: its folder (`shard-000/`...), vector count,
its own index info and the checksums of its index.faiss, vectors.f16.npy and ids.npy. `counts["vectors"]` is
the sum over the parts; `index` is the parts' common factory with the most conservative tuned figures.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from search.artifact.encoder import EncoderIdentity

__all__ = [
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "INDEX_FILE",
    "VECTORS_FILE",
    "IDS_FILE",
    "METADATA_FILE",
    "SHARDED_SCHEMA_VERSION",
    "PART_FILES",
    "ArtifactError",
    "EncoderFiles",
    "FileEntry",
    "IndexInfo",
    "Manifest",
    "ShardEntry",
    "shard_dir_name",
    "read_manifest",
    "write_manifest",
]

SCHEMA_VERSION = 1  # unsharded versions (written for S = 1, as before sharding existed)
SHARDED_SCHEMA_VERSION = 2  # sharded versions: a reader knowing only schema 1 refuses them
READABLE_SCHEMAS = (SCHEMA_VERSION, SHARDED_SCHEMA_VERSION)
MANIFEST_NAME = "manifest.json"
INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.f16.npy"
IDS_FILE = "ids.npy"
METADATA_FILE = "metadata.sqlite"
ARTIFACT_FILES = (INDEX_FILE, VECTORS_FILE, IDS_FILE, METADATA_FILE)
PART_FILES = (INDEX_FILE, VECTORS_FILE, IDS_FILE)  # what each shard part holds of its own


def shard_dir_name(shard: int) -> str:
    """The folder of part `shard` inside a sharded version (zero-padded so folders sort in shard order)."""
    return f"shard-{int(shard):03d}"


class ArtifactError(RuntimeError):
    """An index version is missing, partial, corrupt or incompatible; the caller must not serve it."""


@dataclass(frozen=True)
class FileEntry:
    """Size is checked on every open (cheap); the sampled and full sha256 as search.artifact.checksums says."""

    sha256: str
    bytes: int
    sample_sha256: str | None = None  # absent in manifests written before sampled checks existed

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        sample = data.get("sample_sha256")
        return cls(sha256=str(data["sha256"]), bytes=int(data["bytes"]),
                   sample_sha256=str(sample) if sample is not None else None)


@dataclass(frozen=True)
class EncoderFiles:
    """The encoder a version carries: a folder of the store (`encoders/<key>`, shared by every version built
    with the same encoder) and the size and sha256 of each file in it (search.artifact.bundle verifies them)."""

    dir: str
    files: dict[str, FileEntry]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderFiles:
        files = {n: FileEntry.from_dict(e) for n, e in data["files"].items()}
        return cls(dir=str(data["dir"]), files=files)


@dataclass(frozen=True)
class IndexInfo:
    """The FAISS index: factory string, tuned per-call search params, the choice's reasons and its figures.

    `params` holds the search parameters chosen by tuning (e.g. {"nprobe": 16} or {"efSearch": 64}); they are
    meant to be passed per call (search.artifact.ann.search_parameters), never set on the shared index.
    `rerank_candidates` is how many ANN candidates to over-fetch before the exact float16 rerank.
    `recall_at_10` is after that rerank (what a query gets); `recall_at_10_raw` is the ANN stage alone.
    """

    factory: str
    metric: str = "ip"
    params: dict[str, Any] = field(default_factory=dict)
    rerank_candidates: int = 10
    selection: dict[str, Any] = field(default_factory=dict)
    tuning: list[dict[str, Any]] = field(default_factory=list)
    recall_at_10: float = 1.0
    recall_at_10_raw: float = 1.0
    recall_queries: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    bytes_per_vector: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexInfo:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ShardEntry:
    """One part of a sharded version: its folder, how many vectors it holds, its index and its files."""

    dir: str
    vectors: int
    index: IndexInfo
    files: dict[str, FileEntry]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardEntry:
        return cls(dir=str(data["dir"]), vectors=int(data["vectors"]), index=IndexInfo.from_dict(data["index"]),
                   files={n: FileEntry.from_dict(e) for n, e in data["files"].items()})


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    version: str
    created_at: str
    encoder: EncoderIdentity
    image_root: str
    index: IndexInfo
    counts: dict[str, int]
    timings: dict[str, float]
    files: dict[str, FileEntry]
    encoder_files: EncoderFiles | None = None  # None: an artifact without its encoder (the service refuses it)
    sharding: dict[str, Any] | None = None  # schema 2: {"rule": SHARD_RULE, "shards": S}
    shards: tuple[ShardEntry, ...] = ()  # schema 2: the S parts in shard order; () for an unsharded version

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def shard_count(self) -> int:
        """How many parts the version has (1 for an unsharded version)."""
        return max(1, len(self.shards))

    def checked_files(self) -> dict[str, FileEntry]:
        """Every file the manifest vouches for, by its path relative to the version folder."""
        found = dict(self.files)
        for part in self.shards:
            found.update({f"{part.dir}/{name}": entry for name, entry in part.files.items()})
        return found

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["encoder"] = self.encoder.to_dict()
        if not self.shards:  # an unsharded version is written exactly as schema 1 always was
            data.pop("shards")
            data.pop("sharding")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Parse and validate; any missing or mistyped field is an ArtifactError naming it."""
        if not isinstance(data, dict):
            raise ArtifactError("manifest is not a JSON object")
        schema = data.get("schema_version")
        if schema not in READABLE_SCHEMAS:
            raise ArtifactError(f"manifest schema_version {schema!r} is not supported "
                                f"(this reader knows {', '.join(map(str, READABLE_SCHEMAS))})")
        try:
            files = {name: FileEntry.from_dict(e) for name, e in data["files"].items()}
            manifest = cls(
                schema_version=int(schema),
                version=str(data["version"]),
                created_at=str(data["created_at"]),
                encoder=EncoderIdentity.from_dict(data["encoder"]),
                image_root=str(data["image_root"]),
                index=IndexInfo.from_dict(data["index"]),
                counts={k: int(v) for k, v in data["counts"].items()},
                timings={k: float(v) for k, v in data["timings"].items()},
                files=files,
                encoder_files=(EncoderFiles.from_dict(data["encoder_files"])
                               if data.get("encoder_files") is not None else None),
                sharding=dict(data["sharding"]) if schema == SHARDED_SCHEMA_VERSION else None,
                shards=(tuple(ShardEntry.from_dict(e) for e in data["shards"])
                        if schema == SHARDED_SCHEMA_VERSION else ()),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"manifest is malformed: {type(exc).__name__}: {exc}") from exc
        if "vectors" not in manifest.counts:
            raise ArtifactError("manifest counts lack 'vectors'")
        if schema == SHARDED_SCHEMA_VERSION:
            _check_sharding(manifest)
            return manifest
        missing = [name for name in ARTIFACT_FILES if name not in manifest.files]
        if missing:
            raise ArtifactError(f"manifest lists no checksum for {', '.join(missing)}")
        return manifest


def _check_sharding(manifest: Manifest) -> None:
    """A sharded manifest must agree with itself: the rule, S, one entry per shard in order, the counts."""
    from search.artifact.shards import SHARD_RULE

    sharding = manifest.sharding or {}
    if sharding.get("rule") != SHARD_RULE:
        raise ArtifactError(f"manifest shard rule {sharding.get('rule')!r} is not supported (this reader knows "
                            f"{SHARD_RULE!r})")
    count = sharding.get("shards")
    if not isinstance(count, int) or count < 1 or count != len(manifest.shards):
        raise ArtifactError(f"manifest says {count!r} shards but lists {len(manifest.shards)}")
    for i, part in enumerate(manifest.shards):
        if part.dir != shard_dir_name(i):
            raise ArtifactError(f"manifest shard {i} is in {part.dir!r}, expected {shard_dir_name(i)!r}")
        missing = [name for name in PART_FILES if name not in part.files]
        if missing:
            raise ArtifactError(f"manifest lists no checksum for {part.dir}/{', '.join(missing)}")
    if METADATA_FILE not in manifest.files:
        raise ArtifactError(f"manifest lists no checksum for {METADATA_FILE}")
    total = sum(part.vectors for part in manifest.shards)
    if total != manifest.counts["vectors"]:
        raise ArtifactError(f"manifest counts {manifest.counts['vectors']} vectors but its shards hold {total}")


def read_manifest(version_dir: str | os.PathLike[str]) -> Manifest:
    path = Path(version_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} does not exist: the version is partial or not an index version") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc})") from exc
    return Manifest.from_dict(data)


def write_manifest(version_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write and fsync the manifest (the last file of a version)."""
    path = Path(version_dir) / MANIFEST_NAME
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(manifest.to_dict(), fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path
