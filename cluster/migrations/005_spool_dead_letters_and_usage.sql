-- The spool never jams (issue 8): a spooled record that can never be published leaves ingest_spool for dead_letters
-- (with its bytes and the reason) in the transaction that deletes it; and the spool's size is known without a scan.

-- Dead letters from the spool have no log position: they never reached the broker. `source` says where a dead letter
-- came from ('log': a partition owner, at topic/partition/offset; 'spool': the spool drainer, at spool_seq). The
-- UNIQUE (topic, partition, "offset") constraint keeps deduplicating the log's; NULL positions never collide.
ALTER TABLE dead_letters
    ALTER COLUMN partition DROP NOT NULL,
    ALTER COLUMN "offset" DROP NOT NULL,
    ADD COLUMN source         text NOT NULL DEFAULT 'log',
    ADD COLUMN spool_seq      bigint,
    ADD COLUMN record_key     bytea,   -- the broker record's key and headers ([[name, base64 value], ...]) besides its
    ADD COLUMN record_headers jsonb,   -- value in `payload`, so a spool dead letter can be published again as it was
    ADD CONSTRAINT dead_letters_source_position CHECK (
        (source = 'log' AND partition IS NOT NULL AND "offset" IS NOT NULL)
        OR (source = 'spool' AND spool_seq IS NOT NULL)
    );
CREATE UNIQUE INDEX dead_letters_spool_seq_key ON dead_letters (spool_seq) WHERE spool_seq IS NOT NULL;
-- GET /events/{id} of an event that never reached the log finds its dead letter here.
CREATE INDEX dead_letters_spool_event_idx ON dead_letters (event_id) WHERE source = 'spool';

-- Transient failures of a row while the broker took the rows around it (the drainer's bound: spool_max_attempts).
ALTER TABLE ingest_spool
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text;

-- Rows and bytes (value + key) in ingest_spool, kept exact by statement-level triggers: read by summing 16 rows, never
-- by scanning the spool. Writers add to the slot of their backend pid, so concurrent appenders rarely wait on a lock.
CREATE TABLE ingest_spool_usage (
    slot  integer PRIMARY KEY,
    rows  bigint  NOT NULL DEFAULT 0,
    bytes bigint  NOT NULL DEFAULT 0
);
INSERT INTO ingest_spool_usage (slot) SELECT generate_series(0, 15);
UPDATE ingest_spool_usage u
   SET rows = s.n, bytes = s.b
  FROM (SELECT count(*) AS n, coalesce(sum(octet_length(value) + coalesce(octet_length(key), 0)), 0) AS b
          FROM ingest_spool) s
 WHERE u.slot = 0;

CREATE FUNCTION ingest_spool_usage_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ingest_spool_usage u
       SET rows = u.rows + s.n, bytes = u.bytes + s.b
      FROM (SELECT count(*) AS n, coalesce(sum(octet_length(value) + coalesce(octet_length(key), 0)), 0) AS b
              FROM added) s
     WHERE u.slot = pg_backend_pid() % 16 AND s.n > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION ingest_spool_usage_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ingest_spool_usage u
       SET rows = u.rows - s.n, bytes = u.bytes - s.b
      FROM (SELECT count(*) AS n, coalesce(sum(octet_length(value) + coalesce(octet_length(key), 0)), 0) AS b
              FROM removed) s
     WHERE u.slot = pg_backend_pid() % 16 AND s.n > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION ingest_spool_usage_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ingest_spool_usage SET rows = 0, bytes = 0;
    RETURN NULL;
END $$;

CREATE TRIGGER ingest_spool_usage_insert AFTER INSERT ON ingest_spool
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION ingest_spool_usage_added();
CREATE TRIGGER ingest_spool_usage_delete AFTER DELETE ON ingest_spool
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION ingest_spool_usage_removed();
CREATE TRIGGER ingest_spool_usage_truncate AFTER TRUNCATE ON ingest_spool
    FOR EACH STATEMENT EXECUTE FUNCTION ingest_spool_usage_truncated();
