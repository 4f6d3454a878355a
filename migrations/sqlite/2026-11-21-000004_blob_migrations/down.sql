DROP TABLE strata_blob_migrations;
