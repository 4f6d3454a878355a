-- One row per metrics sample (the sampler or RecordSnapshot).
CREATE TABLE strata_snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    taken_at TIMESTAMP NOT NULL,
    database_size_bytes BIGINT NOT NULL
);
CREATE INDEX strata_snapshots_taken_at_idx ON strata_snapshots (taken_at);

-- Per-table figures of a snapshot.
CREATE TABLE strata_snapshot_tables (
    snapshot_id BIGINT NOT NULL REFERENCES strata_snapshots (id) ON DELETE CASCADE,
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    total_size_bytes BIGINT NOT NULL,
    estimated_rows BIGINT NOT NULL,
    PRIMARY KEY (snapshot_id, schema_name, table_name)
);
