ALTER TABLE strata.snapshot_tables DROP COLUMN dead_rows;
