ALTER TABLE strata.blobs DROP COLUMN lost_at;
