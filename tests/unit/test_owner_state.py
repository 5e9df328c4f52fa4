"""Specification of the partition owner's state as others read it: a closed set, of which only a starting or running
owner counts as healthy (what each ending says is specified in test_owner_loop.py).
"""

from __future__ import annotations

import pytest

from actors.metrics_hub import healthy
from pipelines.owner_status import OwnerState


@pytest.mark.parametrize("state", list(OwnerState))
def test_only_a_starting_or_running_owner_is_healthy(state):
    assert healthy("owner:events.ingest:0", {"state": state.value}) == (
        state in (OwnerState.STARTING, OwnerState.RUNNING)
    )
