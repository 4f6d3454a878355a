//! Files states and kinds (see the parent module for why they live here).

use super::text_enum;

text_enum! {
    /// Where an upload stands.
    pub enum UploadState ("upload state") {
        /// Accepting bytes.
        Open = "open",
        /// Done: its file exists.
        Complete = "complete",
        /// Failed or expired.
        Failed = "failed",
    }
}

text_enum! {
    /// Where a blob migration stands.
    pub enum BlobMigrationState ("blob migration state") {
        /// Moving rows (or waiting to be resumed at start-up).
        Running = "running",
        /// Every pending row moved.
        Done = "done",
        /// Stopped at a row that could not be moved.
        Failed = "failed",
    }
}

text_enum! {
    /// How an application table stores the blobs a migration moves.
    pub enum BlobEncoding ("blob encoding") {
        /// Base64 text.
        Base64 = "base64",
        /// Raw bytes (PostgreSQL bytea, SQLite BLOB).
        Bytea = "bytea",
    }
}
