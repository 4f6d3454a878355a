-- Dead rows per table in each snapshot, exported by /metrics (NULL on SQLite, which has none to
-- report, and in older snapshots). Expand-only: a nullable column.
ALTER TABLE strata_snapshot_tables ADD COLUMN dead_rows BIGINT;
