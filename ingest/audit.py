"""The audit trail: who changed what, appended to the Redis stream `sv:audit`.

Every entry has the fields `time` (unix seconds), `actor` (Settings.actor), `action` (such as
`collection.create`), `target` (the collection it concerns) and `details` (a JSON object).
The stream is capped near MAXLEN entries, oldest first out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

AUDIT_KEY = "sv:audit"
MAXLEN = 100_000
# Entries read per round trip while looking for one collection's entries in the stream.
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit entry as stored: stream id, time, actor, action, target and details."""

    entry_id: str
    time: float
    actor: str
    action: str
    target: str
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict."""
        return {"id": self.entry_id, "time": self.time, "actor": self.actor,
                "action": self.action, "target": self.target, "details": self.details}


def record(client: redis.Redis, action: str, target: str, details: dict[str, Any],
           actor: str) -> str:
    """Append one entry to the audit stream and return its stream id."""
    if not action or not actor:
        raise ValueError("an audit entry needs an action and an actor")
    fields = {"time": f"{time.time():.3f}", "actor": actor, "action": action,
              "target": target, "details": json.dumps(details, sort_keys=True,
                                                      separators=(",", ":"))}
    entry_id = client.xadd(AUDIT_KEY, fields, maxlen=MAXLEN, approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def read(client: redis.Redis, count: int, collection: str | None = None) -> list[AuditEntry]:
    """The latest `count` entries, oldest first; with `collection`, only those targeting it."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    found: list[AuditEntry] = []
    upper = "+"
    while len(found) < count:
        page = client.xrevrange(AUDIT_KEY, max=upper, min="-", count=_PAGE)
        for entry_id, fields in page:
            entry = _parse(entry_id, fields)
            if collection is None or entry.target == collection:
                found.append(entry)
                if len(found) == count:
                    break
        if len(page) < _PAGE:
            break
        upper = "(" + _text(page[-1][0])  # exclusive: continue below the last id seen
    return found[::-1]


def _parse(entry_id: bytes | str, fields: dict) -> AuditEntry:
    """An AuditEntry from raw stream fields; unreadable details become {"raw": text}."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    try:
        details = json.loads(text.get("details", "{}"))
    except ValueError:
        details = {"raw": text.get("details", "")}
    try:
        when = float(text.get("time", "nan"))
    except ValueError:
        when = float("nan")
    return AuditEntry(_text(entry_id), when, text.get("actor", ""), text.get("action", ""),
                      text.get("target", ""), details if isinstance(details, dict) else
                      {"value": details})


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
