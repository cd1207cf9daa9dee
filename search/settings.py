"""Service settings: one pydantic model, loaded from YAML (configs/service.yaml) plus CLI overrides.

Every limit the API enforces lives here, so tests and deployments change behaviour through config, never by
editing code. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Settings", "load_settings", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "service.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderSettings(_Strict):
    """Optional pins. The service takes its encoder from the artifact; a pin set here refuses (with the reason in
    /readyz and /metrics) any version whose encoder differs from it."""

    model: str | None = None  # e.g. "photostock-tiny" or "ViT-B-32"
    pretrained: str | None = None  # open_clip tag or checkpoint file (compared by weights_label)
    key: str | None = None  # the full identity: EncoderIdentity.key, as /readyz reports it


class RuntimeSettings(_Strict):
    """What the text and image ONNX Runtime sessions share."""

    threads: int = Field(0, ge=0)  # intra-op threads per session; 0: ONNX Runtime's default
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # int8: the dynamically quantised text tower every store carries. Default because it met the rule (<= 0.5 pt
    # R@10 lost, mean cosine >= 0.995) in benchmarks/int8_towers.py (figures: benchmarks/README.md). fp32 gives
    # query vectors equal to open_clip's.
    text_precision: Literal["fp32", "int8"] = "int8"


class CacheSettings(_Strict):
    maxsize: int = Field(10000, ge=1)
    ttl_s: float = Field(3600.0, gt=0)
    warmup_file: Path | None = None  # one frequent query per line, encoded at start
    results_max_mb: float = Field(64.0, ge=0)  # exact result-page cache (search/query/result_cache.py); 0 = off


class BatchSettings(_Strict):
    window_ms: float = Field(3.0, ge=0)  # 0 disables micro-batching (>0: batches form while an encode runs)
    max_batch: int = Field(32, ge=1)
    batch_cost_budget_ms: float = Field(30.0, gt=0)  # size cap: largest batch whose measured cost fits this


class ThreadSettings(_Strict):
    """The process's thread budget (search/runtime/threads.py); 0 = the cores this process may use (for ONNX
    Runtime: all but one, left to the event loop)."""

    ort_intra_op: int = Field(0, ge=0)
    ort_inter_op: int = Field(1, ge=1)
    ort_spinning: bool = False  # spinning intra-op threads slow the FAISS search that follows an encode
    faiss_omp: int = Field(1, ge=0)  # FAISS's team on each searching thread (0: all cores; why 1: threads.py)
    loop_workers: int = Field(0, ge=0)  # the event loop's default executor (uploads, admin; searches: the search lane)
    cores: int = Field(0, ge=0)  # the cores the zeros above mean (0: this process's; `server.workers` > 1 sets
    # each worker's share: search/http/workers.py)
    solo_intra_op: int = Field(1, ge=0)  # a lone query on an idle pool: a session with this many threads (0: all
    # cores; 1: no solo session, the default until a quiet machine measures it: benchmarks/README.md, issue 20)


class PoolMemberSettings(_Strict):
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "int8"] = "fp32"
    threads: int = Field(0, ge=0)  # this member's intra-op threads (0: the process budget)


class PoolSettings(_Strict):
    """Text-encode session pool (search/runtime/pool.py). No members: one member, the text session itself."""

    members: list[PoolMemberSettings] = Field(default_factory=list)  # first = primary
    latency_budget_ms: float = Field(50.0, gt=0)  # primary's expected wait above this: overflow elsewhere
    member_timeout_s: float = Field(5.0, gt=0)  # a batch running longer takes its member out of the pool


class LimitSettings(_Strict):
    max_query_chars: int = Field(256, ge=1)
    max_k: int = Field(100, ge=1)
    default_k: int = Field(20, ge=1)
    max_offset: int = Field(1000, ge=0)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_body_bytes: int = Field(1024 * 1024, ge=1)  # every other request body (JSON); search/http/bodies.py
    max_upload_pixels: int = Field(40_000_000, ge=1)  # refused from the header, before any pixel is decoded
    decode_concurrency: int = Field(2, ge=1)  # uploads decoded at once: peak RSS ~ this x the largest decode
    trim_after_pixels: int = Field(4_000_000, ge=0)  # malloc_trim after a decode this big (0: never)


class RankSettings(_Strict):
    overfetch: int = Field(4, ge=1)  # ANN candidates per wanted result (before filters/dedup)
    ann_params: dict[str, int] = Field(default_factory=dict)  # per-call FAISS params; {} = manifest's tuned
    popularity_weight: float = 0.0
    freshness_weight: float = 0.0
    freshness_half_life_days: float = Field(365.0, gt=0)
    dedup_threshold: float = Field(0.98, gt=0, le=1)  # cosine above which hits collapse (when dedup=true)


class ReloadSettings(_Strict):
    watch: bool = True
    poll_s: float = Field(2.0, gt=0)
    admin_token: str | None = None  # None: /admin/reload only from localhost
    verify_checksums: bool = True  # full sha256 of every file before a version serves (false: sizes only)
    start_checks: Literal["sampled", "full"] = "sampled"  # the first version at start: sampled sha256, full in
    # the background (unloaded if that fails); "full": hash everything before ready (1M: docs/service.md)
    takedown_check_s: float = Field(0.5, gt=0, le=2.0)  # STORE/takedowns.json is re-checked this often


class AccessSettings(_Strict):
    """Who may call what (search/http/auth.py, search/http/security.py). Everything here is off by default."""

    bind_host: str = "127.0.0.1"  # set by `serve --host`; admin without a token only when bound to loopback
    api_keys_file: Path | None = None  # one sha256 hex digest per line ('#' comments); keys never in clear
    api_keys_env: str | None = None  # name of an env var holding comma-separated sha256 hex digests
    trusted_proxies: list[str] = Field(default_factory=list)  # peers whose X-Forwarded-For is believed
    cors_origins: list[str] = Field(default_factory=list)  # browser origins allowed to call the API
    # Host header names served, without port (search/http/hosts.py); "*.example.com": subdomains, "*": any.
    # None: only loopback names (localhost, 127.0.0.1, [::1]) when bound to loopback, any host otherwise.
    allowed_hosts: list[str] | None = None


class ServerSettings(_Strict):
    """Slow and idle clients (search/http/server.py): uvicorn's options plus a header timeout it lacks."""

    header_timeout_s: float = Field(10.0, gt=0)  # a request's headers must be complete this soon after it starts
    body_timeout_s: float = Field(30.0, gt=0)  # longest wait for the next piece of a request body (408 after)
    keep_alive_timeout_s: float = Field(5.0, gt=0)  # idle keep-alive connection closed after this
    max_connections: int = Field(1000, ge=1)  # open connections + requests in progress; beyond: 503 at once
    backlog: int = Field(2048, ge=1)  # connections the kernel queues before uvicorn accepts them
    workers: int = Field(1, ge=1)  # worker processes on the one port (uvicorn's supervisor; search/http/workers.py)


