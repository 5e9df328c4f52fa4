"""Typed configuration for every eventpipe process, read once from the environment and `.env`.

It must never be read at import time deep in the code: build `Settings()` at a process edge and pass it down.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EVENT_TYPES = ("transaction", "sensor", "user_action")
# Room the broker's message.max.bytes must leave above max_event_bytes: the traceparent header and the record's framing
# are added after an event's record is measured against max_event_bytes.
RECORD_HEADROOM_BYTES = 1024


class Settings(BaseSettings):
    """All knobs; environment variables are `EVENTPIPE_<NAME>` (plus plain `DATABASE_URL`)."""

    model_config = SettingsConfigDict(
        env_prefix="EVENTPIPE_", env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    # Where embedded components keep their state (PostgreSQL data, broker logs, Ray logs).
    data_dir: Path = Path(".data")

    # Kafka. Empty means "start the embedded Tansu broker" (cluster/local.py fills it in).
    kafka_bootstrap: str = ""
    topic_prefix: str = "events"
    partitions: int = Field(4, ge=1, le=256)
    replication_factor: int = 1

    # PostgreSQL. Empty means "start embedded PostgreSQL" (cluster/local.py fills it in).
    database_url: SecretStr = Field(SecretStr(""), validation_alias="DATABASE_URL")

    # HTTP ingress.
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    dashboard_port: int = 8265
    # The ONE Prometheus scrape target of the whole cluster (the metrics hub, on http_host): /metrics, and the live
    # status page at /status. 0 picks a free port (the hub reports it). Processes push their metrics every interval.
    metrics_port: int = Field(9464, ge=0, le=65535)
    metrics_push_interval_s: float = Field(1.0, gt=0)
    max_batch_events: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1_048_576 * 4, ge=1024)
    max_event_bytes: int = Field(262_144, ge=256)
    ingest_replicas: int = 1
    # Serve autoscaling of the ingress deployment: replicas between min and max, aiming at this many ongoing
    # requests per replica. max 0 disables autoscaling (ingest_replicas fixed).
    ingest_min_replicas: int = Field(1, ge=1)
    ingest_max_replicas: int = Field(0, ge=0)
    ingest_target_ongoing_requests: int = Field(64, ge=1)
    producer_linger_ms: int = 1
    # How long the API waits for the broker's acknowledgement before it treats the publish as failed (and spools).
    producer_message_timeout_ms: int = Field(5000, ge=100)
    # Admission control: events being validated or published at once per API replica; beyond it the API answers
    # 429 with Retry-After instead of queueing without bound.
    max_inflight_events: int = Field(20_000, ge=1)

    # Durable spool (PostgreSQL table ingest_spool) for events acknowledged while the broker is unreachable.
    spool_enabled: bool = True
    spool_max_rows: int = Field(2_000_000, ge=1)  # full spool and no broker: 503 with Retry-After
    spool_drain_batch: int = Field(1000, ge=1)

    # Circuit breakers (broker producer, PostgreSQL, enrichment service): open after this many consecutive
    # failures, let one probe through after the timeout, close on its success.
    breaker_failure_threshold: int = Field(5, ge=1)
    breaker_reset_timeout_s: float = Field(60.0, ge=0)

    # Enrichment service for transactions (merchant and FX reference data) at this base URL; empty: not used.
    enrichment_url: str = ""
    enrichment_timeout_s: float = Field(0.25, gt=0)
    enrichment_cache_ttl_s: float = Field(300.0, ge=0)

    # Leader lease in PostgreSQL: which Ray cluster may assign partitions (split brain, rolling upgrades).
    cluster_name: str = ""  # stable holder id of this Ray cluster; empty: derived from the Ray cluster at start
    leader_lease_ttl_s: float = Field(10.0, gt=0)

    # Partition owners and the checkpoint writers.
    consume_batch_max: int = Field(500, ge=1)
    # How long the broker may hold a fetch: low for latency (Tansu answers at this bound, not on data arrival),
    # higher for less idle load with many partitions.
    consumer_fetch_wait_ms: int = Field(50, ge=1, le=500)
    consume_batch_timeout_s: float = Field(0.1, gt=0)  # wait for the first record; the rest are taken as they are
    # A hole in a partition's offsets is waited on this long before it is skipped (and recorded in offset_gaps).
    offset_gap_grace_s: float = Field(5.0, ge=0)
    checkpoint_writers: int = Field(2, ge=1)
    writer_pool_size: int = Field(4, ge=1)

    # Retry policy for transient handler failures (3 attempts, exponential backoff with jitter).
    retry_attempts: int = 3
    retry_base_s: float = 0.05
    retry_max_s: float = 1.0

    # Dedup window for event ids.
    dedup_ttl_hours: int = 24

    # Handler reference data.
    base_currency: str = "USD"
    risk_amount_threshold: float = 10_000.0

    ray_namespace: str = "eventpipe"
    ray_address: str = ""

    # Tracing (ADR 0011): OTLP/HTTP to this collector when set (base URL, /v1/traces is added); otherwise JSON lines
    # per process under <data_dir>/traces/, read by `eventpipe trace <event-id>`. Parent-based sampling: a trace is
    # started (API request, raw ingest record) with this probability and followed wherever it goes.
    tracing_enabled: bool = True
    otlp_endpoint: str = Field(
        "", validation_alias=AliasChoices("EVENTPIPE_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "otlp_endpoint")
    )
    trace_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    trace_file_max_mb: int = Field(64, ge=1)  # per process; one rotated file is kept besides
    # JSON log lines on stderr, and in <data_dir>/logs/<service>-<pid>.jsonl unless log_to_files is off. Per-event
    # lines (accepted, processed) are INFO on the "eventpipe.events" logger, off unless log_events; dead letters are
    # WARNING and always logged.
    log_level: str = "INFO"
    log_events: bool = False
    log_to_files: bool = True
    log_file_max_mb: int = Field(64, ge=1)

    # -- Limits at the HTTP edge and on broker records (issue 8) --------------------------------------------------
    # The producers' message.max.bytes (librdkafka refuses larger records locally; keep it at or below the broker's
    # and topics' max.message.bytes). max_event_bytes, the bound on each event's serialised record (value, key and
    # headers), must stay RECORD_HEADROOM_BYTES below it: checked when Settings are built.
    kafka_message_max_bytes: int = Field(1_000_000, ge=4096)
    # Bound on a request's whole handling at the API (body read, validation, delivery): 408 while the body is still
    # being read (nothing taken), 504 with the events' ids once delivery started (outcome unknown: resend, same ids).
    request_timeout_s: float = Field(30.0, gt=0)
    # The spool's byte cap (values and keys, kept exact by triggers; see migration 005), besides spool_max_rows.
    spool_max_bytes: int = Field(1 << 30, ge=1024)
    # A spooled record that keeps failing transiently while the broker acknowledges the records around it is moved to
    # the dead letters after this many attempts (a permanent refusal, e.g. too large, moves it at once).
    spool_max_attempts: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _events_fit_broker_records(self) -> Settings:
        room = self.kafka_message_max_bytes - RECORD_HEADROOM_BYTES
        if self.max_event_bytes > room:
            raise ValueError(
                f"max_event_bytes ({self.max_event_bytes}) must be at most kafka_message_max_bytes "
                f"({self.kafka_message_max_bytes}) - {RECORD_HEADROOM_BYTES} = {room}: an event the API accepts must "
                "fit a broker record with its headers"
            )
        return self

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        """Ray workers do not share the CLI's working directory: every process gets the same absolute path."""
        return value.expanduser().resolve()

    def topic(self, event_type: str) -> str:
        return f"{self.topic_prefix}.{event_type}"

    @property
    def ingest_topic(self) -> str:
        return f"{self.topic_prefix}.ingest"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.dlq"

    def owned_topics(self) -> list[str]:
        """Topics whose partitions get a partition owner."""
        return [self.topic(t) for t in EVENT_TYPES] + [self.ingest_topic]
