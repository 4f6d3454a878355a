//! Archival, purge, restore and retention of application rows under policies.
//!
//! A run holds its policy's lease (one run per policy at a time, across instances) and works in
//! batches. An archive batch is one transaction ([`db::archive::archive_batch`]): the due rows are
//! locked, written as a zstd-compressed JSON Lines segment, the segment is read back and its
//! SHA-256 checked, then exactly those rows are deleted and the segment marked committed. Before the
//! transaction a `pending` manifest row names the segment, so a crash leaves at worst a pending
//! segment whose object the next run deletes: every row is exactly once in the table or in a
//! committed segment.
//!
//! This module holds the domain types, policy management, the queries on runs and segments, and a
//! run's life (lease, start, end). The work of each kind of run is in its own module: `run`
//! (archive and purge batches), `restore` (restore and read), `retention`, `partitions` (whole
//! partitions).

mod partitions;
mod restore;
mod retention;
mod run;

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, NaiveDateTime, Utc};

pub use self::{
    partitions::archive_partitions,
    restore::{read, restore},
    retention::apply_retention,
    run::run,
};
use super::{Context, Error, Result, ident};
use crate::db::{
    self,
    archive::{self as store, PolicyRow, RunRow, SegmentRow, TableSpec},
};
pub use crate::model::archive::{FilterOp, FilterSpec, Mode, RunKind, RunState, SegmentState};

/// Most rows per batch: bounds a transaction's duration and a segment's memory.
pub const MAX_BATCH: i64 = 100_000;
/// Default rows per batch.
pub const DEFAULT_BATCH: i64 = 5_000;

/// A policy's settable fields, validated in shape (names, ranges); existence is checked against
/// the live schema when it is saved.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    /// Unique name.
    pub name: String,
    /// Schema (empty: the backend's default).
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Time column.
    pub time_column: String,
    /// Key columns.
    pub key_columns: Vec<String>,
    /// Age at which rows are due.
    pub archive_after: Duration,
    /// Filters.
    pub filters: Vec<FilterSpec>,
    /// Retention of segments.
    pub delete_after: Option<Duration>,
    /// Rows per batch.
    pub batch_size: i64,
    /// Archive or purge.
    pub mode: Mode,
}

impl PolicySpec {
    /// Checks the shape and fills defaults.
    pub fn validate(mut self) -> Result<Self> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(Error::InvalidArgument(format!(
                "policy name {:?} must be 1-64 characters of letters, digits, '-', '_' and '.'",
                self.name
            )));
        }
        if !self.schema_name.is_empty() {
            ident("schema", &self.schema_name)?;
        }
        ident("table", &self.table_name)?;
        ident("time column", &self.time_column)?;
        if self.key_columns.is_empty() {
            return Err(Error::InvalidArgument("at least one key column is required".into()));
        }
        if self.key_columns.len() > 8 {
            return Err(Error::InvalidArgument("at most 8 key columns".into()));
        }
        let mut seen = HashSet::new();
        for k in &self.key_columns {
            ident("key column", k)?;
            if !seen.insert(k) {
                return Err(Error::InvalidArgument(format!("key column {k:?} is listed twice")));
            }
        }
        if self.filters.len() > 32 {
            return Err(Error::InvalidArgument("at most 32 filters".into()));
        }
        for f in &self.filters {
            ident("filter column", &f.column)?;
            if f.values.len() > 1000 || f.values.iter().any(|v| v.len() > 1024) {
                return Err(Error::InvalidArgument(format!(
                    "filter on {:?}: at most 1000 values of at most 1024 bytes",
                    f.column
                )));
            }
        }
        if self.archive_after.is_zero() {
            return Err(Error::InvalidArgument("archive_after must be greater than zero".into()));
        }
        if self.archive_after.as_secs() > 100 * 365 * 86_400 {
            return Err(Error::InvalidArgument("archive_after must be under 100 years".into()));
        }
        if let Some(d) = self.delete_after
            && (d.is_zero() || d.as_secs() > 1000 * 365 * 86_400)
        {
            return Err(Error::InvalidArgument("delete_after must be greater than zero (or unset)".into()));
        }
        if self.mode == Mode::Purge && self.delete_after.is_some() {
            return Err(Error::InvalidArgument("delete_after applies to archived segments; purge keeps none".into()));
        }
        self.batch_size = match self.batch_size {
            0 => DEFAULT_BATCH,
            n if (1..=MAX_BATCH).contains(&n) => n,
            _ => return Err(Error::InvalidArgument(format!("batch_size must be between 1 and {MAX_BATCH}"))),
        };
        Ok(self)
    }
}