class TrafficSettings(_Strict):
    """Rate limits per client and load shedding in front of the encoders (search/query/admission.py)."""

    rate_limit: str | None = None  # e.g. "20/second" per API key or client address (`limits` notation)
    rate_limit_storage: str = "memory://"  # `limits` storage URI; redis://host:6379 makes it fleet-wide
    deadline_ms: float = Field(1000.0, gt=0)  # a miss whose predicted encoder wait exceeds this: 503 at once
    max_queue: int = Field(256, ge=1)  # admitted encodes waiting or running, at most
    initial_cost_ms: float = Field(20.0, gt=0)  # encode cost assumed until one is measured
    # entry shedding (search/http/shedding.py): misses refused before routing when the encode-bound requests
    # inside reach max_in_flight or their predicted wait + the event loop's lag exceeds deadline_ms
    entry_shedding: bool = True
    max_in_flight: int = Field(128, ge=1)
    loop_lag_probe_ms: float = Field(10.0, gt=0)  # how often the loop-lag tick runs


class LogSettings(_Strict):
    format: Literal["text", "json"] = "text"


class ImageSettings(_Strict):
    thumbnail_px: int = Field(256, ge=16, le=2048)
    thumbnail_cache: int = Field(512, ge=0)


class GuidanceSettings(_Strict):
    """What the service tells a user about its answers (search/http/guidance.py): example queries taken from the
    store (GET /examples) and when a text search's best match is weak."""

    examples: int = Field(4, ge=0, le=20)  # example queries offered (0: none)
    example_max_chars: int = Field(80, ge=1)  # longer captions are not offered as examples
    # cosine floor per encoder model: a text search none of whose hits reaches it is `weak`. Calibrated by
    # indexer/lab/score_floor.py (figures: docs/service.md); a model not listed gets no floor (weak: null)
    score_floors: dict[str, float] = Field(default_factory=lambda: {"photostock-tiny": 0.77})


class Settings(_Strict):
    store: Path | None = None
    encoder: EncoderSettings = EncoderSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    cache: CacheSettings = CacheSettings()
    batching: BatchSettings = BatchSettings()
    threads: ThreadSettings = ThreadSettings()
    pool: PoolSettings = PoolSettings()
    limits: LimitSettings = LimitSettings()
    rank: RankSettings = RankSettings()
    reload: ReloadSettings = ReloadSettings()
    images: ImageSettings = ImageSettings()
    access: AccessSettings = AccessSettings()
    traffic: TrafficSettings = TrafficSettings()
    server: ServerSettings = ServerSettings()
    logging: LogSettings = LogSettings()
    guidance: GuidanceSettings = GuidanceSettings()
    query_log: Path | None = None  # JSONL file, one line per answered search (off when unset)


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """YAML file (default configs/service.yaml when it exists) merged with top-level overrides."""
    data: dict[str, Any] = {}
    file = Path(path) if path is not None else DEFAULT_CONFIG
    if path is not None or file.is_file():
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Settings.model_validate(data)
