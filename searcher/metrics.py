"""Prometheus metrics of the searcher role: `streamvec_searcher_*`, labelled by collection."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamvec.metrics import CollectionMetrics, factory, register_build_info

ROLE = "searcher"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class SearcherMetrics(CollectionMetrics):
    """Every searcher metric on one registry; call `labels(metric, ...)` to get a child."""

    def __init__(self, registry: CollectorRegistry, collection: str) -> None:
        super().__init__(collection)
        make = factory(registry, ROLE)
        register_build_info(registry, ROLE)
        self.queries = make(Counter, "queries", "Query requests answered (errors included).")
        self.errors = make(Counter, "errors", "Error replies, by code.", ("code",))
        self.queue_wait = make(Histogram, "queue_wait_seconds", "From the client's send to the "
                               "searcher reading the request.", buckets=LATENCY_BUCKETS)
        self.search_seconds = make(Histogram, "search_seconds", "Executing one batch over "
                                   "segments and the tail.", buckets=LATENCY_BUCKETS)
        self.total_seconds = make(Histogram, "total_seconds", "From the client's send to the "
                                  "reply being written.", buckets=LATENCY_BUCKETS)
        self.batch_size = make(Histogram, "batch_size", "Requests executed together.",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.consistency_wait = make(Histogram, "consistency_wait_seconds", "Time a request "
                                     "waited for its consistency level.", ("level",),
                                     buckets=LATENCY_BUCKETS)
        self.loaded_segments = make(Gauge, "loaded_segments", "Sealed segments being served.")
        self.loaded_rows = make(Gauge, "loaded_rows", "Rows in the served sealed segments.")
        self.tail_rows = make(Gauge, "tail_rows", "Rows in the live tail.")
        self.tail_full = make(Gauge, "tail_full", "1 while the live tail is at its row bound "
                              "and reading stops (the searcher lags).")
        self.expired = make(Counter, "expired", "Requests dropped unexecuted: their client had "
                            "given up (past its timeout) before a searcher read them.")
        self.redelivered = make(Counter, "redelivered", "Requests answered with an error "
                                "instead of running again: delivered more than the limit.")
        self.refused_segments = make(Counter, "refused_segments", "Segments refused at load "
                                     "(checksum, manifest or identity mismatch).")
        self.unloaded_segments = make(Gauge, "unloaded_segments", "Registered segments not "
                                      "served yet, by reason (corrupt, unavailable): the tail "
                                      "serves their offsets and loading is retried.", ("reason",))
        self.malformed_records = make(Gauge, "malformed_records", "Registry records skipped "
                                      "because they cannot be parsed or name an unsafe path.")
        self.swaps = make(Counter, "swaps", "Segment-set changes applied.")
        self.folded_rows = make(Gauge, "folded_rows", "Rows held by the folds (one in-memory "
                                "graph over many segments), rows of released segments included.")
        self.folded_segments = make(Gauge, "folded_segments", "Served segments searched through "
                                    "a fold instead of their own index.")
        self.fold_build_seconds = make(Histogram, "fold_build_seconds", "Building one fold "
                                       "(copy and added rows), off the serving lock.",
                                       buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
        self.unavailable = make(Gauge, "unavailable", "1 while the searcher cannot reach a "
                                "dependency (kafka: the live tail cannot read).",
                                ("dependency",))
