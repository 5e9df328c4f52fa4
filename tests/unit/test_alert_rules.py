"""Specification of the Prometheus alert rules: valid for promtool, unit-tested firing and not firing, well annotated.

Runs the real `promtool` (Debian package `prometheus`); a missing promtool is an error, never a skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "kuberay" / "monitoring"
RULES = MONITORING / "alert-rules.yml"
RULE_TESTS = MONITORING / "alert-rules.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
SEVERITIES = {"warning", "critical"}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: install the Debian package `prometheus` (make tools)")
    return subprocess.run([promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120, check=False)


def _alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _rule_test_cases() -> list[dict]:
    return [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_promtool_accepts_the_rule_file():
    done = _promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_rules_pass():
    done = _promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unit_tests_load_the_rule_file():
    assert yaml.safe_load(RULE_TESTS.read_text())["rule_files"] == [RULES.name]


def test_every_alert_has_a_firing_and_a_not_firing_case():
    cases = _rule_test_cases()
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    names = {alert["alert"] for alert in _alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"
    assert (firing | quiet) - names == set(), "test cases for alerts that do not exist"


def test_alert_names_are_unique():
    names = [alert["alert"] for alert in _alerts()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("alert", _alerts(), ids=lambda alert: alert["alert"])
def test_every_alert_has_a_severity_summary_description_and_runbook(alert):
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert annotations["runbook_url"].startswith("docs/runbook.md#")


def test_every_runbook_link_points_at_a_section_of_the_runbook():
    headings = re.findall(r"^#{2,4} (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    anchors = {_github_anchor(heading) for heading in headings}
    linked = {alert["annotations"]["runbook_url"].partition("#")[2] for alert in _alerts()}
    assert linked - anchors == set(), "docs/runbook.md has no section for these alert runbook anchors"