/// A stored policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Id.
    pub id: String,
    /// Settings.
    pub spec: PolicySpec,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

impl From<PolicyRow> for Policy {
    fn from(r: PolicyRow) -> Self {
        Policy {
            spec: PolicySpec {
                name: r.name,
                schema_name: r.schema_name,
                table_name: r.table_name,
                time_column: r.time_column,
                key_columns: r.key_columns,
                archive_after: Duration::from_secs(r.archive_after_secs.max(0) as u64),
                filters: r.filters,
                delete_after: r.delete_after_secs.map(|s| Duration::from_secs(s.max(0) as u64)),
                batch_size: r.batch_size,
                mode: r.mode,
            },
            id: r.id,
            created_at: r.created_at.and_utc(),
            updated_at: r.updated_at.and_utc(),
        }
    }
}

fn to_row(id: &str, spec: &PolicySpec, created_at: NaiveDateTime, now: NaiveDateTime) -> PolicyRow {
    PolicyRow {
        id: id.to_owned(),
        name: spec.name.clone(),
        schema_name: spec.schema_name.clone(),
        table_name: spec.table_name.clone(),
        time_column: spec.time_column.clone(),
        key_columns: spec.key_columns.clone(),
        archive_after_secs: spec.archive_after.as_secs() as i64,
        delete_after_secs: spec.delete_after.map(|d| d.as_secs() as i64),
        filters: spec.filters.clone(),
        batch_size: spec.batch_size,
        mode: spec.mode,
        lease_owner: None,
        lease_until: None,
        created_at,
        updated_at: now,
    }
}

