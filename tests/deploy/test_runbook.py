"""docs/operations.md has one runbook entry for every alert in deploy/prometheus/rules.yml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_alert_has_exactly_one_runbook_entry():
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    alerts = [r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r]
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    entries = re.findall(r"^### (Streamvec\w+)$", text, flags=re.MULTILINE)
    assert sorted(entries) == sorted(set(alerts)), "docs/operations.md: one entry per alert"
