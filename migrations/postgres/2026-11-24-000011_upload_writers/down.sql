ALTER TABLE strata.uploads DROP COLUMN hash_state;
ALTER TABLE strata.uploads DROP COLUMN store_state;
ALTER TABLE strata.uploads DROP COLUMN lease_until;
ALTER TABLE strata.uploads DROP COLUMN writer;
ALTER TABLE strata.uploads DROP COLUMN generation;