/// A run's state and figures.
#[derive(Debug, Clone)]
pub struct Run {
    /// Id (sorts by start time).
    pub id: String,
    /// Policy.
    pub policy_id: String,
    /// Kind.
    pub kind: RunKind,
    /// State.
    pub state: RunState,
    /// Rows older than this were due (archive, purge), or segments older than this (retention).
    pub cutoff: Option<DateTime<Utc>>,
    /// Rows handled.
    pub rows_done: i64,
    /// Rows skipped (restore: their key was in the table already).
    pub rows_skipped: i64,
    /// Segments handled.
    pub segments_done: i64,
    /// Raw bytes.
    pub raw_bytes: i64,
    /// Compressed bytes.
    pub compressed_bytes: i64,
    /// Longest batch transaction.
    pub longest_transaction: Duration,
    /// Cancel asked for.
    pub cancel_requested: bool,
    /// Why it failed or stopped.
    pub error: Option<String>,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Last progress.
    pub updated_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Run {
    /// raw / compressed.
    pub fn compression_ratio(&self) -> f64 {
        if self.compressed_bytes > 0 { self.raw_bytes as f64 / self.compressed_bytes as f64 } else { 0.0 }
    }
    /// Rows per second of wall time.
    pub fn rows_per_second(&self) -> f64 {
        let end = self.finished_at.unwrap_or(self.updated_at);
        let secs = (end - self.started_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        if secs > 0.0 { self.rows_done as f64 / secs } else { 0.0 }
    }
}

impl From<RunRow> for Run {
    fn from(r: RunRow) -> Self {
        Run {
            id: r.id,
            policy_id: r.policy_id,
            kind: r.kind,
            state: r.state,
            cutoff: r.cutoff.map(|t| t.and_utc()),
            rows_done: r.rows_done,
            rows_skipped: r.rows_skipped,
            segments_done: r.segments_done,
            raw_bytes: r.raw_bytes,
            compressed_bytes: r.compressed_bytes,
            longest_transaction: Duration::from_millis(r.longest_txn_ms.max(0) as u64),
            cancel_requested: r.cancel_requested,
            error: r.error,
            started_at: r.started_at.and_utc(),
            updated_at: r.updated_at.and_utc(),
            finished_at: r.finished_at.map(|t| t.and_utc()),
        }
    }
}

/// A segment: rows archived together in one object.
#[derive(Debug, Clone)]
pub struct Segment {
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
    pub min_time: Option<DateTime<Utc>>,
    /// Newest row time.
    pub max_time: Option<DateTime<Utc>>,
    /// The table's columns when it was written, as "name type".
    pub columns: Vec<String>,
    /// Committed.
    pub created_at: DateTime<Utc>,
    /// Restored.
    pub restored_at: Option<DateTime<Utc>>,
}

impl From<SegmentRow> for Segment {
    fn from(r: SegmentRow) -> Self {
        Segment {
            id: r.id,
            policy_id: r.policy_id,
            run_id: r.run_id,
            object_key: r.object_key,
            state: r.state,
            row_count: r.row_count,
            raw_bytes: r.raw_bytes,
            compressed_bytes: r.compressed_bytes,
            sha256: r.sha256,
            first_key: r.first_key,
            last_key: r.last_key,
            min_time: r.min_time.map(|t| t.and_utc()),
            max_time: r.max_time.map(|t| t.and_utc()),
            columns: r.columns,
            created_at: r.created_at.and_utc(),
            restored_at: r.restored_at.map(|t| t.and_utc()),
        }
    }
}

/// Segments as this layer hands them on.
fn segments_of(rows: Vec<SegmentRow>) -> Vec<Segment> {
    rows.into_iter().map(Segment::from).collect()
}

/// What PlanArchive reports.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rows due.
    pub rows: i64,
    /// Their estimated size.
    pub bytes: i64,
    /// Oldest.
    pub oldest: Option<DateTime<Utc>>,
    /// Newest.
    pub newest: Option<DateTime<Utc>>,
    /// Batches.
    pub batches: i64,
    /// Cutoff.
    pub cutoff: DateTime<Utc>,
}

/// Which segments a restore or read covers.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Segments with rows in `[start, end)`.
    Range {
        /// From.
        start: Option<DateTime<Utc>>,
        /// To.
        end: Option<DateTime<Utc>>,
    },
    /// These ids.
    Ids(Vec<String>),
}

fn lease_until(ctx: &Context) -> NaiveDateTime {
    ctx.now() + ctx.run_lease()
}

fn default_schema(ctx: &Context) -> &'static str {
    match ctx.db.backend() {
        db::BackendKind::Postgres => "public",
        db::BackendKind::Sqlite => "main",
    }
}

async fn resolve(ctx: &Context, spec: &PolicySpec) -> Result<store::TableSql> {
    let mut conn = ctx.db.write().await?;
    store::resolve(
        &mut conn,
        &TableSpec {
            schema_name: &spec.schema_name,
            table_name: &spec.table_name,
            time_column: &spec.time_column,
            key_columns: &spec.key_columns,
            filters: &spec.filters,
        },
    )
    .await?
    .map_err(Error::InvalidArgument)
}

/// Creates a policy after checking it against the live schema.
pub async fn create_policy(ctx: &Context, mut spec: PolicySpec) -> Result<Policy> {
    if spec.schema_name.is_empty() {
        spec.schema_name = default_schema(ctx).into();
    }
    resolve(ctx, &spec).await?;
    let mut conn = ctx.db.write().await?;
    if store::get_policy(&mut conn, &spec.name).await?.is_some() {
        return Err(Error::AlreadyExists(format!("policy {:?}", spec.name)));
    }
    let t = ctx.now();
    let row = to_row(&uuid::Uuid::now_v7().to_string(), &spec, t, t);
    store::insert_policy(&mut conn, &row).await?;
    Ok(row.into())
}

/// The policy with this id or name.
pub async fn get_policy(ctx: &Context, id_or_name: &str) -> Result<Policy> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    Ok(store::get_policy(&mut conn, id_or_name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("policy {id_or_name:?}")))?
        .into())
}

