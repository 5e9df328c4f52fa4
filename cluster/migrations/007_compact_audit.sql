-- Compact audit (ADR 0012): one `audit_trail` row per event per commit instead of three `audit_log` rows. The row holds
-- every transition of that commit (accepted, consumed, then processed or dead_lettered; or a lone duplicate_ignored)
-- with its timestamps and details; the VIEW `audit_log` expands it into the old transition rows, so every query of
-- the old table reads the same answers. Rows written before this migration stay in `audit_log_legacy` and are part of
-- the view. Retention deletes from both tables. Safe to run again: each step checks what is already there.

DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('audit_log')) = 'r' THEN
        ALTER TABLE audit_log RENAME TO audit_log_legacy;
        ALTER INDEX IF EXISTS audit_log_pkey RENAME TO audit_log_legacy_pkey;
        ALTER INDEX IF EXISTS audit_log_event_idx RENAME TO audit_log_legacy_event_idx;
        ALTER INDEX IF EXISTS audit_log_at_idx RENAME TO audit_log_legacy_at_idx;
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS audit_trail (
    -- No index: it only orders one event's transitions in the view (audit_log.id = 4 * id + step).
    id           bigint      GENERATED ALWAYS AS IDENTITY (CACHE 100),
    event_id     text        NOT NULL,
    outcome      text        NOT NULL,   -- processed | dead_lettered | duplicate_ignored
    actor        text        NOT NULL,   -- the partition owner that committed it
    epoch        bigint      NOT NULL,   -- its epoch
    topic        text        NOT NULL,   -- where this copy of the event was read
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    accepted_at  timestamptz,            -- received by the API (or written to the broker); NULL for duplicate_ignored
    consumed_at  timestamptz NOT NULL,   -- read by the owner
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),  -- processed, dead-lettered or ignored
    attempts     integer,                -- NULL for duplicate_ignored
    dead_kind    text,                   -- dead_lettered only: invalid | poison | exhausted
    dead_reason  text
);
CREATE INDEX IF NOT EXISTS audit_trail_event_idx ON audit_trail (event_id);
CREATE INDEX IF NOT EXISTS audit_trail_committed_at_idx ON audit_trail (committed_at);  -- retention, oldest first

-- New view ids start above every legacy id, so audit_log.id stays unique and ordered across both tables.
DO $$
DECLARE
    start bigint := (SELECT coalesce(max(id), 0) / 4 + 1 FROM audit_log_legacy);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_trail) THEN
        EXECUTE format('ALTER TABLE audit_trail ALTER COLUMN id RESTART WITH %s', start);
    END IF;
END $$;

-- The old transition rows (id, event_id, from_status, to_status, at, actor, detail), with the details they had:
-- consumed and duplicate_ignored {topic, partition, offset}; processed {epoch, attempts}; dead_lettered {kind, reason,
-- attempts}. A filter on event_id reaches audit_trail_event_idx and audit_log_legacy_event_idx.
CREATE OR REPLACE VIEW audit_log AS
SELECT id, event_id, from_status, to_status, at, actor, detail FROM audit_log_legacy
UNION ALL
SELECT 4 * t.id + s.step, t.event_id, s.from_status, s.to_status, s.at, t.actor, s.detail
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
       jsonb_build_object('topic', t.topic, 'partition', t.partition, 'offset', t."offset")
  FROM audit_trail t
 WHERE t.outcome = 'duplicate_ignored';

COMMENT ON VIEW audit_log IS
    'every audit transition, one row each: audit_log_legacy as written, audit_trail expanded (ADR 0012); read-only';

-- results.event_id no longer references events (id). The commit statement inserts a result only for an event row it
-- inserted in the same statement, and retention deletes an event's results with it (and results before events), so
-- the constraint never caught anything; it cost a query and a row lock (with its WAL record) on the event per result.
ALTER TABLE results DROP CONSTRAINT IF EXISTS results_event_id_fkey;
