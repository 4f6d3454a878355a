DROP TABLE strata.archive_segments;
DROP TABLE strata.archive_runs;
DROP TABLE strata.archive_policies;