/// Every policy.
pub async fn list_policies(ctx: &Context) -> Result<Vec<Policy>> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    Ok(store::list_policies(&mut conn).await?.into_iter().map(Policy::from).collect())
}

/// Replaces a policy's settings (checked like a new policy).
pub async fn update_policy(ctx: &Context, id: &str, mut spec: PolicySpec) -> Result<Policy> {
    if spec.schema_name.is_empty() {
        spec.schema_name = default_schema(ctx).into();
    }
    let current = get_policy(ctx, id).await?;
    resolve(ctx, &spec).await?;
    let mut conn = ctx.db.write().await?;
    if spec.name != current.spec.name && store::get_policy(&mut conn, &spec.name).await?.is_some() {
        return Err(Error::AlreadyExists(format!("policy {:?}", spec.name)));
    }
    let row = to_row(&current.id, &spec, current.created_at.naive_utc(), ctx.now());
    if !store::update_policy(&mut conn, &row).await? {
        return Err(Error::NotFound(format!("policy {id:?}")));
    }
    get_policy(ctx, &current.id).await
}

/// Deletes a policy with no segments left and no active run.
pub async fn delete_policy(ctx: &Context, id_or_name: &str) -> Result<()> {
    let p = get_policy(ctx, id_or_name).await?;
    let mut conn = ctx.db.write().await?;
    match store::delete_policy(&mut conn, &p.id, ctx.now()).await? {
        None => Ok(()),
        Some(reason) => Err(Error::FailedPrecondition(format!("policy {:?} kept: {reason}", p.spec.name))),
    }
}

/// The policy's cutoff now, on the database's clock: rows older than this are due.
fn cutoff_of(ctx: &Context, p: &Policy) -> DateTime<Utc> {
    let now = ctx.now_utc();
    now - chrono::Duration::from_std(p.spec.archive_after).unwrap_or(chrono::Duration::zero())
}

/// What a run would move now.
pub async fn plan(ctx: &Context, id_or_name: &str) -> Result<Plan> {
    let p = get_policy(ctx, id_or_name).await?;
    let sql = resolve(ctx, &p.spec).await?;
    let cutoff = cutoff_of(ctx, &p);
    let params = store::params(&sql, cutoff, &p.spec.filters, None, None, 0);
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let r = store::plan(&mut conn, &sql, &params).await?;
    let t = |us: Option<i64>| us.and_then(DateTime::from_timestamp_micros);
    Ok(Plan {
        rows: r.rows,
        bytes: r.bytes,
        oldest: t(r.min_ts),
        newest: t(r.max_ts),
        batches: (r.rows + p.spec.batch_size - 1) / p.spec.batch_size,
        cutoff,
    })
}

/// A run by id.
pub async fn get_run(ctx: &Context, id: &str) -> Result<Run> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let row = store::get_run(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("run {id:?}")))?;
    drop(conn);
    let mut run = Run::from(row);
    if run.state == RunState::Running {
        // A run whose lease has lapsed has no server working on it any more: say so now rather
        // than when the next run takes the policy over (which records it). Reported, not written:
        // the lease is the only authority on whether a run is alive.
        let mut conn = ctx.db.read_prefer_primary().await?.0;
        if store::orphaned_runs(&mut conn, ctx.now()).await?.contains(&run.id) {
            run.state = RunState::Failed;
            run.error = Some("interrupted: its lease expired (its server stopped)".into());
        }
    }
    Ok(run)
}

/// Runs newest first; the page token is the last id returned.
pub async fn list_runs(
    ctx: &Context,
    policy: Option<&str>,
    page_size: i64,
    token: Option<&str>,
) -> Result<(Vec<Run>, Option<String>)> {
    let policy_id = match policy {
        Some(p) => Some(get_policy(ctx, p).await?.id),
        None => None,
    };
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let rows = store::list_runs(&mut conn, policy_id.as_deref(), token, page_size + 1).await?;
    let more = rows.len() as i64 > page_size;
    let runs: Vec<Run> = rows.into_iter().take(page_size as usize).map(Run::from).collect();
    let next = if more { runs.last().map(|r| r.id.clone()) } else { None };
    Ok((runs, next))
}

