ALTER TABLE strata_snapshot_tables DROP COLUMN dead_rows;
