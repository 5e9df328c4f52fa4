"""The development key of `eventpipe run` (`make run`): key "dev", every scope, the default tenant, kept in
`<data dir>/api_key` (mode 0600) and printed on every start, as Jupyter prints its token.

The file is created with mode 0600 (never readable by others, not even for an instant) and replaced atomically; the
key's text goes to that file and the terminal only, never to a log line.
"""

from __future__ import annotations

import os
from pathlib import Path

from cluster.adapters.key_store import KeyStore
from pipelines.access import DEFAULT_TENANT, Scope

DEV_KEY_NAME = "dev"
KEY_FILE = "api_key"
KEY_FILE_MODE = 0o600


def key_file(data_dir: Path) -> Path:
    return data_dir.resolve() / KEY_FILE


def dev_key(
    store: KeyStore,
    data_dir: Path,
    requests_per_minute: int,
    events_per_minute: int | None = None,
    *,
    name: str = DEV_KEY_NAME,
    file: str = KEY_FILE,
) -> tuple[str, bool]:
    """The development key (or another local key of all scopes kept in `data_dir/file`, such as the benchmark's) and
    whether it was made now: the file's key while the database holds it active, else a new one (first start, a wiped
    database, a revoked key), which replaces the file and retires the old key of that name."""
    path = data_dir.resolve() / file
    if path.exists():
        os.chmod(path, KEY_FILE_MODE)  # a copy restored with looser rights is tightened before it is read
        key = path.read_text(encoding="ascii", errors="replace").strip()
        if store.is_active(key):
            return key, False
    store.retire(name)
    issued, _ = store.create(name, DEFAULT_TENANT, frozenset(Scope), requests_per_minute, events_per_minute)
    write_private(path, issued.key + "\n")
    return issued.key, True


def write_private(path: Path, text: str) -> None:
    """`text` into `path` with mode 0600 from the moment the file exists; the old file is replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
