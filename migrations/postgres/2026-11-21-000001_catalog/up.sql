CREATE SCHEMA IF NOT EXISTS strata;

-- One row per metrics sample (the sampler or RecordSnapshot).
CREATE TABLE strata.snapshots (
    id BIGSERIAL PRIMARY KEY,
    taken_at TIMESTAMP NOT NULL,
    database_size_bytes BIGINT NOT NULL
);
CREATE INDEX snapshots_taken_at_idx ON strata.snapshots (taken_at);

-- Per-table figures of a snapshot.
CREATE TABLE strata.snapshot_tables (
    snapshot_id BIGINT NOT NULL REFERENCES strata.snapshots (id) ON DELETE CASCADE,
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    total_size_bytes BIGINT NOT NULL,
    estimated_rows BIGINT NOT NULL,
    PRIMARY KEY (snapshot_id, schema_name, table_name)
);
