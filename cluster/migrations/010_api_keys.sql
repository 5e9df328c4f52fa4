-- API keys (ADR 0014): a key belongs to a tenant; only its public id and the SHA-256 of the whole key are stored
-- (pipelines/api_keys.py), never the key. Revoked keys are kept (revoked_at) so `keys list` shows their history; a
-- revoked key's name stays taken.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id              text        PRIMARY KEY,
    -- pipelines/api_keys.py KEY_NAME_PATTERN
    name                text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    tenant              text        NOT NULL REFERENCES tenants (name),
    key_hash            bytea       NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    scopes              text[]      NOT NULL CHECK (cardinality(scopes) > 0
                                                    AND scopes <@ ARRAY['ingest', 'read', 'admin']::text[]),
    requests_per_minute integer     NOT NULL DEFAULT 1000 CHECK (requests_per_minute > 0),
    events_per_minute   integer     NULL CHECK (events_per_minute > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_used_at        timestamptz NULL,
    revoked_at          timestamptz NULL
);
