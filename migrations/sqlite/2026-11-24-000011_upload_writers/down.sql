ALTER TABLE strata_uploads DROP COLUMN hash_state;
ALTER TABLE strata_uploads DROP COLUMN store_state;
ALTER TABLE strata_uploads DROP COLUMN lease_until;
ALTER TABLE strata_uploads DROP COLUMN writer;
ALTER TABLE strata_uploads DROP COLUMN generation;
