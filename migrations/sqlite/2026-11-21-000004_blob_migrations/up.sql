-- Blob migrations: progress of moving an application table's blobs into files.
CREATE TABLE strata_blob_migrations (
    id TEXT PRIMARY KEY,
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    key_column TEXT NOT NULL,
    blob_column TEXT NOT NULL,
    reference_column TEXT NOT NULL,
    encoding TEXT NOT NULL,
    batch_size BIGINT NOT NULL,
    owner TEXT NOT NULL,
    content_type TEXT NOT NULL,
    state TEXT NOT NULL,
    rows_done BIGINT NOT NULL,
    bytes_done BIGINT NOT NULL,
    error TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
