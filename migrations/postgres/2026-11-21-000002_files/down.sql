DROP TABLE strata.uploads;
DROP TABLE strata.files;
DROP TABLE strata.blobs;
