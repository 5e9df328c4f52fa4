"""Typed configuration for every eventpipe process, read once from the environment and `.env`.

It must never be read at import time deep in the code: build `Settings()` at a process edge and pass it down.
Secrets never travel with it between processes: a pickled Settings has none, and `in_process()` refills them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.api_keys import DEFAULT_REQUESTS_PER_MINUTE

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
    # Partitions per owned topic, one owner process each. 1 on one 2-core box: every process more costs CPU and memory
    # the box does not have (10,000/s offered, 30 s: 1 processed 10,002/s at 178 µs of CPU per event with p99 247 ms
    # from ingest to commit, 2 9,755/s at 200 µs with 1.1 s; idle 18 % of a core against 24 %). A cluster sets it by
    # its nodes and cores (kuberay/configmap.yaml: 4); `make bench-scaling` prints 1/2/4/8 (README "Benchmark").
    partitions: int = Field(1, ge=1, le=256)
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
    # 2 s: each push costs the pusher a registry snapshot and the hub a merge (measured: idle hub 2.9 -> 2.3 % of a
    # core with 4 owners); Prometheus scrapes every 15 s by default, the status page refreshes every 2 s.
    metrics_push_interval_s: float = Field(2.0, gt=0)
    # API keys (issue 11): every route but /healthz, /readyz, /docs and /openapi.json needs one. Each replica holds
    # the active keys in memory and reloads them every auth_refresh_s (a revoke reaches every replica within it, and
    # last-used times are written on the same timer); no database query per request. auth_enabled false: every
    # request acts for the default tenant with all scopes, and the API and `eventpipe run` log a WARNING at start.
    auth_enabled: bool = True
    auth_refresh_s: float = Field(2.0, gt=0)
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
    # Records per owner batch at most. A batch is one commit; under a backlog the commit's fixed costs (the call to a
    # writer, the transaction, the fsync) are shared by this many events: 1000 processed 8,120/s where 500 did 7,677
    # with 10,000/s offered on 2 cores (issue 9). At low load batches stay small: an owner takes what has arrived.
    consume_batch_max: int = Field(1000, ge=1)
    # How long the broker may hold a fetch: low for latency (Tansu answers at this bound, not on data arrival),
    # higher for less idle load with many partitions.
    consumer_fetch_wait_ms: int = Field(50, ge=1, le=500)
    # How long a poll waits for the first record (the rest are taken as they are). It returns as soon as one arrives,
    # so it adds no latency; it bounds how soon an idle owner notices stop(), and how often an idle one wakes up.
    consume_batch_timeout_s: float = Field(0.5, gt=0)
    # A hole in a partition's offsets is waited on this long before it is skipped (and recorded in offset_gaps).
    offset_gap_grace_s: float = Field(5.0, ge=0)
    checkpoint_writers: int = Field(2, ge=1)
    writer_pool_size: int = Field(4, ge=1)

    # A stuck partition is loud (issue 8): an owner whose commits have failed for this long without one success reports
    # state `stalled` (unhealthy in worker_health); the status page marks a partition red past the same age.
    owner_stalled_after_s: float = Field(30.0, gt=0)

    # Retry policy for transient handler failures (3 attempts, exponential backoff with jitter).
    retry_attempts: int = 3
    retry_base_s: float = 0.05
    retry_max_s: float = 1.0

    # Dedup window for event ids.
    dedup_ttl_hours: int = 24

    # -- Retention (docs/runbook.md "Retention") ------------------------------------------------------------------
    # The leader deletes rows older than these windows every purge_interval_s (dedup keys past their TTL too), in
    # chunks of retention_chunk_rows, at most retention_max_chunks chunks per table and round; `eventpipe purge` does
    # it on demand. 0 keeps rows forever. An event's results are deleted with it. The events table is the dedup
    # guard once a dedup key has expired, so events are kept at least dedup_ttl_hours.
    events_retention_days: int = Field(30, ge=0)  # by committed_at
    results_retention_days: int = Field(30, ge=0)  # by created_at
    audit_retention_days: int = Field(30, ge=0)  # audit_trail by `committed_at` (audit_log_legacy by `at`)
    dead_letters_retention_days: int = Field(90, ge=0)  # by created_at
    purge_interval_s: float = Field(600.0, gt=0)
    retention_chunk_rows: int = Field(5000, ge=1)
    retention_max_chunks: int = Field(100, ge=1)

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
    trace_sample_ratio: float = Field(0.01, ge=0.0, le=1.0)
    trace_file_max_mb: int = Field(64, ge=1)  # per process; one rotated file is kept besides
    # JSON log lines on stderr, and in <data_dir>/logs/<service>-<pid>.jsonl unless log_to_files is off. Per-event
    # lines (accepted, processed) are INFO on the "eventpipe.events" logger, off unless log_events; dead letters are
    # WARNING and always logged.
    log_level: str = "INFO"
    log_events: bool = False
    log_to_files: bool = True
    log_file_max_mb: int = Field(64, ge=1)

    # Event-time window (issue 8): the API accepts event timestamps from event_time_min to event_time_max_ahead_s
    # after its clock, else 422. Partition owners re-validate what they read with event_time_owner_grace_s more
    # room ahead, so clock skew between an API replica and an owner never dead-letters what the API accepted.
    event_time_min: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    event_time_max_ahead_s: float = Field(86_400.0, ge=0, le=366 * 86_400)
    event_time_owner_grace_s: float = Field(3_600.0, ge=0, le=366 * 86_400)

    @field_validator("event_time_min")
    @classmethod
    def _aware_event_time_min(cls, value: datetime) -> datetime:
        """A naive time is read as UTC, like event timestamps; the window must leave every time a UTC date."""
        value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if value < datetime(1, 1, 2, tzinfo=UTC):
            raise ValueError("event_time_min must be on or after 0001-01-02T00:00:00Z")
        return value

    @model_validator(mode="after")
    def _events_outlive_dedup_keys(self) -> Self:
        if 0 < self.events_retention_days * 24 < self.dedup_ttl_hours:
            raise ValueError(
                f"events_retention_days={self.events_retention_days} is shorter than dedup_ttl_hours="
                f"{self.dedup_ttl_hours}: an event re-sent after its row was purged would be processed again"
            )
        return self

    # -- Limits at the HTTP edge and on broker records (issue 8) --------------------------------------------------
    # The producers' message.max.bytes (librdkafka refuses larger records locally; keep it at or below the broker's
    # and topics' max.message.bytes). max_event_bytes, the bound on each event's serialised record (value, key and
    # headers), must stay RECORD_HEADROOM_BYTES below it: checked when Settings are built.
    kafka_message_max_bytes: int = Field(1_000_000, ge=4096)
    # Bound on a request's whole handling at the API (body read, validation, delivery): 408 while the body is still
    # being read (nothing taken), 504 with the events' ids once delivery started (outcome unknown: resend, same ids).
    request_timeout_s: float = Field(30.0, gt=0)
    # -- read API and edge memory (fixedge) --
    # A read route whose database does not answer within this bound is a 503 with Retry-After (not a 30 s wait).
    read_timeout_s: float = Field(5.0, gt=0)
    # Bytes of request bodies one API replica holds at once (declared Content-Length, or chunks as they arrive), on
    # top of the per-body cap max_body_bytes: beyond it a request is answered 429 with Retry-After before it is read.
    max_inflight_body_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    # The spool's byte cap (values and keys, kept exact by triggers; see migration 005), besides spool_max_rows.
    spool_max_bytes: int = Field(1 << 30, ge=1024)
    # A spooled record that keeps failing for an unexplained reason (neither transient nor permanent, see
    # cluster/spool_triage.py) while the broker acknowledges the records around it is moved to the dead letters after
    # this many attempts; a permanent refusal (too large) moves it at once; transient failures are never counted.
    spool_max_attempts: int = Field(10, ge=1)
    # Leaving spool mode under load (ADR 0009, addendum): once the drainer is seen emptying a spool of at most
    # spool_drain_batch rows, an API replica holds new events back this long at most for it to be empty, then sends
    # them to the broker; 0 turns the handover off (spool mode then ends only when a look finds the spool empty).
    spool_handover_max_wait_s: float = Field(1.5, ge=0)

    # -- Rate limit (issue 11; ADR and pipelines/rate_limit.py) ---------------------------------------------------
    # The requests per minute of a key created without --requests-per-minute (the development key's too), and of
    # every request when auth is off. Enforced cluster-wide: any 60 s window admits at most this x 1.05 for one key,
    # over every API replica together.
    rate_limit_requests_per_minute: int = Field(DEFAULT_REQUESTS_PER_MINUTE, ge=1)
    # The same for events (a batch of N events costs N); None: only requests are limited.
    rate_limit_events_per_minute: int | None = Field(None, ge=1)
    # Lifetime of a block of tokens the limiter actor leases to a replica. Longer: fewer calls when a key is idle,
    # but a dead replica's unspent block (at most half its share of the 5 % burst) is lost to the key for longer.
    rate_limit_lease_ttl_s: float = Field(5.0, ge=1.0)
    # How long a request waits for the limiter when its replica holds no tokens for the key; past it, or when the
    # actor is down or restarting, the replica decides alone (its share of the limit) for one lease lifetime.
    rate_limit_fetch_timeout_s: float = Field(0.25, gt=0)

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

    # -- Secrets: built inside each process, never shipped through Ray ------------------------------------------------
    # Ray stores actor arguments and Serve init args in GCS, in plain form. Pickling a Settings therefore drops its
    # secrets (every `.remote(settings)` and `.bind(settings)`), and each actor and replica constructor begins with
    # `settings = settings.in_process()`, which reads them from its own environment.

    def shareable(self) -> Settings:
        """A copy without secrets: what may cross a process boundary. Pickling produces exactly this."""
        return self.model_copy(update=dict.fromkeys(SECRET_FIELDS, SecretStr("")))

    def in_process(self) -> Settings:
        """These settings with the secrets filled from this process's environment (or `.env`) where they are empty.

        Raises MissingSecret when the environment has none: a worker must never fall back to libpq's defaults.
        """
        missing = [name for name in SECRET_FIELDS if not getattr(self, name).get_secret_value()]
        if not missing:
            return self
        found = _ProcessSecrets()
        update = {name: getattr(found, name) for name in missing if getattr(found, name).get_secret_value()}
        absent = [SECRET_FIELDS[name] for name in missing if name not in update]
        if absent:
            raise MissingSecret(
                f"{', '.join(absent)} is not set in the environment of process {os.getpid()}: eventpipe actors and "
                "Serve replicas read secrets from their own environment, never from Ray. Start the Ray cluster with "
                "it set (`eventpipe run` does; on KubeRay the pods get it from the Secret eventpipe-secrets)."
            )
        return self.model_copy(update=update)

    def __getstate__(self) -> dict[Any, Any]:
        state: dict[Any, Any] = super().__getstate__()
        state["__dict__"] = {**state["__dict__"], **dict.fromkeys(SECRET_FIELDS, SecretStr(""))}
        return state


# Secret field -> the environment variable a process reads it from.
SECRET_FIELDS = {"database_url": "DATABASE_URL"}


class MissingSecret(RuntimeError):
    """A secret this process needs is not in its environment."""


class _ProcessSecrets(BaseSettings):
    """The secrets alone, read from this process's environment and `.env` like Settings reads them."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: SecretStr = Field(SecretStr(""), validation_alias="DATABASE_URL")


@contextmanager
def secrets_in_environment(settings: Settings) -> Iterator[None]:
    """The settings' secrets in this process's environment while the block starts child processes, then restored.

    A local Ray head started inside the block (GCS, raylet, and every worker the raylet spawns later) inherits them,
    which is how `in_process()` finds them in actors and Serve replicas.
    """
    saved = {env: os.environ.get(env) for env in SECRET_FIELDS.values()}
    for name, env in SECRET_FIELDS.items():
        value = getattr(settings, name).get_secret_value()
        if value:
            os.environ[env] = value
    try:
        yield
    finally:
        for env, value in saved.items():
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value
