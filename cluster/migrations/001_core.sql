-- Core state: checkpoints with epochs, events, results, dedup window, audit log, dead letters.
-- Offsets live here, not in Kafka: the checkpoint row is advanced in the same transaction as the effects.

CREATE TABLE partition_checkpoints (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    epoch        bigint      NOT NULL DEFAULT 0,
    owner_id     text,
    next_offset  bigint      NOT NULL DEFAULT 0,
    log_id       text,                      -- the broker cluster id these offsets refer to
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

CREATE TABLE events (
    id              text        PRIMARY KEY,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    status          text        NOT NULL,   -- processed | dead_lettered
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    entity_key      text,                   -- user_id or device_id
    correlation_id  text,
    causation_id    text,
    parent_ids      text[]      NOT NULL DEFAULT '{}',
    idempotency_key text,
    trace_context   text,
    payload         jsonb       NOT NULL,
    received_at     timestamptz NOT NULL,   -- accepted by the API (or written to the broker, for raw ingest)
    consumed_at     timestamptz NOT NULL,   -- read by the partition owner
    committed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts        integer     NOT NULL DEFAULT 1
);
CREATE INDEX events_correlation_idx ON events (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX events_committed_at_idx ON events (committed_at);

CREATE TABLE results (
    event_id    text        PRIMARY KEY REFERENCES events (id),
    type        text        NOT NULL,
    result      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE dedup_keys (
    event_id    text        PRIMARY KEY,
    first_seen  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX dedup_keys_expires_idx ON dedup_keys (expires_at);

CREATE TABLE audit_log (
    id          bigserial   PRIMARY KEY,
    event_id    text        NOT NULL,
    from_status text,
    to_status   text        NOT NULL,
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_event_idx ON audit_log (event_id, id);

CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    event_id    text,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    error_kind  text        NOT NULL,   -- invalid | poison | exhausted
    reason      text        NOT NULL,
    attempts    integer     NOT NULL,
    payload     bytea,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (topic, partition, "offset")
);

-- Read models, updated in the commit transaction: a duplicate or lost effect shows in them.
CREATE TABLE user_totals (
    user_id        text           PRIMARY KEY,
    base_currency  text           NOT NULL,
    total_amount   numeric(24, 6) NOT NULL DEFAULT 0,
    tx_count       bigint         NOT NULL DEFAULT 0,
    flagged_count  bigint         NOT NULL DEFAULT 0,
    updated_at     timestamptz    NOT NULL DEFAULT now()
);

CREATE TABLE device_stats (
    device_id          text             NOT NULL,
    si_unit            text             NOT NULL,
    reading_count      bigint           NOT NULL DEFAULT 0,
    reading_sum        double precision NOT NULL DEFAULT 0,
    reading_min        double precision,
    reading_max        double precision,
    out_of_range_count bigint           NOT NULL DEFAULT 0,
    updated_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, si_unit)
);

CREATE TABLE user_action_counts (
    user_id  text   NOT NULL,
    action   text   NOT NULL,
    count    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, action)
);
