"""Creates eventpipe's topics and reads the broker's identity; nothing else talks to the admin API.

Topic creation is idempotent: an existing topic is left as it is, unless it has more partitions than are owned.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)


class UnownedPartitions(RuntimeError):
    """An owned topic has more partitions than the settings give owners: records there would never be read."""


def ensure_topics(
    bootstrap: str, partitions: dict[str, int], replication_factor: int = 1, *, owned: bool = True
) -> None:
    """Create the topics that do not exist. Topics that are `owned` (read by one owner per configured partition) must
    not have more partitions than configured: the API's producer spreads records over all of a topic's partitions,
    so lowering `partitions` (or its default: 4, then 2, now 1) over an existing topic would leave some unread."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = {name: len(meta.partitions) for name, meta in admin.list_topics(timeout=15).topics.items()}
    if owned:
        over = {t: existing[t] for t, n in partitions.items() if existing.get(t, 0) > n}
        if over:
            listed = ", ".join(f"{t} has {count}" for t, count in sorted(over.items()))
            raise UnownedPartitions(
                f"{listed} partitions, more than the {max(partitions.values())} configured "
                f"(EVENTPIPE_PARTITIONS): records in the others would never be read; set EVENTPIPE_PARTITIONS to the "
                "topics' partition count"
            )
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
