"""Turning API keys off is explicit and loud: `eventpipe run` makes no key and logs a WARNING (the API's side is in
test_auth_gate.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cluster.dev_key import key_file
from cluster.run_command import _api_key
from cluster.settings import Settings


def test_run_with_auth_off_makes_no_key_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(_env_file=None, auth_enabled=False, data_dir=tmp_path)  # type: ignore[call-arg]
    with caplog.at_level(logging.WARNING, logger="cluster.run_command"):
        assert _api_key(settings, "postgresql://never-used") is None
    assert any(r.levelno == logging.WARNING and "auth_enabled=false" in r.getMessage() for r in caplog.records)
    assert not key_file(tmp_path).exists()
