DROP TABLE strata.blob_migrations;
