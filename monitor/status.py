"""The status table over every collection: collecting its rows and rendering them as text.

Rows, segments and lag come from the registry and Kafka at the moment of printing; drift,
recall, freshness, query rate and probe latency come from the summary a running monitor keeps
in `sv:{NAME}:monitor` (monitor/summary.py). Whatever is unknown prints as `-`. The
`streamvec status` command (streamvec/commands/status.py) prints it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException

from indexer.registry import Registry
from ingest import catalog
from monitor import summary
from monitor.collectors import KafkaWatermarks
from searcher.watcher import read_unloaded
from streamvec.settings import Settings

WATERMARK_TIMEOUT_S = 3.0
COLUMNS = (("COLLECTION", "<", 24), ("ROWS", ">", 10), ("SEGS", ">", 5), ("LAG", ">", 8),
           ("QPS", ">", 8), ("P99 MS", ">", 8), ("DRIFT", "<", 8), ("RECALL", "<", 10),
           ("FRESH P99", ">", 9), ("UNSERVED", ">", 8))
LEGEND = ("ROWS: rows in registered segments; LAG: messages past the checkpoints; QPS: query "
          "requests per second;\nP99 MS: latency of the monitor's own queries; RECALL: "
          "recall@k; FRESH P99: canary write to visible, seconds;\nUNSERVED: registered "
          "segments a searcher could not load, and malformed registry records. '-': unknown.")


@dataclass(frozen=True, slots=True)
class StatusRow:
    """What the table shows for one collection; None where it is unknown."""

    name: str
    rows: int | None
    segments: int | None
    lag: int | None
    qps: float | None
    p99_ms: float | None
    drift: str | None
    recall: float | None
    recall_k: int | None
    freshness_p99_s: float | None
    # Segment id -> why it is not served (corrupt or unavailable, retried), or why its
    # registry record was skipped.
    unserved: dict[str, str] = field(default_factory=dict)


def collect(settings: Settings, names: list[str] | None = None) -> list[StatusRow]:
    """One StatusRow per collection (every registered one unless `names` are given)."""
    client = settings.redis_client()
    wanted = names or catalog.list_names(client)
    return [_row(settings, client, name) for name in wanted]


def render(rows: list[StatusRow]) -> str:
    """The table as text, header first, legend last."""
    lines = [" ".join(_cell(title, align, width) for title, align, width in COLUMNS)]
    for r in rows:
        recall = None if r.recall is None else f"{r.recall:.3f}@{r.recall_k}"
        values = (r.name, r.rows, r.segments, r.lag, _num(r.qps, 1), _num(r.p99_ms, 1),
                  r.drift, recall, _num(r.freshness_p99_s, 3), len(r.unserved))
        lines.append(" ".join(_cell(v, align, width)
                              for v, (_, align, width) in zip(values, COLUMNS, strict=True)))
    if not rows:
        lines.append("no collections")
    lines += [f"{r.name}: {sid} not served: {why}" for r in rows
              for sid, why in sorted(r.unserved.items())]
    lines.append(LEGEND)
    return "\n".join(lines)


def _row(settings: Settings, client, name: str) -> StatusRow:
    registry = Registry(client, name)
    skipped: dict[str, str] = {}
    segments = registry.segments(skipped=skipped)
    live = summary.read(client, name)
    registered = {s.segment_id: s.path for s in segments}
    unserved = {f"record {sid}": why for sid, why in skipped.items()}
    for sid, report in read_unloaded(registry).items():
        if registered.get(sid) == report.get("path"):  # still registered as it was reported
            kind = "corrupt" if report.get("corrupt") else "unavailable"
            unserved[sid] = f"{kind} since {_when(report.get('since'))}: {report.get('reason')}"
    return StatusRow(name, sum(s.rows for s in segments), len(segments),
                     _lag(settings, client, name, registry), _float(live, "qps"),
                     _float(live, "probe_p99_ms"), live.get("drift_state"),
                     _float(live, "recall"), _int(live, "recall_k"),
                     _float(live, "freshness_p99_s"), unserved)


def _lag(settings: Settings, client, name: str, registry: Registry) -> int | None:
    """Messages past the checkpoints over all partitions, or None if Kafka cannot say."""
    try:
        topic = catalog.load_spec(client, name).collection.topic
        marks = KafkaWatermarks(settings, topic, timeout=WATERMARK_TIMEOUT_S)()
    except (KafkaException, TimeoutError):
        return None
    checkpoints = registry.checkpoints()
    return sum(high - checkpoints.get(p, 0) for p, (_, high) in marks.items())


def _when(at: object) -> str:
    """A report's wall-clock time as UTC text."""
    if not isinstance(at, int | float):
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _float(fields: dict[str, str], key: str) -> float | None:
    try:
        return float(fields[key])
    except (KeyError, ValueError):
        return None


def _int(fields: dict[str, str], key: str) -> int | None:
    value = _float(fields, key)
    return None if value is None else int(value)


def _num(value: float | None, digits: int) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _cell(value: object, align: str, width: int) -> str:
    text = "-" if value is None else str(value)
    return f"{text:{align}{width}}"

