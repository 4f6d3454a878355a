-- Uploads continue on any instance. Expand-only (columns with defaults): a strata of the previous
-- version keeps running against this catalog during a rolling upgrade.

-- Raised by every stream that starts writing an upload; each progress write compares and sets it,
-- so a writer that another stream has taken over from cannot record anything more.
ALTER TABLE strata_uploads ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
-- The instance whose stream writes the upload now ('' when none), and until when (the database's
-- time) it holds it; renewed with each recorded progress.
ALTER TABLE strata_uploads ADD COLUMN writer TEXT NOT NULL DEFAULT '';
ALTER TABLE strata_uploads ADD COLUMN lease_until TIMESTAMP;
-- What the object store needs to continue the unfinished object (JSON: segments or multipart
-- upload parts), and the running hashes over the committed bytes.
ALTER TABLE strata_uploads ADD COLUMN store_state TEXT NOT NULL DEFAULT '';
ALTER TABLE strata_uploads ADD COLUMN hash_state BLOB;
