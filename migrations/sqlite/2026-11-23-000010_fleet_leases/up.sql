-- Fleet coordination. Expand-only (new nullable columns, a new table): a strata of the previous
-- version keeps running against this catalog during a rolling upgrade.

-- A blob migration is run by one instance at a time, which holds a lease on it (compared with the
-- database's time); another instance takes it over when the lease lapses.
ALTER TABLE strata_blob_migrations ADD COLUMN runner TEXT;
ALTER TABLE strata_blob_migrations ADD COLUMN lease_until TIMESTAMP;
-- One running migration per column: StartBlobMigration through several instances at once starts
-- one; the others are told it exists.
CREATE UNIQUE INDEX blob_migrations_one_running ON strata_blob_migrations (schema_name, table_name, blob_column)
    WHERE state = 'running';

-- The instance holding a notification's send lease: only it may record the attempt.
ALTER TABLE strata_alert_notifications ADD COLUMN lease_owner TEXT;

-- The catalog's compatibility level: a strata whose own level is lower refuses to start against
-- it. Only a contracting migration (a drop, a rename, a new meaning) raises it.
CREATE TABLE strata_catalog_info (
    id BIGINT PRIMARY KEY,
    compat_level BIGINT NOT NULL
);
INSERT INTO strata_catalog_info (id, compat_level) VALUES (1, 1);
