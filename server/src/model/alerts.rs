//! Alerts states and kinds (see the parent module for why they live here).

use super::text_enum;

text_enum! {
    /// What a rule watches. Units: bytes, bytes/day, days, seconds, percent, rows, count.
    pub enum Metric ("alert metric") {
        /// Database size, bytes.
        DatabaseSize = "database_size",
        /// Each table's size (heap + indexes + TOAST), bytes; label `table`.
        TableSize = "table_size",
        /// Database growth over the last week, bytes per day.
        DailyGrowth = "daily_growth",
        /// Days until the database reaches the rule's capacity (or its disk's size) at the current
        /// growth; fires when *below* the thresholds.
        DaysUntilFull = "days_until_full",
        /// Round trip of `SELECT 1` per node, seconds; label `node`.
        ProbeLatency = "probe_latency",
        /// Used space of the file systems strata writes to locally (SQLite file, `file://` objects),
        /// percent; label `path`.
        DiskUsedPercent = "disk_used_percent",
        /// Connections in use per pool, percent of its size; label `node`.
        PoolUtilizationPercent = "pool_utilization_percent",
        /// Replication lag per replica, seconds; label `node`.
        ReplicaLag = "replica_lag",
        /// Rows in the default partition of the rule's table.
        DefaultPartitionRows = "default_partition_rows",
        /// 1 for each job whose latest run failed or timed out; label `job`.
        FailedJob = "failed_job",
    }
}

text_enum! {
    /// Which side of a threshold fires.
    pub enum Comparison ("alert comparison") {
        /// value ≥ threshold.
        Above = "above",
        /// value ≤ threshold.
        Below = "below",
    }
}

text_enum! {
    /// How bad (ordered: `Warning < Critical`).
    #[derive(PartialOrd, Ord)]
    pub enum Severity ("alert severity") {
        /// Look at it soon.
        Warning = "warning",
        /// Look at it now.
        Critical = "critical",
    }
}

text_enum! {
    /// Where an alert is in its life: pending → firing → acknowledged → resolved.
    pub enum AlertState ("alert state") {
        /// The condition holds, not for long enough yet (no notification).
        Pending = "pending",
        /// Firing.
        Firing = "firing",
        /// Firing, seen by someone.
        Acknowledged = "acknowledged",
        /// Over.
        Resolved = "resolved",
    }
}

text_enum! {
    /// What happened to an alert (an entry of its timeline).
    pub enum EventKind ("alert event kind") {
        /// It fired.
        Firing = "firing",
        /// Its severity rose (it fires again).
        Escalated = "escalated",
        /// Its severity fell.
        Deescalated = "deescalated",
        /// Someone acknowledged it.
        Acknowledged = "acknowledged",
        /// It was resolved (by hand or because the condition cleared).
        Resolved = "resolved",
        /// A notification about it was delivered.
        Notified = "notified",
        /// A notification about it failed for good.
        NotifyFailed = "notify_failed",
    }
}

text_enum! {
    /// How a notification is sent.
    pub enum Channel ("notification channel") {
        /// An HTTP POST of the JSON payload.
        Webhook = "webhook",
        /// An email over SMTP.
        Email = "email",
    }
}

text_enum! {
    /// Where a notification is in the outbox.
    pub enum NotificationState ("notification state") {
        /// Not delivered yet (maybe retrying).
        Pending = "pending",
        /// Delivered.
        Sent = "sent",
        /// Given up on after the configured attempts.
        Failed = "failed",
    }
}
