"""Specification of the Grafana dashboard: importable as is, laid out without collisions, and querying only metrics
from the catalogue (cluster/observability/metrics.py) with PromQL that Prometheus parses.

PromQL syntax is checked by the real `promtool` (Debian package `prometheus`); a missing promtool is an error.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from cluster.observability import metrics as catalogue

DASHBOARD = Path(__file__).resolve().parents[2] / "kuberay" / "monitoring" / "grafana-dashboard.json"
GRID_COLUMNS = 24

# PromQL functions and aggregation operators the expressions may call.
PROMQL_FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "ceil", "clamp_min", "count", "delta", "deriv", "histogram_quantile",
    "increase", "irate", "label_replace", "max", "max_over_time", "min", "min_over_time", "quantile", "rate", "round",
    "sum", "sum_over_time", "topk", "vector",
}  # fmt: skip
PROMQL_KEYWORDS = {"by", "without", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
REQUIRED_PANELS = {
    "Throughput",
    "Latency percentiles",
    "Lag per partition",
    "Errors",
    "DLQ size",
    "Circuit breakers",
    "Worker health",
    "Commit batch size",
    "Spool depth",
}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def series_names() -> dict[str, str]:
    """Every series name the catalogue exports, mapped to its family name."""
    built = catalogue.build(CollectorRegistry())
    families = [family for field in dataclasses.fields(built) for family in getattr(built, field.name).describe()]
    return {family.name + suffix: family.name for family in families for suffix in SUFFIXES[family.type]}


def _panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _expressions(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in _panels(dashboard) for target in panel["targets"]]


def _names_called_and_referenced(expr: str) -> tuple[set[str], set[str]]:
    """(functions and operators called, series names referenced) in a PromQL expression."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    stripped = re.sub(r"\{[^}]*\}", "", stripped)  # label matchers
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # range selectors
    stripped = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)  # label lists
    called = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\(", stripped))
    words = set(re.findall(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w(])(?!\s*\()", stripped))
    return called, words - PROMQL_KEYWORDS


def test_dashboard_is_an_importable_export_with_a_prometheus_input(dashboard):
    assert dashboard["title"] == "eventpipe"
    assert dashboard["uid"]
    assert dashboard["schemaVersion"] >= 36
    inputs = {item["name"]: item for item in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"


def test_every_panel_has_a_unique_id_and_a_grid_position_inside_the_grid(dashboard):
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]


def test_no_two_panels_overlap(dashboard):
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells.get((x, y))}"
                cells[(x, y)] = panel["title"]


def test_the_operator_panels_are_all_there(dashboard):
    assert REQUIRED_PANELS <= {panel["title"] for panel in _panels(dashboard)}


def test_every_query_uses_the_prometheus_input(dashboard):
    for panel in _panels(dashboard):
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_queries_reference_only_catalogued_metrics_and_promql_functions(dashboard, series_names):
    for expr in _expressions(dashboard):
        called, referenced = _names_called_and_referenced(expr)
        assert called <= PROMQL_FUNCTIONS, f"unknown function in {expr}: {called - PROMQL_FUNCTIONS}"
        assert referenced, f"no metric in {expr}"
        assert referenced <= set(series_names), f"not in the catalogue, in {expr}: {referenced - set(series_names)}"


def test_every_catalogued_metric_is_on_the_dashboard(dashboard, series_names):
    shown = {series_names[name] for expr in _expressions(dashboard) for name in _names_called_and_referenced(expr)[1]}
    assert shown == set(series_names.values())


def test_the_name_parser_finds_metrics_and_ignores_labels_functions_and_ranges():
    called, referenced = _names_called_and_referenced(
        'histogram_quantile(0.99, sum by (le, type) (rate(x_bucket{type="a b",le!~"1"}[$__rate_interval])))'
        " / on (type) group_left y_total and z"
    )
    assert called == {"histogram_quantile", "sum", "rate"}
    assert referenced == {"x_bucket", "y_total", "z"}


def test_promql_of_every_query_parses(dashboard, tmp_path):
    """promtool parses each query as a recording rule (Grafana's $__rate_interval replaced by a real range)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: install the Debian package `prometheus` (make tools)")
    rules = [
        {"record": f"dashboard:query_{index}", "expr": expr.replace("$__rate_interval", "1m")}
        for index, expr in enumerate(_expressions(dashboard))
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
