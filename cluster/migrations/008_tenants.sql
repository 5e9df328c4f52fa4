-- Tenants (ADR 0014): every API key belongs to one; events, ids, reads and read models are scoped by it. Rows written
-- before tenants existed belong to 'default', the tenant of the development key.
CREATE TABLE IF NOT EXISTS tenants (
    name        text        PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),  -- pipelines/access.py TENANT_PATTERN
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenants (name) VALUES ('default') ON CONFLICT (name) DO NOTHING;
