"""Prometheus metrics of the monitor role: `streamvec_monitor_*`, labelled by collection."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamvec.metrics import CollectionMetrics, factory, register_build_info

ROLE = "monitor"
# Produce -> visible spans the searcher's tail poll (tens of ms) up to a stalled pipeline.
FRESHNESS_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
DRIFT_STATES = {"ok": 0, "warning": 1, "drift": 2}
CANARY_FAILURE_REASONS = ("produce", "search", "timeout", "delete")


class MonitorMetrics(CollectionMetrics):
    """Every monitor metric on one registry; call `labels(metric, ...)` to get a child."""

    def __init__(self, registry: CollectorRegistry, collection: str) -> None:
        super().__init__(collection)
        make = factory(registry, ROLE)
        register_build_info(registry, ROLE)
        self.drift_mean_cosine_distance = make(
            Gauge, "drift_mean_cosine_distance", "1 - cosine of the reference and current "
            "windows' mean embeddings.")
        self.drift_mmd = make(Gauge, "drift_mmd", "Unbiased squared MMD between the reference "
                              "and current windows (RBF kernel).")
        self.drift_mmd_p_value = make(Gauge, "drift_mmd_p_value", "Permutation-test p-value "
                                      "of the MMD.")
        self.drift_drifted_share = make(Gauge, "drift_drifted_share", "Share of dimensions "
                                        "whose marginal changed (KS, Benjamini-Hochberg).")
        self.drift_norm_shift = make(Gauge, "drift_norm_shift", "KS distance between the "
                                     "windows' L2-norm distributions.")
        self.drift_state = make(Gauge, "drift_state", "Drift verdict: 0 ok, 1 warning, 2 drift.")
        self.window_rows = make(Gauge, "window_rows", "Rows held by a drift window "
                                "(reference or current).", ("window",))
        self.skipped_records = make(Counter, "skipped_records", "Kafka messages the drift "
                                    "window reader could not decode or validate, skipped.")
        self.freshness_seconds = make(Histogram, "freshness_seconds", "Canary upsert sent to "
                                      "visible in an eventual query.", buckets=FRESHNESS_BUCKETS)
        self.canary_failures = make(Counter, "canary_failures", "Canary cycles that failed, "
                                    "by step.", ("reason",))
        self.recall = make(Gauge, "recall", "Recall@k of the searchers against exact search "
                           "over the registered segments.", ("k",))
        self.probe_queries = make(Counter, "probe_queries", "Query vectors the recall probe "
                                  "sent.")
        for reason in CANARY_FAILURE_REASONS:
            self.labels(self.canary_failures, reason)  # exported at 0 before the first failure

    def observe_drift(self, report) -> None:
        """Set every drift gauge from a `monitor.drift.DriftReport`."""
        self.labels(self.drift_mean_cosine_distance).set(report.mean_cosine_distance)
        self.labels(self.drift_mmd).set(report.mmd)
        self.labels(self.drift_mmd_p_value).set(report.mmd_pvalue)
        self.labels(self.drift_drifted_share).set(report.drifted_share)
        self.labels(self.drift_norm_shift).set(report.norm_shift)
        self.labels(self.drift_state).set(DRIFT_STATES[report.state])


# Client-measured search latency: a cached answer in a millisecond up to a timed-out shadow.
CHALLENGE_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                             5, 10)


class ChallengeMetrics:
    """Champion-challenger metrics, labelled by alias: `streamvec_monitor_challenge_*`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        make = factory(registry, ROLE, "alias")
        self.queries = make(Counter, "challenge_queries", "Query vectors of shadowed searches "
                            "the evaluator compared.")
        self.shadow_errors = make(Counter, "challenge_shadow_errors", "Shadowed searches the "
                                  "challenger failed or did not answer in time.")
        self.overlap = make(Gauge, "challenge_overlap_ratio", "Mean overlap@k of the champion's "
                            "and the challenger's answers, over the challenge so far.")
        self.recall = make(Gauge, "challenge_recall_ratio", "Mean recall@k against exact search "
                           "over the collection's registered segments, per role.", ("role",))
        self.latency = make(Histogram, "challenge_latency_seconds", "Search latency the client "
                            "measured, per role.", ("role",), buckets=CHALLENGE_LATENCY_BUCKETS)
