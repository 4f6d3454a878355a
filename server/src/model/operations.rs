//! Kinds and states of long operations (see the parent module for why they live here).

use super::text_enum;

text_enum! {
    /// What a long operation does.
    pub enum OperationKind ("operation kind") {
        /// VACUUM / ANALYZE of tables (RunMaintenance).
        Maintenance = "maintenance",
        /// Object store against catalog (ReconcileObjects).
        Reconcile = "reconcile",
        /// Default-partition rows into partitions of their own (RescueDefaultRows).
        Rescue = "rescue",
    }
}

text_enum! {
    /// Where a long operation stands.
    pub enum OperationState ("operation state") {
        /// Working (or waiting for another instance to take it over).
        Running = "running",
        /// Done.
        Succeeded = "succeeded",
        /// Stopped by an error.
        Failed = "failed",
        /// Stopped on request.
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// What one recorded result of an operation is.
    pub enum ItemKind ("operation item kind") {
        /// A table maintained (detail: its figures).
        Table = "table",
        /// An object no catalog row references.
        Orphan = "orphan",
        /// An orphan deleted.
        Deleted = "deleted",
        /// Content (BLAKE3) whose object is missing.
        LostContent = "lost_content",
        /// A file whose content is missing.
        LostFile = "lost_file",
        /// A partition created for rescued rows (detail: rows moved).
        Partition = "partition",
        /// A run of the archive service started (emergency maintenance).
        StartedRun = "started_run",
        /// A policy not started (emergency maintenance), "name: reason".
        SkippedPolicy = "skipped_policy",
    }
}
