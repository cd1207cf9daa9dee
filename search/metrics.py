"""Prometheus metrics of one service instance, in its own registry (several apps can live in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class ServiceMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Histogram("photostock_request_seconds", "HTTP request latency", ["route", "status"],
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.stages = Histogram("photostock_stage_seconds", "Search latency per pipeline stage", ["stage"],
                                buckets=_LATENCY_BUCKETS, registry=r)
        self.cache = Counter("photostock_query_cache_total", "Query-embedding cache lookups", ["result"],
                             registry=r)
        self.page_cache = Counter("photostock_page_cache_total", "Result-page cache lookups", ["result"],
                                  registry=r)
        self.batch_size = Histogram("photostock_encode_batch_size", "Texts per micro-batch encode",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.search_batch_size = Histogram("photostock_search_batch_size",
                                           "Searches per search-lane batch (one ANN/rerank/metadata pass)",
                                           buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.index_version = Gauge("photostock_index_info", "Served index version (value 1)", ["version"],
                                   registry=r)
        self.index_vectors = Gauge("photostock_index_vectors", "Vectors in the served index", registry=r)
        self.errors = Counter("photostock_errors_total", "Requests answered with an error", ["kind"],
                              registry=r)
        self.shed = Counter("photostock_shed_total", "Encode-bound requests refused at the entry (503)",
                            ["encoder", "reason"], registry=r)
        self.loop_lag = Gauge("photostock_event_loop_lag_seconds", "How late the event loop runs a periodic tick",
                              registry=r)
        self.reloads = Counter("photostock_reloads_total", "Index reload attempts", ["result"], registry=r)
        self.reload_failed = Gauge("photostock_reload_failed", "1 while the last reload attempt failed",
                                   registry=r)
        self.reload_error = Gauge("photostock_reload_error", "Why the last reload was refused (value 1)",
                                  ["reason"], registry=r)
        self.shard_calls = Counter("photostock_shard_calls_total",
                                   "A fleet ingress's calls to shard deployments, by kind (first, hedge, retry, wake)",
                                   ["shard", "kind"], registry=r)
        self.encoder = Gauge("photostock_encoder_info", "The encoder the service runs (value 1)",
                             ["model", "weights", "key", "precision"], registry=r)

    def set_reload_error(self, error: str | None) -> None:
        """One series at most: the last refusal's reason (cut short), cleared by a successful load."""
        self.reload_error.clear()
        if error:
            self.reload_error.labels(reason=error[:200]).set(1)

    def set_version(self, version: str, vectors: int) -> None:
        self.index_version.clear()
        self.index_version.labels(version=version).set(1)
        self.index_vectors.set(vectors)
