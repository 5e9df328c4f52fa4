"""What Ray stores about the running pipeline holds no database password: every actor's creation arguments (leader,
checkpoint writers, partition owners, spool drainer, metrics hub, Serve's controller and replicas) and Serve's
application state live in the GCS server, so the test reads that process's memory and looks for the password.

Real Ray started by the session's pipeline fixture, whose database URL carries a password (tests/pipeline.py).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import ray
from ray._private import ray_constants

from actors.checkpoint_writer import CheckpointWriter
from tests.pipeline import Pipeline

pytestmark = pytest.mark.integration

# Kernel pages, and the main stack, whose top holds the process's environment: the GCS inherits DATABASE_URL like
# every process of the cluster, which is where actors are meant to read it. What Ray stores is on the heap.
_SKIPPED = frozenset({"[vvar]", "[vvar_vclock]", "[vsyscall]", "[vdso]", "[stack]"})


def _gcs_pid() -> int:
    node = ray._private.worker._global_node
    if node is None:
        raise AssertionError("this process did not start the Ray cluster: no GCS process to read")
    return int(node.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER][0].process.pid)


def _regions_holding(pid: int, needles: list[bytes]) -> dict[bytes, list[str]]:
    """For each needle, the writable memory regions of process `pid` that contain it."""
    found: dict[bytes, list[str]] = {n: [] for n in needles}
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            name = fields[5] if len(fields) > 5 else "[anon]"
            if not fields[1].startswith("rw") or name in _SKIPPED:
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(low)
                data = mem.read(high - low)
            except (OSError, OverflowError, ValueError):
                continue  # a guard page or a mapping that went away meanwhile
            for needle in needles:
                if needle in data:
                    found[needle].append(f"{name}@{low:x}")
    return found


def test_ray_stores_no_database_password(pipeline: Pipeline) -> None:
    # given the whole pipeline running (leader, writers, owners, drainer, hub, Serve app), configured with a URL
    # whose password is this session's own
    password = urlsplit(pipeline.db_url).password
    assert password and len(password) >= 16, "the session's database URL must carry a password for this test"
    # a non-secret setting travels in the same arguments: it shows that the scan sees them
    control = pipeline.settings.enrichment_url.encode()
    assert control

    # when the GCS server's memory is read
    found = _regions_holding(_gcs_pid(), [password.encode(), control])

    # then the actors' arguments are there, and the password is not
    assert found[control], "the scan did not find the actors' settings: it would prove nothing"
    assert not found[password.encode()], f"the database password is in GCS memory: {found[password.encode()]}"


def test_an_actor_whose_environment_lacks_the_secret_fails_at_start_saying_so(pipeline: Pipeline) -> None:
    # given a checkpoint writer started in a worker whose environment has no DATABASE_URL (a node set up without it)
    writer = CheckpointWriter.options(  # type: ignore[attr-defined]
        max_restarts=0, runtime_env={"env_vars": {"DATABASE_URL": ""}}
    ).remote(pipeline.settings)
    # when it is called, then its start failed with the reason, instead of connecting with libpq's defaults
    with pytest.raises(ray.exceptions.RayActorError, match="DATABASE_URL is not set in the environment of process"):
        ray.get(writer.stats.remote(), timeout=120)
