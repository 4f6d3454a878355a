DROP TABLE strata_catalog_info;
DROP INDEX blob_migrations_one_running;
ALTER TABLE strata_alert_notifications DROP COLUMN lease_owner;
ALTER TABLE strata_blob_migrations DROP COLUMN lease_until;
ALTER TABLE strata_blob_migrations DROP COLUMN runner;
