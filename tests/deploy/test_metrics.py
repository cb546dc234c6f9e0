"""Every metric that an alert rule or the Grafana dashboard names is one the code exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from indexer.metrics import IndexerMetrics
from monitor.collectors import CollectionCollector
from monitor.metrics import MonitorMetrics
from searcher.metrics import SearcherMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamvec.json"
COLLECTION = "products"

# A metric name in PromQL; the lookbehind keeps it from matching inside a longer identifier.
NAME = re.compile(r"(?<![A-Za-z0-9_:])streamvec_[A-Za-z0-9_:]*")
# String literals hold label values and regexes, never metric names.
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# The series each metric type puts on the wire, by suffix (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),  # the client's summaries have no quantiles
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def metric_names(expr: str) -> set[str]:
    """Return the streamvec_* metric names a PromQL expression selects."""
    return set(NAME.findall(STRING.sub('""', expr)))


def rule_exprs() -> list[str]:
    """Return the expression of every rule in rules.yml."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _panels(panels: Iterable[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", ()))  # panels nested in collapsed rows


def dashboard_exprs() -> list[str]:
    """Return every PromQL expression of the dashboard: panel targets and template queries."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in _panels(board["panels"]) for t in p.get("targets", ())]
    for var in board["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def exported_series(registry: CollectorRegistry) -> dict[str, str]:
    """Map each series name the registry can put on the wire to its family name.

    A labelled metric has no samples until a child exists, so the names come from each
    family's type, plus the samples that scrape-time collectors produced.
    """
    series: dict[str, str] = {}
    for family in registry.collect():
        for suffix in SUFFIXES[family.type]:
            series[family.name + suffix] = family.name
        for sample in family.samples:
            series[sample.name] = family.name
    return series


def code_registries() -> dict[str, CollectorRegistry]:
    """Fresh registries holding every role's metrics, as each process registers them."""
    registries = {role: CollectorRegistry() for role in ("indexer", "searcher", "monitor")}
    IndexerMetrics(registries["indexer"], COLLECTION)
    SearcherMetrics(registries["searcher"], COLLECTION)
    register_monitor(registries["monitor"])
    return registries


class EmptyRegistry:
    """A collection registry with no segments yet, in place of the one in Redis."""

    def segments(self, *, skipped: dict[str, str] | None = None) -> list:
        """No segments registered."""
        return []

    def checkpoints(self) -> dict[int, int]:
        """Partition 0 indexed up to offset 3."""
        return {0: 3}


def register_monitor(registry: CollectorRegistry) -> None:
    """Register the monitor's metrics and scrape-time collector, fed without Redis or Kafka."""
    MonitorMetrics(registry, COLLECTION)
    registry.register(CollectionCollector(COLLECTION, EmptyRegistry(), lambda: {0: (1, 5)}))


def all_exported() -> dict[str, str]:
    """Every series name any role exports."""
    series: dict[str, str] = {}
    for registry in code_registries().values():
        series.update(exported_series(registry))
    return series


def test_names_are_found_in_promql_and_string_literals_are_not_names():
    expr = ('histogram_quantile(0.99, sum by (le) (rate(streamvec_a_seconds_bucket{job='
            '"streamvec_not_a_metric", x=~\'streamvec_nor_this\'}[5m])))'
            ' / on (collection) group_left streamvec_b_total offset 5m'
            ' and max_over_time(streamvec_c:rate5m[1m]) > bstreamvec_d')
    assert metric_names(expr) == {"streamvec_a_seconds_bucket", "streamvec_b_total",
                                  "streamvec_c:rate5m"}


def test_series_names_by_type_match_what_the_client_puts_on_the_wire():
    registry = CollectorRegistry()
    made = [
        Counter("c_rows", "d", ["collection"], registry=registry),
        Gauge("g_bytes", "d", ["collection"], registry=registry),
        Histogram("h_seconds", "d", ["collection"], registry=registry),
        Summary("s_seconds", "d", ["collection"], registry=registry),
    ]
    predicted = exported_series(registry)
    for metric in made:
        metric.labels(COLLECTION)  # a child makes the client print the family's samples
    text = generate_latest(registry).decode()
    wire = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert wire == set(predicted)
    assert predicted == {
        "c_rows_total": "c_rows", "c_rows_created": "c_rows", "g_bytes": "g_bytes",
        "h_seconds_bucket": "h_seconds", "h_seconds_count": "h_seconds",
        "h_seconds_sum": "h_seconds", "h_seconds_created": "h_seconds",
        "s_seconds_count": "s_seconds", "s_seconds_sum": "s_seconds",
        "s_seconds_created": "s_seconds",
    }


def test_a_suffix_the_type_lacks_is_not_exported():
    series = all_exported()
    for name in ("streamvec_indexer_consumed_rows",  # a counter is only on the wire as _total
                 "streamvec_indexer_growing_bytes_count", "streamvec_searcher_queries_bucket",
                 "streamvec_searcher_total_seconds"):
        assert name not in series
    assert series["streamvec_searcher_total_seconds_bucket"] == "streamvec_searcher_total_seconds"
    assert series["streamvec_indexer_consumed_rows_total"] == "streamvec_indexer_consumed_rows"


def test_every_metric_the_alert_rules_name_is_exported():
    named = set().union(*map(metric_names, rule_exprs()))
    missing = sorted(named - set(all_exported()))
    assert not missing, f"rules.yml names metrics no code exports: {missing}"
    assert named == {
        "streamvec_indexer_checkpoint_out_of_range",
        "streamvec_indexer_dlq_messages_total",
        "streamvec_indexer_unavailable",
        "streamvec_monitor_canary_failures_total",
        "streamvec_monitor_checkpoint_lag_messages",
        "streamvec_monitor_drift_state",
        "streamvec_monitor_freshness_seconds_bucket",
        "streamvec_monitor_recall",
        "streamvec_monitor_retention_headroom_messages",
        "streamvec_searcher_errors_total",
        "streamvec_searcher_queries_total",
        "streamvec_searcher_unavailable",
        "streamvec_searcher_unloaded_segments",
    }


def test_every_metric_the_dashboard_names_is_exported():
    named = set().union(*map(metric_names, dashboard_exprs()))
    missing = sorted(named - set(all_exported()))
    assert not missing, f"the dashboard names metrics no code exports: {missing}"
    roles = {name.split("_")[1] for name in named}
    assert roles == {"indexer", "searcher", "monitor"}


def test_every_dashboard_query_is_filtered_by_the_collection_variable():
    board = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "collection"]
    unfiltered = []
    for panel in _panels(board["panels"]):
        for target in panel.get("targets", ()):
            selectors = re.findall(r"streamvec_[a-z0-9_]+(\{[^}]*\})?", target["expr"])
            if any('collection=~"$collection"' not in s for s in selectors):
                unfiltered.append(f"{panel['title']}: {target['expr']}")
    assert unfiltered == []
