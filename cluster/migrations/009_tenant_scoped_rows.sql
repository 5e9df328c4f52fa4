-- Tenant-scoped rows (ADR 0014): every event, result, dedup key, audit row, dead letter and read-model row belongs to
-- a tenant, and an event's identity is (tenant, id): two tenants may both send id "order-1" and both are processed.
-- Rows written before tenants existed belong to 'default'.
--
-- Cost on a database that already holds rows: ADD COLUMN with a constant default rewrites nothing (PostgreSQL 11+
-- stores the default in the catalogue); each new primary key builds its index in one pass over its table, under an
-- ACCESS EXCLUSIVE lock held until this migration commits (stop the pipeline, or expect writers to wait meanwhile).
--
-- No foreign key to tenants(name): it would cost every inserted row a lookup and a FOR KEY SHARE lock on its tenant's
-- row (a multixact per concurrent commit, all on one hot row). The tenant is checked where it enters instead: the
-- API takes it from an authenticated key, a raw ingest record's header is checked against the tenants table by its
-- partition owner (unknown: dead letter), and Envelope.decode refuses a name that does not match TENANT_PATTERN.
--
-- Safe to run again: columns and indexes are added only when absent; a primary key already on (tenant, ...) is
-- rebuilt as it was.

ALTER TABLE events ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'default';
ALTER TABLE events DROP CONSTRAINT events_pkey, ADD CONSTRAINT events_pkey PRIMARY KEY (tenant, id);

ALTER TABLE results ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'default';
ALTER TABLE results DROP CONSTRAINT results_pkey, ADD CONSTRAINT results_pkey PRIMARY KEY (tenant, event_id);

ALTER TABLE dedup_keys ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'default';
ALTER TABLE dedup_keys DROP CONSTRAINT dedup_keys_pkey, ADD CONSTRAINT dedup_keys_pkey PRIMARY KEY (tenant, event_id);

-- audit_trail has no key (ADR 0012); reads find an event's rows through audit_trail_event_idx (event_id) and filter
-- the tenant from those few rows.
ALTER TABLE audit_trail ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'default';

-- A dead letter's tenant is NULL when its record named none we know (raw bytes, an unknown `tenant` header): no
-- tenant may read it. Legacy rows are 'default'; new rows always say theirs (no default, so none is forgotten).
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS tenant text DEFAULT 'default';
ALTER TABLE dead_letters ALTER COLUMN tenant DROP DEFAULT;
CREATE INDEX IF NOT EXISTS dead_letters_tenant_idx ON dead_letters (tenant, id);  -- GET /dead-letters pages one tenant's by id

ALTER TABLE user_totals ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'default';
ALTER TABLE user_totals DROP CONSTRAINT user_totals_pkey, ADD CONSTRAINT user_totals_pkey PRIMARY KEY (tenant, user_id);

ALTER TABLE device_stats ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'default';
ALTER TABLE device_stats
    DROP CONSTRAINT device_stats_pkey, ADD CONSTRAINT device_stats_pkey PRIMARY KEY (tenant, device_id, si_unit);

ALTER TABLE user_action_counts ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'default';
ALTER TABLE user_action_counts
    DROP CONSTRAINT user_action_counts_pkey, ADD CONSTRAINT user_action_counts_pkey PRIMARY KEY (tenant, user_id, action);

-- The audit_log view of 007 with the tenant as its last column (CREATE OR REPLACE may only append columns): legacy
-- rows, written before tenants existed, are 'default'.
CREATE OR REPLACE VIEW audit_log AS
SELECT id, event_id, from_status, to_status, at, actor, detail, 'default'::text AS tenant FROM audit_log_legacy
UNION ALL
SELECT 4 * t.id + s.step, t.event_id, s.from_status, s.to_status, s.at, t.actor, s.detail, t.tenant
  FROM audit_trail t
 CROSS JOIN LATERAL (VALUES
        (1, NULL::text, 'accepted'::text, t.accepted_at, '{}'::jsonb),
        (2, 'accepted', 'consumed', t.consumed_at,
         jsonb_build_object('topic', t.topic, 'partition', t.partition, 'offset', t."offset")),
        (3, 'consumed', t.outcome, t.committed_at,
         CASE WHEN t.outcome = 'processed' THEN jsonb_build_object('epoch', t.epoch, 'attempts', t.attempts)
              ELSE jsonb_build_object('kind', t.dead_kind, 'reason', t.dead_reason, 'attempts', t.attempts) END)
    ) AS s(step, from_status, to_status, at, detail)
 WHERE t.outcome <> 'duplicate_ignored'
UNION ALL
SELECT 4 * t.id + 3, t.event_id, NULL, 'duplicate_ignored', t.committed_at, t.actor,
       jsonb_build_object('topic', t.topic, 'partition', t.partition, 'offset', t."offset"), t.tenant
  FROM audit_trail t
 WHERE t.outcome = 'duplicate_ignored';
