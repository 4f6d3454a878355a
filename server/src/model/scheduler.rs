//! Scheduler states and kinds (see the parent module for why they live here).

use super::text_enum;

text_enum! {
    /// What a job does.
    pub enum JobKind ("job kind") {
        /// Store a storage-metrics snapshot (growth history).
        MetricsSample = "metrics_sample",
        /// Expire abandoned uploads.
        UploadExpiry = "upload_expiry",
        /// Run an archival policy (target: policy name or id).
        Archive = "archive",
        /// Apply a policy's retention (target: policy).
        Retention = "retention",
        /// VACUUM / ANALYZE (target: comma-separated tables, empty for all).
        Maintenance = "maintenance",
        /// Create partitions ahead (target: partitioned table).
        PartitionPremake = "partition_premake",
        /// Back the database up.
        Backup = "backup",
        /// Move blobs of a table into the object store (target: table).
        BlobMigration = "blob_migration",
        /// Evaluate the alert rules.
        AlertEvaluation = "alert_evaluation",
    }
}

text_enum! {
    /// Where a job run is in its life.
    pub enum JobRunState ("job run state") {
        /// Running (on the instance holding its lease).
        Running = "running",
        /// Ended well.
        Succeeded = "succeeded",
        /// Ended with an error.
        Failed = "failed",
        /// Stopped by shutdown or by losing its lease.
        Cancelled = "cancelled",
        /// Ran past the job's timeout.
        TimedOut = "timed_out",
        /// Occurrences that passed while nothing could run them (one row per gap).
        Missed = "missed",
    }
}

text_enum! {
    /// What started a job run.
    pub enum Trigger ("job run trigger") {
        /// The job's schedule.
        Schedule = "schedule",
        /// RunJobNow.
        Manual = "manual",
    }
}
