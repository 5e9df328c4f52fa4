"""Specification of the pure core's boundary: `pipelines` imports no runtime, broker, database or web framework.

Checked in a fresh interpreter, since this test process may already have loaded them through other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = ("ray", "confluent_kafka", "psycopg", "fastapi", "prometheus_client", "opentelemetry")
OUTER_LAYERS = ("actors", "cluster", "serve_app", "tests")

PROBE = """
import importlib, json, pkgutil, sys
import pipelines
names = ["pipelines"] + [m.name for m in pkgutil.walk_packages(pipelines.__path__, "pipelines.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    """Module names found under pipelines/, and the top-level packages loaded after importing them all."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_importing_every_pipelines_module_loads_no_infrastructure_library(report):
    assert "pipelines.engine" in report["modules"] and "pipelines.policies.retry" in report["modules"]
    assert sorted(set(FORBIDDEN) & set(report["loaded"])) == []


def test_pipelines_never_imports_the_shells_around_it(report):
    # Data flows one way: the actors and the API call the core, never the reverse.
    assert sorted(set(OUTER_LAYERS) & set(report["loaded"])) == []
