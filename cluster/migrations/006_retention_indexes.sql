-- Indexes the retention purge (cluster/adapters/retention.py) walks, oldest first, one bounded chunk at a time.
-- events already has events_committed_at_idx (001). Each index costs one b-tree insert per row written.
-- On a large existing table, build them beforehand with CREATE INDEX CONCURRENTLY under the same names: this file
-- then finds them and does nothing (docs/runbook.md, "Retention").
CREATE INDEX IF NOT EXISTS results_created_at_idx ON results (created_at);
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON audit_log (at);
CREATE INDEX IF NOT EXISTS dead_letters_created_at_idx ON dead_letters (created_at);
