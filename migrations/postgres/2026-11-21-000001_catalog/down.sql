DROP TABLE strata.snapshot_tables;
DROP TABLE strata.snapshots;
