"""Fixtures of the chaos suite: the `scenario` fixture and the session report (printed at the end of the run and
written to <repo>/.data/chaos-report.md).

It never injects faults; scenarios do, through the harness (tests/chaos/harness.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import FAULT_S, Scenario
from tests.chaos.report import ChaosReport
from tests.pipeline import Pipeline

REPORT_KEY = pytest.StashKey[ChaosReport]()
REPORT_PATH = Path(__file__).resolve().parents[2] / ".data" / "chaos-report.md"
_CHAOS_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REPORT_KEY] = ChaosReport(FAULT_S)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _CHAOS_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def scenario(pipeline: Pipeline, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    running = Scenario(request.node.name, pipeline, request.config.stash[REPORT_KEY])
    try:
        yield running
    finally:
        running.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    report = config.stash.get(REPORT_KEY, None)
    if report is None or not report.entries:
        return
    terminalreporter.section(f"chaos report (faults of {report.fault_s:g} s)")
    terminalreporter.write_line(report.table())
    report.write(REPORT_PATH)
    terminalreporter.write_line(f"written to {REPORT_PATH}")
