"""Specification of secret handling: credentials masked in every printed banner and every log line (message, args,
exception text, extra fields), and Settings that never carry a secret across a process boundary.

Real logging, real pickling (the pickler Ray uses); no Ray cluster.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import orjson
import pytest
import ray.cloudpickle
from pydantic import SecretStr, ValidationError

from cluster import cli
from cluster.observability.logs import log_file, setup_logging
from cluster.observability.redact import mask_credentials
from cluster.settings import MissingSecret, Settings, secrets_in_environment

PASSWORD = "Sup3r-s3cret"
URL = f"postgresql://eventpipe:{PASSWORD}@db.example:5432/eventpipe"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (URL, "postgresql://eventpipe:***@db.example:5432/eventpipe"),
        ("postgresql://u:p@ss@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
        ("redis://:pw@cache:6379", "redis://:***@cache:6379"),
        ("host=db user=u password=s3cret dbname=x", "host=db user=u password=*** dbname=x"),
        ("host=db password='with space\\' quote' port=5", "host=db password=*** port=5"),
        ("postgresql://u@h/db?password=s3cret&sslmode=verify", "postgresql://u@h/db?password=***&sslmode=verify"),
        ("PGPASSWORD=s3cret psql", "PGPASSWORD=*** psql"),
        ("connect('postgresql://u:s3cret@h/db') failed", "connect('postgresql://u:***@h/db') failed"),
    ],
)
def test_credentials_in_urls_and_dsns_are_masked(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked
    assert mask_credentials(masked) == masked  # masking is idempotent


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://postgres@127.0.0.1:5432/eventpipe",  # no password: nothing to hide
        "http://127.0.0.1:9464/metrics",
        "event e-1 processed (amount=12.5)",
    ],
)
def test_text_without_credentials_is_left_alone(text: str) -> None:
    assert mask_credentials(text) == text


def test_the_run_banner_masks_the_database_password(capsys: pytest.CaptureFixture[str]) -> None:
    # when `eventpipe run` announces the database it connected to
    cli.announce("PostgreSQL", URL, "(migrations applied now: none)")
    # then the line names the database but not its password
    out = capsys.readouterr().out
    assert "postgresql://eventpipe:***@db.example:5432/eventpipe" in out
    assert PASSWORD not in out


def test_no_log_line_carries_a_database_password(
    tmp_path: Path, restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    # given a process whose logging is set up as every eventpipe process's is
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    setup_logging(settings, "leader")
    log = logging.getLogger("eventpipe.test")

    # when the password reaches a line as the message, as an argument, in an exception and in an extra field
    log.warning(f"cannot reach {URL}")
    log.warning("cannot reach %s (dsn %r)", URL, f"host=db password={PASSWORD}")
    try:
        raise ConnectionError(f"connection to {URL} refused")
    except ConnectionError:
        log.exception("store unavailable")
    log.warning("retrying", extra={"target": URL})

    # then neither the file nor stderr holds the password, and each line still says which database
    for handler in logging.getLogger().handlers:
        handler.flush()
    written = log_file(settings, "leader").read_text()
    assert PASSWORD not in written
    assert PASSWORD not in capfd.readouterr().err
    lines = [orjson.loads(line) for line in written.splitlines()]
    assert [line["message"] for line in lines] == [
        "cannot reach postgresql://eventpipe:***@db.example:5432/eventpipe",
        "cannot reach postgresql://eventpipe:***@db.example:5432/eventpipe (dsn 'host=db password=***')",
        "store unavailable",
        "retrying",
    ]
    assert "ConnectionError: connection to postgresql://eventpipe:***@db.example" in lines[2]["exc_info"]
    assert lines[3]["target"] == "postgresql://eventpipe:***@db.example:5432/eventpipe"


def _with_secret() -> Settings:
    return Settings(_env_file=None).model_copy(update={"database_url": SecretStr(URL)})  # type: ignore[call-arg]


@pytest.mark.parametrize("dumps", [pickle.dumps, ray.cloudpickle.dumps], ids=["pickle", "ray-cloudpickle"])
def test_pickled_settings_carry_no_secret_but_every_other_field(dumps) -> None:  # type: ignore[no-untyped-def]
    # given settings holding the database URL
    settings = _with_secret().model_copy(update={"partitions": 7})
    # when they are pickled, as Ray pickles actor arguments and Serve init args
    data = dumps(settings)
    # then the bytes hold no part of the URL's credentials, and the rest arrives intact
    assert PASSWORD.encode() not in data
    assert b"db.example" not in data
    restored = pickle.loads(data)
    assert restored.database_url.get_secret_value() == ""
    assert restored.partitions == 7
    assert restored == settings.shareable()
    # and the process that pickled them still has its secret
    assert settings.database_url.get_secret_value() == URL


def test_settings_in_a_process_take_the_secret_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # given settings that crossed a process boundary, in a process whose environment has the URL
    shipped = pickle.loads(pickle.dumps(_with_secret()))
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    # when the process builds its own settings
    local = shipped.in_process()
    # then they have the URL, and a secret already present is kept as it is
    assert local.database_url.get_secret_value() == URL
    assert local.in_process() is local


def test_settings_in_a_process_without_the_secret_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = pickle.loads(pickle.dumps(_with_secret()))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    with pytest.raises(MissingSecret, match="DATABASE_URL is not set in the environment"):
        shipped.in_process()


def test_the_secret_is_in_the_environment_only_while_child_processes_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://before@h/db")
    with secrets_in_environment(_with_secret()):
        assert os.environ["DATABASE_URL"] == URL
    assert os.environ["DATABASE_URL"] == "postgresql://before@h/db"


def test_events_are_kept_at_least_as_long_as_dedup_keys() -> None:
    with pytest.raises(ValidationError, match="shorter than dedup_ttl_hours"):
        Settings(_env_file=None, events_retention_days=1, dedup_ttl_hours=48)  # type: ignore[call-arg]
    kept_forever = Settings(_env_file=None, events_retention_days=0, dedup_ttl_hours=48)  # type: ignore[call-arg]
    assert kept_forever.events_retention_days == 0
