"""Specification of the embedded infrastructure the other tests stand on: broker, PostgreSQL, settings.

It must never leave a process running: every component it starts itself is stopped before the test ends.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import SecretStr

from cluster.adapters.kafka_admin import UnownedPartitions, ensure_topics
from cluster.local import EmbeddedBroker, EmbeddedPostgres, LocalStack
from cluster.settings import Settings

pytestmark = pytest.mark.integration


def _poll_one(consumer: Consumer, deadline_s: float) -> Message | None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None:
            return message
    return None


def test_broker_delivers_a_produced_record_to_an_assigned_consumer(broker: EmbeddedBroker) -> None:
    # given a topic with two partitions
    topic = f"infra-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)]).values():
        future.result(timeout=10)
    # when a record is produced to partition 1 with acks=all
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(topic, key=b"k", value=b"hello", partition=1)
    assert producer.flush(10) == 0
    # then a consumer assigned to that partition (no group rebalancing) reads it back
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "infra", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 1, 0)])
        message = _poll_one(consumer, deadline_s=15)
    finally:
        consumer.close()
    assert message is not None
    assert message.error() is None
    assert (message.partition(), message.key(), message.value()) == (1, b"k", b"hello")


def test_postgres_answers_select_one(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_postgres_keeps_committed_rows_across_stop_and_start(tmp_path: Path) -> None:
    # given a committed row
    server = EmbeddedPostgres(tmp_path).start()
    try:
        with psycopg.connect(server.url) as conn:
            conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL)")
            conn.execute("INSERT INTO kv VALUES ('a', '1')")
        port = server.port
        # when the server stops cleanly and a new handle starts the same data dir
        server.stop(mode="fast")
        assert not server.running
        server = EmbeddedPostgres(tmp_path).start()
        # then the row is there, on the remembered port
        assert server.port == port
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT k, v FROM kv").fetchall() == [("a", "1")]
    finally:
        server.stop(mode="fast")


def test_local_stack_fills_in_only_what_is_missing(tmp_path: Path, pg_url: str) -> None:
    # given settings with a database but no broker
    given = Settings(_env_file=None).model_copy(  # type: ignore[call-arg]
        update={"data_dir": tmp_path, "database_url": SecretStr(pg_url)}
    )
    # when the local stack starts
    with LocalStack(given) as filled:
        # then it starts a broker and leaves the database alone
        assert filled.kafka_bootstrap.startswith("127.0.0.1:")
        assert filled.database_url.get_secret_value() == pg_url
        assert not (tmp_path / "pg").exists()
        AdminClient({"bootstrap.servers": filled.kafka_bootstrap}).list_topics(timeout=10)


def test_an_owned_topic_with_more_partitions_than_configured_is_refused(broker: EmbeddedBroker) -> None:
    # given a topic made with 3 partitions (say, under an earlier default)
    topic = f"infra-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, {topic: 3})
    # then owning only 2 of them is refused, naming the counts; owning all 3 (or more) is not
    with pytest.raises(UnownedPartitions, match=rf"{topic} has 3 partitions, more than the 2 configured"):
        ensure_topics(broker.bootstrap, {topic: 2})
    ensure_topics(broker.bootstrap, {topic: 3})
    # and a topic nobody owns (the dead letters) may have any count
    ensure_topics(broker.bootstrap, {topic: 1}, owned=False)
