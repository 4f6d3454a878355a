-- Partitions detached by ArchivePartitions whose rows are being archived (PostgreSQL; the table
-- exists on SQLite only so both catalogs have the same shape). Recorded in the transaction that
-- detaches, removed in the one that drops.
CREATE TABLE strata_detached_partitions (
    policy_id TEXT NOT NULL,
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    detached_at TIMESTAMP NOT NULL,
    PRIMARY KEY (policy_id, schema_name, table_name)
);
