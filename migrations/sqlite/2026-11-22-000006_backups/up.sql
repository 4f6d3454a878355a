-- Database backups in the object store.
CREATE TABLE strata_backups (
    id TEXT PRIMARY KEY,
    -- pg_dump (custom format) or sqlite.
    format TEXT NOT NULL,
    -- running, succeeded, failed.
    state TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    verification TEXT NOT NULL,
    error TEXT,
    started_at TIMESTAMP NOT NULL,
    -- Heartbeat of a running backup: one whose heartbeat is stale was interrupted.
    updated_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP
);
-- At most one running backup, whichever instance runs it.
CREATE UNIQUE INDEX strata_backups_one_running ON strata_backups (state) WHERE state = 'running';
CREATE INDEX strata_backups_started ON strata_backups (started_at);
