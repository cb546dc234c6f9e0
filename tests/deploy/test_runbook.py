"""docs/operations.md has one runbook entry for every alert in deploy/prometheus/rules.yml,
and every alert's runbook_url points at its entry."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"


def alert_rules() -> list[dict]:
    """Every alerting rule of rules.yml."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    return [r for group in rules["groups"] for r in group["rules"] if "alert" in r]


def anchor(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading: lower case, punctuation dropped,
    spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown page."""
    return {anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def test_anchors_are_made_as_markdown_renderers_make_them():
    assert anchor("StreamvecTargetDown") == "streamvectargetdown"
    assert anchor("Logs: text or JSON") == "logs-text-or-json"
    assert anchor("`--json` output") == "--json-output"


def test_every_alert_has_exactly_one_runbook_entry():
    alerts = [r["alert"] for r in alert_rules()]
    text = OPERATIONS.read_text(encoding="utf-8")
    entries = re.findall(r"^### (Streamvec\w+)$", text, flags=re.MULTILINE)
    assert sorted(entries) == sorted(set(alerts)), "docs/operations.md: one entry per alert"


def test_every_alert_links_its_own_runbook_entry():
    found = anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in alert_rules():
        url = rule["annotations"].get("runbook_url", "")
        page, _, fragment = url.partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert (ROOT / page).is_file()
        assert fragment == anchor(rule["alert"]) and fragment in found, rule["alert"]
