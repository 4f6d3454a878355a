-- Content-addressed blobs: one object per distinct content (BLAKE3), reference-counted by files.
CREATE TABLE strata.blobs (
    blake3 TEXT PRIMARY KEY,
    object_key TEXT NOT NULL UNIQUE,
    size_bytes BIGINT NOT NULL,
    ref_count BIGINT NOT NULL CHECK (ref_count >= 0),
    created_at TIMESTAMP NOT NULL
);

-- Files as clients see them; several may share one blob.
CREATE TABLE strata.files (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    owner TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    blake3 TEXT NOT NULL REFERENCES strata.blobs (blake3),
    sha256 TEXT,
    metadata TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX files_owner_id_idx ON strata.files (owner, id);
CREATE INDEX files_blake3_idx ON strata.files (blake3);

-- Uploads in progress (resumable) and their outcome.
CREATE TABLE strata.uploads (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    owner TEXT NOT NULL,
    declared_size BIGINT,
    declared_sha256 TEXT,
    metadata TEXT NOT NULL,
    object_key TEXT NOT NULL,
    writer_token TEXT NOT NULL,
    committed_offset BIGINT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    file_id TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX uploads_state_expires_idx ON strata.uploads (state, expires_at);
