-- Offsets a partition owner skipped because they stayed absent from the log past the gap grace period.
-- Written in the commit transaction that moved the checkpoint over them: a hole is never skipped silently.
CREATE TABLE offset_gaps (
    id          bigserial   PRIMARY KEY,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    from_offset bigint      NOT NULL,
    to_offset   bigint      NOT NULL,   -- exclusive
    epoch       bigint      NOT NULL,
    owner_id    text        NOT NULL,
    skipped_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
