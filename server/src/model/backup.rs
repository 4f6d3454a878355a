//! Backup states and kinds (see the parent module for why they live here).

use super::text_enum;

text_enum! {
    /// Where a backup stands.
    pub enum BackupState ("backup state") {
        /// Being written or checked.
        Running = "running",
        /// Written and checked.
        Succeeded = "succeeded",
        /// Failed or interrupted.
        Failed = "failed",
    }
}

text_enum! {
    /// What a backup holds.
    pub enum BackupFormat ("backup format") {
        /// A PostgreSQL custom-format archive written by `pg_dump -Fc`.
        PgDump = "pg_dump",
        /// A consistent copy of the SQLite database file.
        Sqlite = "sqlite",
    }
}
