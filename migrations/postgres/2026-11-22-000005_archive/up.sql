-- Archival: policies, runs and the manifest of archived segments.
CREATE TABLE strata.archive_policies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    time_column TEXT NOT NULL,
    -- JSON array of column names.
    key_columns TEXT NOT NULL,
    archive_after_secs BIGINT NOT NULL,
    delete_after_secs BIGINT,
    -- JSON array of {column, operator, values}.
    filters TEXT NOT NULL,
    batch_size BIGINT NOT NULL,
    mode TEXT NOT NULL,
    -- The run holding the policy (one run per policy at a time) and until when.
    lease_owner TEXT,
    lease_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE TABLE strata.archive_runs (
    id TEXT PRIMARY KEY,
    policy_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    cutoff TIMESTAMP,
    rows_done BIGINT NOT NULL,
    rows_skipped BIGINT NOT NULL,
    segments_done BIGINT NOT NULL,
    raw_bytes BIGINT NOT NULL,
    compressed_bytes BIGINT NOT NULL,
    longest_txn_ms BIGINT NOT NULL,
    cancel_requested BOOLEAN NOT NULL,
    error TEXT,
    started_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP
);
CREATE INDEX archive_runs_policy ON strata.archive_runs (policy_id, started_at);
CREATE TABLE strata.archive_segments (
    id TEXT PRIMARY KEY,
    policy_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    object_key TEXT NOT NULL,
    -- pending (being written), committed, restored, deleting (retention), discarding (a failed batch's).
    state TEXT NOT NULL,
    row_count BIGINT NOT NULL,
    raw_bytes BIGINT NOT NULL,
    compressed_bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    first_key TEXT NOT NULL,
    last_key TEXT NOT NULL,
    min_time TIMESTAMP,
    max_time TIMESTAMP,
    -- JSON array of "name type".
    column_list TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    restored_at TIMESTAMP
);
CREATE INDEX archive_segments_policy ON strata.archive_segments (policy_id, min_time);
