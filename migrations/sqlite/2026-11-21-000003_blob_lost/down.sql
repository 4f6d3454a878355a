ALTER TABLE strata_blobs DROP COLUMN lost_at;
