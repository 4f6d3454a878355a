//! Archival persistence: the catalog (policies with their run lease, runs, segment manifests) and
//! the SQL run against the application's table.
//!
//! Application SQL is generated once per run from identifiers resolved against the live schema
//! ([`resolve()`]) and quoted; every value a client supplied (filter values, cutoff, cursor keys)
//! travels in one JSON bind parameter, never in SQL text.
//!
//! - `catalog`: policies and their run lease, runs, segment manifests (Diesel DSL), with the
//!   rows it hands out in `rows`, converted from the stored columns in one place.
//! - `resolve`: a policy checked against its table, and the SQL of a run.
//! - `batch`: the batch transactions (archive, purge, restore).
//! - `encode`: the PostgreSQL row → JSON encoder the archive batches use.
//! - `restore`, `decode`: restore at bulk-load speed (COPY on PostgreSQL, a prepared statement per
//!   row on SQLite), from documents decoded in Rust.
//! - `postgres`, `sqlite`: each backend's [`Dialect`].
//!
//! Per-backend code has one shape: a body that reads the same on both backends is written once and
//! expanded per backend by [`db_run!`](crate::db_run) (which also gives it the connection's concrete
//! type); what differs between the backends is a method of [`Dialect`], called from such a body.

mod batch;
mod catalog;
mod decode;
mod encode;
mod postgres;
mod resolve;
mod restore;
mod rows;
mod sqlite;

pub use batch::{Batch, BatchError, BatchOutcome, DueRows, Phases, Sealed, archive_batch, purge_batch};
pub use catalog::{
    PendingSegment, Progress, TimeOrder, acquire_lease, add_progress, committed_segments_page, delete_policy,
    delete_segment, discard_pending, finish_run, get_policy, get_run, insert_pending_segment, insert_policy,
    insert_run, list_policies, list_runs, orphaned_runs, release_lease, renew_lease, request_cancel, segments,
    segments_by_id, segments_page, set_segment_state, update_policy,
};
pub use resolve::{ColumnInfo, PlanRow, TableSpec, TableSql, TimeKind, last_due_key, params, plan, resolve};
pub use restore::{RestorePlan, RestoreWriter, Restored, SegmentRows, restore_plan, restore_writers};
pub use rows::{PolicyRow, RunRow, SegmentRow};

use resolve::{Resolved, Unfit};

use super::Result;

/// What differs between PostgreSQL and SQLite in archival, implemented by each backend's
/// connection type: how the application table's columns are found and which types fit, how SQL
/// spells what a policy selects, and how a batch's due rows are read. Validation, the filter
/// condition and the batch protocol are written once on top of it.
///
/// Called with the connection's concrete type (from a [`db_run!`](crate::db_run) body), so every
/// call is dispatched statically; nothing here runs per row except inside `load_due`.
trait Dialect {
    /// The application table's columns, in order. [`Unfit::Invalid`] when the table does not exist
    /// or cannot be archived on this backend.
    async fn columns(&mut self, spec: &resolve::TableSpec<'_>, table: &str) -> Result<Vec<ColumnInfo>, Unfit>;

    /// Whether the table is partitioned (its rows live in partitions, each with its own row
    /// locations).
    async fn partitioned(&mut self, spec: &resolve::TableSpec<'_>) -> Result<bool, Unfit>;

    /// How a time column of this type holds time; None when it cannot be a time column.
    fn time_kind(time: &ColumnInfo) -> Option<TimeKind>;

    /// Whether a column of this type can identify rows (be part of the key).
    fn can_be_key(column: &ColumnInfo) -> bool;

    /// Whether `value` is acceptable to a column of type `ty`; the database's reason when not.
    async fn check_value(&mut self, ty: &str, value: &str) -> std::result::Result<(), String>;

    /// The condition that the time column `tc` (of `time`) is before the parameter's `cutoff`.
    fn before_cutoff(tc: &str, time: &ColumnInfo, kind: TimeKind) -> String;

    /// Filter `i`'s one value from the parameter, as a scalar of the column's type `ty`.
    fn filter_value(i: usize, ty: &str) -> String;

    /// Filter `i`'s values from the parameter, as a one-column subquery of type `ty`.
    fn filter_values(i: usize, ty: &str) -> String;

    /// The statements of a run over the resolved table.
    fn table_sql(r: Resolved<'_>) -> TableSql;

    /// Reads a batch's due rows with `select` (one of `sql`'s statements) into `out`, as the
    /// segment will hold them.
    async fn load_due(&mut self, sql: &TableSql, select: &str, params: &str, out: &mut DueRows) -> Result<()>;

    /// Deletes exactly the rows `load_due` read into `rows` (locked since); how many it deleted.
    async fn delete_due(&mut self, sql: &TableSql, rows: &DueRows) -> Result<usize>;
}
/// A string literal in SQL.
pub(super) fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `count(*)` as a statement returns it.
#[derive(diesel::QueryableByName)]
pub(super) struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) n: i64,
}
