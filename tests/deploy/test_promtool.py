"""The Prometheus config and alert rules in deploy/ pass promtool's checks and unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
SEVERITIES = {"warning", "critical"}


@pytest.fixture(scope="module")
def promtool() -> str:
    """Path of promtool, which `make deps` installs with Debian's prometheus package."""
    found = shutil.which("promtool")
    assert found, "promtool not on PATH: run `make prometheus` (Debian package prometheus)"
    return found


def run(promtool: str, *args: str) -> str:
    """Run promtool in deploy/prometheus, assert it succeeds and return its output."""
    proc = subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True,
                          timeout=120, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def alert_rules() -> list[dict]:
    """Every rule of rules.yml."""
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_check_config_accepts_the_scrape_config_and_its_rule_file(promtool):
    output = run(promtool, "check", "config", "prometheus.yml")
    assert " SUCCESS: prometheus.yml is valid prometheus config file syntax" in output
    assert "SUCCESS: 1 rule files found" in output


def test_check_rules_accepts_every_rule(promtool):
    output = run(promtool, "check", "rules", "rules.yml")
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_rule_unit_tests_pass(promtool):
    output = run(promtool, "test", "rules", "rules_test.yml")
    assert output.split() == ["Unit", "Testing:", "rules_test.yml", "SUCCESS"]


def test_every_rule_is_an_alert_with_severity_summary_description_and_runbook():
    rules = alert_rules()
    assert [r["alert"] for r in rules] == [
        "StreamvecTargetDown", "StreamvecCheckpointLagGrowing", "StreamvecFreshnessSlow",
        "StreamvecRecallLow", "StreamvecEmbeddingDrift", "StreamvecDeadLetters",
        "StreamvecRetentionHeadroomLow", "StreamvecCheckpointOutOfRange",
        "StreamvecSearcherErrors", "StreamvecCanaryFailures",
        "StreamvecIndexerDependencyUnavailable", "StreamvecSearcherDependencyUnavailable",
        "StreamvecSegmentCorrupt", "StreamvecSegmentUnavailable",
    ]
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, \
            rule["alert"]


def test_the_unit_tests_fire_every_alert():
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if not case["exp_alerts"]}
    every = {rule["alert"] for rule in alert_rules()}
    assert fired == every
    assert quiet == every
