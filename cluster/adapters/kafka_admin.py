"""Creates eventpipe's topics and reads the broker's identity; nothing else talks to the admin API.

Topic creation is idempotent: an existing topic is left as it is.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)


def ensure_topics(bootstrap: str, partitions: dict[str, int], replication_factor: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=15).topics)
    wanted = [NewTopic(t, n, replication_factor) for t, n in partitions.items() if t not in existing]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, operation_timeout=15).items():
        try:
            future.result()
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def cluster_id(bootstrap: str) -> str:
    """The broker cluster's id: offsets are only meaningful within one cluster's log."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return str(admin.list_topics(timeout=15).cluster_id)
