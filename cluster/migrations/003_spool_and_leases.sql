-- Events the API acknowledged while the broker was unreachable, in arrival order; the spool drainer publishes
-- them (oldest first, so per-key order holds) and deletes each row only after the broker acknowledged it.
CREATE TABLE ingest_spool (
    seq        bigserial   PRIMARY KEY,
    event_id   text        NOT NULL,
    topic      text        NOT NULL,
    key        bytea,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '[]'::jsonb,  -- [[name, base64 value], ...]
    spooled_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Cluster-wide leases. The row 'leader' ('leader:<topic_prefix>' for a pipeline with another topic prefix) says
-- which Ray cluster's leader may assign partitions: a leader claims a partition only in a transaction that finds its
-- own unexpired lease (row share-locked), so two clusters on one database never both own a partition. Expiry is
-- judged by the database clock. Each acquisition by a different holder bumps the epoch; a released lease expires
-- instead of being deleted, so epochs only grow.
CREATE TABLE cluster_leases (
    name        text        PRIMARY KEY,
    holder      text        NOT NULL,
    epoch       bigint      NOT NULL,
    expires_at  timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    renewed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
