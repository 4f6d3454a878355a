DROP TABLE strata_archive_segments;
DROP TABLE strata_archive_runs;
DROP TABLE strata_archive_policies;