/// Asks a run to stop after its current batch.
pub async fn cancel_run(ctx: &Context, id: &str) -> Result<Run> {
    let mut conn = ctx.db.write().await?;
    if !store::request_cancel(&mut conn, id).await? {
        return Err(Error::NotFound(format!("run {id:?}")));
    }
    drop(conn);
    get_run(ctx, id).await
}

/// Segments of a policy (committed and restored), oldest first, paged by offset.
pub async fn list_segments(
    ctx: &Context,
    policy: &str,
    page_size: i64,
    offset: i64,
) -> Result<(Vec<Segment>, Option<i64>)> {
    let p = get_policy(ctx, policy).await?;
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let rows =
        store::segments(&mut conn, &p.id, &[SegmentState::Committed, SegmentState::Restored], offset, page_size + 1)
            .await?;
    let more = rows.len() as i64 > page_size;
    Ok((segments_of(rows.into_iter().take(page_size as usize).collect()), more.then_some(offset + page_size)))
}

/// Records runs whose server went away (lease expired) as interrupted; called at start-up.
pub async fn mark_orphaned_runs(ctx: &Context) -> Result<usize> {
    let mut conn = ctx.db.write().await?;
    let t = ctx.now();
    // SQLite serves one strata instance: at start-up every run still marked running is a leftover,
    // whatever its lease says. PostgreSQL may have other live instances: only expired leases count.
    let horizon = match ctx.db.backend() {
        db::BackendKind::Sqlite => t + chrono::Duration::days(36_500),
        db::BackendKind::Postgres => t,
    };
    let orphans = store::orphaned_runs(&mut conn, horizon).await?;
    for id in &orphans {
        store::finish_run(&mut conn, id, RunState::Failed, Some("interrupted: its server stopped"), t).await?;
    }
    Ok(orphans.len())
}

// ---------------------------------------------------------------------------------------------
// A run's life: lease, start, the work of its kind, end
// ---------------------------------------------------------------------------------------------

/// What a run does, with what its kind's starter prepared.
enum Work {
    Rows { sql: store::TableSql, cutoff: DateTime<Utc> },
    Partitions { parent: super::partitions::Parent, cutoff: DateTime<Utc> },
    Restore { sql: store::TableSql, segments: restore::Selected },
    Retention { cutoff: DateTime<Utc> },
}

/// Takes the policy's lease (recording a run whose lease lapsed as interrupted), stores the new run
/// and starts its work in the background.
async fn start(ctx: &Context, p: Policy, kind: RunKind, cutoff: Option<DateTime<Utc>>, work: Work) -> Result<Run> {
    let id = uuid::Uuid::now_v7().to_string();
    let t = ctx.now();
    let mut conn = ctx.db.write().await?;
    match store::acquire_lease(&mut conn, &p.id, &id, lease_until(ctx), t).await? {
        Err(holder) => {
            return Err(Error::Busy(format!(
                "policy {:?} is busy: run {holder} holds it (its lease is renewed every batch)",
                p.spec.name
            )));
        }
        Ok(Some(previous)) => {
            // The previous holder stopped renewing: its server went away mid-run.
            store::finish_run(&mut conn, &previous, RunState::Failed, Some("interrupted: its server stopped"), t)
                .await?;
        }
        Ok(None) => {}
    }
    let row = RunRow {
        id: id.clone(),
        policy_id: p.id.clone(),
        kind,
        state: RunState::Running,
        cutoff: cutoff.map(|c| c.naive_utc()),
        rows_done: 0,
        rows_skipped: 0,
        segments_done: 0,
        raw_bytes: 0,
        compressed_bytes: 0,
        longest_txn_ms: 0,
        cancel_requested: false,
        error: None,
        started_at: t,
        updated_at: t,
        finished_at: None,
    };
    if let Err(e) = store::insert_run(&mut conn, &row).await {
        let _ = store::release_lease(&mut conn, &p.id, &id).await;
        return Err(e.into());
    }
    drop(conn);
    tracing::info!(run = %id, policy = %p.spec.name, kind = kind.as_str(), "run started");
    let run = Run::from(row);
    ctx.spawn("archive_run", execute(ctx.clone(), p, run.clone(), work));
    Ok(run)
}

