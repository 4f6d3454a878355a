DROP TABLE strata.catalog_info;
DROP INDEX strata.blob_migrations_one_running;
ALTER TABLE strata.alert_notifications DROP COLUMN lease_owner;
ALTER TABLE strata.blob_migrations DROP COLUMN lease_until;
ALTER TABLE strata.blob_migrations DROP COLUMN runner;
