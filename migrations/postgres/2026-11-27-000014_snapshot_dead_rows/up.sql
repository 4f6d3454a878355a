-- Dead rows per table in each snapshot (PostgreSQL's n_dead_tup), exported by /metrics.
-- Expand-only: a nullable column (NULL: not known, as on SQLite and in older snapshots).
ALTER TABLE strata.snapshot_tables ADD COLUMN dead_rows BIGINT;
