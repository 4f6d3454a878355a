//! The archive catalog's rows as this layer hands them out, and the one place each is converted
//! from its columns as stored: text states and kinds become the enums of
//! [`crate::model::archive`] (an unknown one is [`Error::UnknownValue`]), JSON columns become values.
//! `catalog` loads the stored columns and writes rows back, spelling the enums with
//! `as_str`. Nothing above `db/` sees the stored text.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::{
    db::{Error, Result},
    model::archive::{FilterSpec, Mode, RunKind, RunState, SegmentState},
};

/// A policy as stored.
#[derive(Debug, Clone)]
pub struct PolicyRow {
    /// Id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Schema of the table.
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Time column.
    pub time_column: String,
    /// Key column names (stored as a JSON array).
    pub key_columns: Vec<String>,
    /// Rows older than this many seconds are due.
    pub archive_after_secs: i64,
    /// Segments older than this many seconds are deleted.
    pub delete_after_secs: Option<i64>,
    /// Filters (stored as a JSON array).
    pub filters: Vec<FilterSpec>,
    /// Rows per batch.
    pub batch_size: i64,
    /// Archive or purge.
    pub mode: Mode,
    /// Run holding the lease.
    pub lease_owner: Option<String>,
    /// Lease expiry.
    pub lease_until: Option<NaiveDateTime>,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Updated.
    pub updated_at: NaiveDateTime,
}

/// `archive_policies` as stored.
#[derive(Queryable)]
pub(super) struct PolicyColumns {
    id: String,
    name: String,
    schema_name: String,
    table_name: String,
    time_column: String,
    key_columns: String,
    archive_after_secs: i64,
    delete_after_secs: Option<i64>,
    filters: String,
    batch_size: i64,
    mode: String,
    lease_owner: Option<String>,
    lease_until: Option<NaiveDateTime>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

impl TryFrom<PolicyColumns> for PolicyRow {
    type Error = Error;

    fn try_from(r: PolicyColumns) -> Result<Self> {
        let corrupt = |what: &str, e: serde_json::Error| {
            Error::Unsupported(format!("policy {}: stored {what} unreadable: {e}", r.id))
        };
        Ok(PolicyRow {
            key_columns: serde_json::from_str(&r.key_columns).map_err(|e| corrupt("key columns", e))?,
            filters: serde_json::from_str(&r.filters).map_err(|e| corrupt("filters", e))?,
            mode: r.mode.parse()?,
            id: r.id,
            name: r.name,
            schema_name: r.schema_name,
            table_name: r.table_name,
            time_column: r.time_column,
            archive_after_secs: r.archive_after_secs,
            delete_after_secs: r.delete_after_secs,
            batch_size: r.batch_size,
            lease_owner: r.lease_owner,
            lease_until: r.lease_until,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// A run as stored.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// Id (UUIDv7: sorts by start time).
    pub id: String,
    /// Policy.
    pub policy_id: String,
    /// Kind.
    pub kind: RunKind,
    /// State.
    pub state: RunState,
    /// Rows older than this were due.
    pub cutoff: Option<NaiveDateTime>,
    /// Rows handled.
    pub rows_done: i64,
    /// Rows skipped (restore).
    pub rows_skipped: i64,
    /// Segments handled.
    pub segments_done: i64,
    /// Raw bytes.
    pub raw_bytes: i64,
    /// Compressed bytes.
    pub compressed_bytes: i64,
    /// Longest batch transaction in milliseconds.
    pub longest_txn_ms: i64,
    /// Cancel asked for.
    pub cancel_requested: bool,
    /// Failure.
    pub error: Option<String>,
    /// Started.
    pub started_at: NaiveDateTime,
    /// Last progress.
    pub updated_at: NaiveDateTime,
    /// Ended.
    pub finished_at: Option<NaiveDateTime>,
}

/// `archive_runs` as stored.
#[derive(Queryable)]
pub(super) struct RunColumns {
    id: String,
    policy_id: String,
    kind: String,
    state: String,
    cutoff: Option<NaiveDateTime>,
    rows_done: i64,
    rows_skipped: i64,
    segments_done: i64,
    raw_bytes: i64,
    compressed_bytes: i64,
    longest_txn_ms: i64,
    cancel_requested: bool,
    error: Option<String>,
    started_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    finished_at: Option<NaiveDateTime>,
}

impl TryFrom<RunColumns> for RunRow {
    type Error = Error;

    fn try_from(r: RunColumns) -> Result<Self> {
        Ok(RunRow {
            kind: r.kind.parse()?,
            state: r.state.parse()?,
            id: r.id,
            policy_id: r.policy_id,
            cutoff: r.cutoff,
            rows_done: r.rows_done,
            rows_skipped: r.rows_skipped,
            segments_done: r.segments_done,
            raw_bytes: r.raw_bytes,
            compressed_bytes: r.compressed_bytes,
            longest_txn_ms: r.longest_txn_ms,
            cancel_requested: r.cancel_requested,
            error: r.error,
            started_at: r.started_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        })
    }
}

/// A segment manifest as stored.
#[derive(Debug, Clone)]
pub struct SegmentRow {
    /// Id.
    pub id: String,
    /// Policy.
    pub policy_id: String,
    /// Run that wrote it.
    pub run_id: String,
    /// Object key.
    pub object_key: String,
    /// State.
    pub state: SegmentState,
    /// Rows.
    pub row_count: i64,
    /// JSON Lines bytes.
    pub raw_bytes: i64,
    /// Object bytes.
    pub compressed_bytes: i64,
    /// SHA-256 of the object (hex).
    pub sha256: String,
    /// First key (JSON array).
    pub first_key: String,
    /// Last key (JSON array).
    pub last_key: String,
    /// Oldest row time.
    pub min_time: Option<NaiveDateTime>,
    /// Newest row time.
    pub max_time: Option<NaiveDateTime>,
    /// The table's columns when it was written, as "name type" (stored as a JSON array; an
    /// unreadable one reads as none, as ListSegments always showed it).
    pub columns: Vec<String>,
    /// Created (committed).
    pub created_at: NaiveDateTime,
    /// Restored.
    pub restored_at: Option<NaiveDateTime>,
}

/// `archive_segments` as stored.
#[derive(Queryable)]
pub(super) struct SegmentColumns {
    id: String,
    policy_id: String,
    run_id: String,
    object_key: String,
    state: String,
    row_count: i64,
    raw_bytes: i64,
    compressed_bytes: i64,
    sha256: String,
    first_key: String,
    last_key: String,
    min_time: Option<NaiveDateTime>,
    max_time: Option<NaiveDateTime>,
    column_list: String,
    created_at: NaiveDateTime,
    restored_at: Option<NaiveDateTime>,
}

impl TryFrom<SegmentColumns> for SegmentRow {
    type Error = Error;

    fn try_from(r: SegmentColumns) -> Result<Self> {
        Ok(SegmentRow {
            state: r.state.parse()?,
            columns: serde_json::from_str(&r.column_list).unwrap_or_default(),
            id: r.id,
            policy_id: r.policy_id,
            run_id: r.run_id,
            object_key: r.object_key,
            row_count: r.row_count,
            raw_bytes: r.raw_bytes,
            compressed_bytes: r.compressed_bytes,
            sha256: r.sha256,
            first_key: r.first_key,
            last_key: r.last_key,
            min_time: r.min_time,
            max_time: r.max_time,
            created_at: r.created_at,
            restored_at: r.restored_at,
        })
    }
}

/// Converts loaded rows, failing on the first one this version cannot read.
pub(super) fn convert<S, T: TryFrom<S, Error = Error>>(rows: Vec<S>) -> Result<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}
