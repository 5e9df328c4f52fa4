"""Specification of the partition owner's state as others read it: a closed set; an owner that gave up on a batch
says so (and stays so when stopped), and only a starting or running owner counts as healthy.
"""

from __future__ import annotations

import threading

import pytest

from actors.metrics_hub import healthy
from actors.partition_owner import OwnerStatus, PartitionOwner, StageTimings
from cluster.observability.owner_state import OwnerState
from pipelines.policies.bisect import Abandoned
from pipelines.policies.stall import StallPolicy, StallWatch


def an_owner_whose_loop_raises(exc: Exception):
    """The owner's own class (not the Ray actor) with its loop replaced: only its status bookkeeping runs."""
    cls = PartitionOwner.__ray_actor_class__
    owner = cls.__new__(cls)
    owner._status = OwnerStatus("events.ingest", 0, "events.ingest:0:test", 1, state=OwnerState.RUNNING)
    owner._stop = threading.Event()
    owner._stall = StallWatch(StallPolicy(60.0))
    owner._timings = StageTimings()

    def run() -> None:
        raise exc

    owner._run = run
    owner._thread = threading.Thread(target=owner._run_guarded)
    return owner


def test_an_owner_that_gives_up_on_a_batch_says_it_is_abandoned_and_stays_so_when_stopped():
    owner = an_owner_whose_loop_raises(Abandoned("the bare dead letter of offset 7 was refused: 23514"))

    owner._thread.start()
    owner._thread.join(5.0)

    assert owner.status()["state"] == OwnerState.ABANDONED
    assert "offset 7" in str(owner.status()["last_error"])
    assert owner.stop(1.0)["state"] == OwnerState.ABANDONED
    assert not healthy("owner:events.ingest:0", owner.status())


@pytest.mark.parametrize("state", list(OwnerState))
def test_only_a_starting_or_running_owner_is_healthy(state):
    assert healthy("owner:events.ingest:0", {"state": state.value}) == (
        state in (OwnerState.STARTING, OwnerState.RUNNING)
    )