/// Why a run stopped early without an error.
enum Stop {
    Done,
    Cancelled(&'static str),
}

async fn execute(ctx: Context, p: Policy, run: Run, work: Work) {
    let outcome = match work {
        Work::Rows { sql, cutoff } if p.spec.mode == Mode::Archive => {
            run::archive_rows(&ctx, &p, &run, &sql, cutoff).await
        }
        Work::Rows { sql, cutoff } => run::purge_rows(&ctx, &p, &run, &sql, cutoff).await,
        Work::Restore { sql, segments } => restore::restore_segments(&ctx, &p, &run, &sql, segments).await,
        Work::Retention { cutoff } => retention::retention(&ctx, &p, &run, cutoff).await,
        Work::Partitions { parent, cutoff } => {
            partitions::archive_partitions_run(&ctx, &p, &run, &parent, cutoff).await
        }
    };
    let (st, error) = match &outcome {
        Ok(Stop::Done) => (RunState::Succeeded, None),
        Ok(Stop::Cancelled(why)) => (RunState::Cancelled, Some(why.to_string())),
        Err(e) => (RunState::Failed, Some(e.to_string())),
    };
    match &outcome {
        Err(e) => tracing::error!(run = %run.id, policy = %p.spec.name, error = %e, "run failed"),
        Ok(_) => tracing::info!(run = %run.id, policy = %p.spec.name, state = st.as_str(), "run ended"),
    }
    let record = async {
        let mut conn = ctx.db.write().await?;
        store::finish_run(&mut conn, &run.id, st, error.as_deref(), ctx.now()).await?;
        store::release_lease(&mut conn, &p.id, &run.id).await?;
        Ok::<_, db::Error>(())
    };
    if let Err(e) = record.await {
        // The lease then expires by itself and the next run records this one as interrupted.
        tracing::error!(run = %run.id, error = %e, "recording the end of the run failed");
    }
}

fn stop_requested(ctx: &Context, cancel_requested: bool) -> Option<Stop> {
    if cancel_requested {
        Some(Stop::Cancelled("cancelled on request"))
    } else if ctx.background.is_cancelled() {
        Some(Stop::Cancelled("server stopping"))
    } else {
        None
    }
}

/// The run's lease went to another run (this one stopped renewing it in time).
fn lease_lost() -> Error {
    Error::FailedPrecondition("another run took the policy over (lease expired)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid policy to vary.
    pub(super) fn spec() -> PolicySpec {
        PolicySpec {
            name: "chat-archive".into(),
            schema_name: String::new(),
            table_name: "messages".into(),
            time_column: "created_at".into(),
            key_columns: vec!["id".into()],
            archive_after: Duration::from_secs(86_400),
            filters: vec![],
            delete_after: None,
            batch_size: 0,
            mode: Mode::Archive,
        }
    }

    #[test]
    fn validation_fills_defaults_and_rejects_bad_shapes() {
        assert_eq!(spec().validate().unwrap().batch_size, DEFAULT_BATCH);
        let bad = |f: &dyn Fn(&mut PolicySpec)| {
            let mut s = spec();
            f(&mut s);
            matches!(s.validate(), Err(Error::InvalidArgument(_)))
        };
        assert!(bad(&|s| s.name = "has space".into()));
        assert!(bad(&|s| s.name = String::new()));
        assert!(bad(&|s| s.key_columns.clear()));
        assert!(bad(&|s| s.key_columns = vec!["id".into(), "id".into()]));
        assert!(bad(&|s| s.table_name = "a\u{0}b".into()));
        assert!(bad(&|s| s.archive_after = Duration::ZERO));
        assert!(bad(&|s| s.batch_size = MAX_BATCH + 1));
        assert!(bad(&|s| {
            s.mode = Mode::Purge;
            s.delete_after = Some(Duration::from_secs(1));
        }));
    }
}
