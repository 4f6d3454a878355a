DROP TABLE strata_snapshot_tables;
DROP TABLE strata_snapshots;
