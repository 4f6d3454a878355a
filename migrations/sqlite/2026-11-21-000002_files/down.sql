DROP TABLE strata_uploads;
DROP TABLE strata_files;
DROP TABLE strata_blobs;
