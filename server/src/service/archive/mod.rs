//! Archival, purge, restore and retention of application rows under policies.
//!
//! A run holds its policy's lease (one run per policy at a time, across instances) and works in
//! batches. An archive batch is one transaction ([`db::archive::archive_batch`]): the due rows are
//! locked, written as a zstd-compressed JSON Lines segment, the segment is read back and its
//! SHA-256 checked, then exactly those rows are deleted and the segment marked committed. Before the
//! transaction a `pending` manifest row names the segment, so a crash leaves at worst a pending
//! segment whose object the next run deletes: every row is exactly once in the table or in a
//! committed segment.

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Context, Error, Result, ident, now, store_unavailable};
use crate::db::{
    self,
    archive::{self as store, Batch, BatchError, BatchOutcome, DueRows, PolicyRow, RunRow, Sealed, TableSpec},
};

/// Catalog shapes the gRPC edge encodes as they are.
pub use crate::db::archive::{FilterSpec, SegmentRow, state};

/// zstd level of segments: level 3 (zstd's default) compresses chat-like text ≈ 3× at several
/// hundred MB/s per core, fast enough that the database, not compression, bounds a run.
const ZSTD_LEVEL: i32 = 3;
/// Most rows per batch: bounds a transaction's duration and a segment's memory.
pub const MAX_BATCH: i64 = 100_000;
/// Default rows per batch.
pub const DEFAULT_BATCH: i64 = 5_000;
/// ReadArchive sends rows in messages of about this many bytes (below HTTP/2 send buffers).
const READ_CHUNK: usize = 256 << 10;

/// What a policy does with due rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Into segments.
    Archive,
    /// Deleted.
    Purge,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Archive => "archive",
            Mode::Purge => "purge",
        }
    }
}

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

impl TryFrom<PolicyRow> for Policy {
    type Error = Error;
    fn try_from(r: PolicyRow) -> Result<Self> {
        let corrupt = |what: &str, e: serde_json::Error| {
            Error::Db(db::Error::Unsupported(format!("policy {}: stored {what} unreadable: {e}", r.id)))
        };
        Ok(Policy {
            spec: PolicySpec {
                name: r.name.clone(),
                schema_name: r.schema_name.clone(),
                table_name: r.table_name.clone(),
                time_column: r.time_column.clone(),
                key_columns: serde_json::from_str(&r.key_columns).map_err(|e| corrupt("key columns", e))?,
                archive_after: Duration::from_secs(r.archive_after_secs.max(0) as u64),
                filters: serde_json::from_str(&r.filters).map_err(|e| corrupt("filters", e))?,
                delete_after: r.delete_after_secs.map(|s| Duration::from_secs(s.max(0) as u64)),
                batch_size: r.batch_size,
                mode: if r.mode == "purge" { Mode::Purge } else { Mode::Archive },
            },
            id: r.id,
            created_at: r.created_at.and_utc(),
            updated_at: r.updated_at.and_utc(),
        })
    }
}

fn to_row(id: &str, spec: &PolicySpec, created_at: NaiveDateTime, now: NaiveDateTime) -> PolicyRow {
    PolicyRow {
        id: id.to_owned(),
        name: spec.name.clone(),
        schema_name: spec.schema_name.clone(),
        table_name: spec.table_name.clone(),
        time_column: spec.time_column.clone(),
        key_columns: serde_json::to_string(&spec.key_columns).expect("strings serialize"),
        archive_after_secs: spec.archive_after.as_secs() as i64,
        delete_after_secs: spec.delete_after.map(|d| d.as_secs() as i64),
        filters: serde_json::to_string(&spec.filters).expect("strings serialize"),
        batch_size: spec.batch_size,
        mode: spec.mode.as_str().into(),
        lease_owner: None,
        lease_until: None,
        created_at,
        updated_at: now,
    }
}

/// What kind of run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Rows into segments.
    Archive,
    /// Rows deleted.
    Purge,
    /// Segments back into the table.
    Restore,
    /// Expired segments deleted.
    Retention,
}

impl RunKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Archive => "archive",
            RunKind::Purge => "purge",
            RunKind::Restore => "restore",
            RunKind::Retention => "retention",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "purge" => RunKind::Purge,
            "restore" => RunKind::Restore,
            "retention" => RunKind::Retention,
            _ => RunKind::Archive,
        }
    }
}

/// A run's state and figures.
#[derive(Debug, Clone)]
pub struct Run {
    /// Stored row.
    pub row: RunRow,
    /// Kind.
    pub kind: RunKind,
}

impl Run {
    /// raw / compressed.
    pub fn compression_ratio(&self) -> f64 {
        if self.row.compressed_bytes > 0 { self.row.raw_bytes as f64 / self.row.compressed_bytes as f64 } else { 0.0 }
    }
    /// Rows per second of wall time.
    pub fn rows_per_second(&self) -> f64 {
        let end = self.row.finished_at.unwrap_or(self.row.updated_at);
        let secs = (end - self.row.started_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        if secs > 0.0 { self.row.rows_done as f64 / secs } else { 0.0 }
    }
}

impl From<RunRow> for Run {
    fn from(row: RunRow) -> Self {
        Run { kind: RunKind::parse(&row.kind), row }
    }
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

fn micros_to_time(us: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp_micros(us).map(|t| t.naive_utc())
}

fn lease_until(ctx: &Context) -> NaiveDateTime {
    now() + chrono::Duration::from_std(ctx.config.run_lease).unwrap_or(chrono::Duration::seconds(30))
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
    let t = now();
    let row = to_row(&uuid::Uuid::now_v7().to_string(), &spec, t, t);
    store::insert_policy(&mut conn, &row).await?;
    row.try_into()
}

/// The policy with this id or name.
pub async fn get_policy(ctx: &Context, id_or_name: &str) -> Result<Policy> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    store::get_policy(&mut conn, id_or_name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("policy {id_or_name:?}")))?
        .try_into()
}

/// Every policy.
pub async fn list_policies(ctx: &Context) -> Result<Vec<Policy>> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    store::list_policies(&mut conn).await?.into_iter().map(Policy::try_from).collect()
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
    let row = to_row(&current.id, &spec, current.created_at.naive_utc(), now());
    if !store::update_policy(&mut conn, &row).await? {
        return Err(Error::NotFound(format!("policy {id:?}")));
    }
    get_policy(ctx, &current.id).await
}

/// Deletes a policy with no segments left and no active run.
pub async fn delete_policy(ctx: &Context, id_or_name: &str) -> Result<()> {
    let p = get_policy(ctx, id_or_name).await?;
    let mut conn = ctx.db.write().await?;
    match store::delete_policy(&mut conn, &p.id, now()).await? {
        None => Ok(()),
        Some(reason) => Err(Error::FailedPrecondition(format!("policy {:?} kept: {reason}", p.spec.name))),
    }
}

fn cutoff_of(p: &Policy) -> DateTime<Utc> {
    let now = Utc::now();
    now - chrono::Duration::from_std(p.spec.archive_after).unwrap_or(chrono::Duration::zero())
}

/// What a run would move now.
pub async fn plan(ctx: &Context, id_or_name: &str) -> Result<Plan> {
    let p = get_policy(ctx, id_or_name).await?;
    let sql = resolve(ctx, &p.spec).await?;
    let cutoff = cutoff_of(&p);
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
    let mut row = row;
    if row.state == state::RUNNING {
        // A run whose lease has lapsed has no server working on it any more: say so now rather
        // than when the next run takes the policy over (which records it). Reported, not written:
        // the lease is the only authority on whether a run is alive.
        let mut conn = ctx.db.read_prefer_primary().await?.0;
        if store::orphaned_runs(&mut conn, now()).await?.contains(&row.id) {
            row.state = state::FAILED.into();
            row.error = Some("interrupted: its lease expired (its server stopped)".into());
        }
    }
    Ok(row.into())
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
    let next = if more { runs.last().map(|r| r.row.id.clone()) } else { None };
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
) -> Result<(Vec<SegmentRow>, Option<i64>)> {
    let p = get_policy(ctx, policy).await?;
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let rows = store::segments(&mut conn, &p.id, &[state::COMMITTED, state::RESTORED], offset, page_size + 1).await?;
    let more = rows.len() as i64 > page_size;
    Ok((rows.into_iter().take(page_size as usize).collect(), more.then_some(offset + page_size)))
}

/// Starts a run of the policy's mode.
pub async fn run(ctx: &Context, policy: &str) -> Result<Run> {
    let p = get_policy(ctx, policy).await?;
    let kind = match p.spec.mode {
        Mode::Archive => RunKind::Archive,
        Mode::Purge => RunKind::Purge,
    };
    // Resolve before taking the lease so a policy broken by a schema change fails at once.
    let sql = resolve(ctx, &p.spec).await?;
    let cutoff = cutoff_of(&p);
    start(ctx, p, kind, Some(cutoff), Work::Rows { sql, cutoff }).await
}

/// Starts archiving whole partitions of the policy's range-partitioned table: each partition
/// entirely older than the policy's cutoff is detached (and recorded, in one transaction), its rows
/// archived into segments exactly like [`run`] does, then dropped once empty.
pub async fn archive_partitions(ctx: &Context, policy: &str) -> Result<Run> {
    let p = get_policy(ctx, policy).await?;
    if p.spec.mode != Mode::Archive {
        return Err(Error::FailedPrecondition(
            "policy is in purge mode: drop old partitions with DropPartitions instead".into(),
        ));
    }
    if !p.spec.filters.is_empty() {
        return Err(Error::FailedPrecondition(
            "partition archival moves whole partitions: the policy must have no filters".into(),
        ));
    }
    let parent = super::partitions::resolve(ctx, &p.spec.schema_name, &p.spec.table_name).await?;
    if parent.key != p.spec.time_column {
        return Err(Error::FailedPrecondition(format!(
            "the policy's time column {:?} is not the partition key {:?}",
            p.spec.time_column, parent.key
        )));
    }
    let cutoff = cutoff_of(&p);
    start(ctx, p, RunKind::Archive, Some(cutoff), Work::Partitions { parent, cutoff }).await
}

async fn archive_partitions_run(
    ctx: &Context,
    p: &Policy,
    run: &RunRow,
    parent: &super::partitions::Parent,
    cutoff: DateTime<Utc>,
) -> Result<Stop> {
    use crate::db::partitions as parts;
    let due: Vec<_> = super::partitions::list(ctx, parent)
        .await?
        .into_iter()
        .filter(|x| !x.is_default && x.end.is_some_and(|e| e <= cutoff))
        .collect();
    for x in &due {
        let mut conn = ctx.db.write().await?;
        if !store::renew_lease(&mut conn, &p.id, &run.id, lease_until(ctx)).await? {
            return Err(lease_lost());
        }
        parts::detach_recorded(&mut conn, &p.id, &parent.schema, &parent.table, &x.name, now())
            .await
            .map_err(|e| super::partitions::ddl_error(&x.name, e))?;
        tracing::info!(partition = %x.name, "detached partition for archival");
    }
    // Also those detached by an earlier, interrupted run.
    let detached = parts::detached(&mut ctx.db.write().await?, &p.id).await?;
    // Every row of a detached partition is due, whatever its age.
    let everything = Utc::now() + chrono::Duration::days(365 * 100);
    for (schema, table) in detached {
        let mut conn = ctx.db.write().await?;
        let sql = store::resolve(
            &mut conn,
            &TableSpec {
                schema_name: &schema,
                table_name: &table,
                time_column: &p.spec.time_column,
                key_columns: &p.spec.key_columns,
                filters: &[],
            },
        )
        .await?
        .map_err(Error::FailedPrecondition)?;
        drop(conn);
        match archive_rows(ctx, p, run, &sql, everything).await? {
            Stop::Done => {}
            stop => return Ok(stop),
        }
        let left = parts::drop_recorded(&mut ctx.db.write().await?, &p.id, &schema, &table).await?;
        if left > 0 {
            return Err(Error::FailedPrecondition(format!(
                "{left} row(s) stayed in detached partition {schema}.{table} (locked?); it is kept for the next run"
            )));
        }
        tracing::info!(partition = %table, "archived and dropped partition");
    }
    Ok(Stop::Done)
}

/// Starts restoring the selected segments.
pub async fn restore(ctx: &Context, policy: &str, selection: Selection) -> Result<Run> {
    let p = get_policy(ctx, policy).await?;
    let sql = resolve(ctx, &p.spec).await?;
    let segments = select_segments(ctx, &p, &selection).await?;
    start(ctx, p, RunKind::Restore, None, Work::Restore { sql, segments }).await
}

/// Starts deleting the policy's expired segments.
pub async fn apply_retention(ctx: &Context, policy: &str) -> Result<Run> {
    let p = get_policy(ctx, policy).await?;
    let Some(keep) = p.spec.delete_after else {
        return Err(Error::FailedPrecondition(format!("policy {:?} has no delete_after", p.spec.name)));
    };
    let cutoff = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::zero());
    start(ctx, p, RunKind::Retention, Some(cutoff), Work::Retention { cutoff }).await
}

enum Work {
    Rows { sql: store::TableSql, cutoff: DateTime<Utc> },
    Partitions { parent: super::partitions::Parent, cutoff: DateTime<Utc> },
    Restore { sql: store::TableSql, segments: Vec<SegmentRow> },
    Retention { cutoff: DateTime<Utc> },
}

async fn start(ctx: &Context, p: Policy, kind: RunKind, cutoff: Option<DateTime<Utc>>, work: Work) -> Result<Run> {
    let id = uuid::Uuid::now_v7().to_string();
    let t = now();
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
            store::finish_run(&mut conn, &previous, state::FAILED, Some("interrupted: its server stopped"), t).await?;
        }
        Ok(None) => {}
    }
    let row = RunRow {
        id: id.clone(),
        policy_id: p.id.clone(),
        kind: kind.as_str().into(),
        state: state::RUNNING.into(),
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
    ctx.tasks.spawn(execute(ctx.clone(), p, row.clone(), work));
    Ok(row.into())
}

/// Why a run stopped early without an error.
enum Stop {
    Done,
    Cancelled(&'static str),
}

async fn execute(ctx: Context, p: Policy, run: RunRow, work: Work) {
    let outcome = match work {
        Work::Rows { sql, cutoff } if p.spec.mode == Mode::Archive => archive_rows(&ctx, &p, &run, &sql, cutoff).await,
        Work::Rows { sql, cutoff } => purge_rows(&ctx, &p, &run, &sql, cutoff).await,
        Work::Restore { sql, segments } => restore_segments(&ctx, &p, &run, &sql, segments).await,
        Work::Retention { cutoff } => retention(&ctx, &p, &run, cutoff).await,
        Work::Partitions { parent, cutoff } => archive_partitions_run(&ctx, &p, &run, &parent, cutoff).await,
    };
    let (st, error) = match &outcome {
        Ok(Stop::Done) => (state::SUCCEEDED, None),
        Ok(Stop::Cancelled(why)) => (state::CANCELLED, Some(why.to_string())),
        Err(e) => (state::FAILED, Some(e.to_string())),
    };
    match &outcome {
        Err(e) => tracing::error!(run = %run.id, policy = %p.spec.name, error = %e, "run failed"),
        Ok(_) => tracing::info!(run = %run.id, policy = %p.spec.name, state = st, "run ended"),
    }
    let record = async {
        let mut conn = ctx.db.write().await?;
        store::finish_run(&mut conn, &run.id, st, error.as_deref(), now()).await?;
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

/// Object-key-safe form of a table name.
fn key_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

fn table_prefix(p: &Policy) -> String {
    format!("archive/{}.{}/", key_part(&p.spec.schema_name), key_part(&p.spec.table_name))
}

/// Removes what interrupted runs left: pending (and half-discarded) segments and any object
/// written for them. Each pending segment is first moved to `discarding`, which fences out a batch
/// that might still commit it (see [`store::archive_batch`]); only then is its object deleted.
async fn clean_pending(ctx: &Context, p: &Policy, run: &RunRow) -> Result<()> {
    let mut conn = ctx.db.write().await?;
    let stale: Vec<SegmentRow> = store::segments(&mut conn, &p.id, &[state::PENDING, state::DISCARDING], 0, i64::MAX)
        .await?
        .into_iter()
        .filter(|s| s.run_id != run.id)
        .collect();
    let mut doomed = Vec::new();
    for s in stale {
        if s.state == state::DISCARDING || store::discard_pending(&mut conn, &s.id).await? {
            doomed.push(s.id);
        }
    }
    drop(conn);
    if doomed.is_empty() {
        return Ok(());
    }
    // A pending segment's object key holds the rows' month, known only once written, so the
    // table's archive prefix is listed once — only after an interruption.
    let ids: HashSet<&str> = doomed.iter().map(String::as_str).collect();
    for o in ctx.objects.list(&table_prefix(p), &ctx.background).await.map_err(store_unavailable)? {
        let stem = o.key.rsplit('/').next().unwrap_or("").trim_end_matches(".jsonl.zst");
        if ids.contains(stem) {
            ctx.objects.delete(&o.key, &ctx.background).await.map_err(store_unavailable)?;
        }
    }
    let mut conn = ctx.db.write().await?;
    for id in &doomed {
        store::delete_segment(&mut conn, id).await?;
    }
    tracing::info!(policy = %p.spec.name, segments = doomed.len(), "removed segments of interrupted runs");
    Ok(())
}

/// Removes the segment of a batch that rolled back (its rows are still in the table).
async fn discard(ctx: &Context, segment_id: &str, object_key: Option<String>) -> Result<()> {
    let mut conn = ctx.db.write().await?;
    if !store::discard_pending(&mut conn, segment_id).await? {
        return Ok(());
    }
    drop(conn);
    if let Some(key) = object_key {
        // Cleanup of a batch that failed (or was stopped): it runs to its end even while the
        // server stops, so the next run finds nothing to clean.
        ctx.objects.delete(&key, &CancellationToken::new()).await.map_err(store_unavailable)?;
    }
    store::delete_segment(&mut ctx.db.write().await?, segment_id).await?;
    Ok(())
}

/// The run's lease went to another run (this one stopped renewing it in time).
fn lease_lost() -> Error {
    Error::FailedPrecondition("another run took the policy over (lease expired)".into())
}

/// Batches in flight at once on PostgreSQL: while one batch's segment is compressed and uploaded,
/// the next one's rows are read on another connection (its rows are disjoint: they lie after the
/// previous batch's last key and locked rows are skipped). SQLite has a single writer: one.
const PIPELINE_DEPTH: usize = 3;

/// What the coordinator learns from a batch as soon as its rows are read.
struct Cursor {
    last_key: String,
    full: bool,
}

/// How one archive batch ended.
enum BatchEnd {
    Committed { cancel_requested: bool },
    Empty,
}

async fn archive_rows(
    ctx: &Context,
    p: &Policy,
    run: &RunRow,
    sql: &store::TableSql,
    cutoff: DateTime<Utc>,
) -> Result<Stop> {
    clean_pending(ctx, p, run).await?;
    let columns: Vec<String> = sql.columns.iter().map(|c| format!("{} {}", c.name, c.ty)).collect();
    let columns = std::sync::Arc::new(serde_json::to_string(&columns).expect("strings serialize"));
    let sql = std::sync::Arc::new(sql.clone());
    let depth = if ctx.db.backend() == db::BackendKind::Postgres { PIPELINE_DEPTH } else { 1 };
    let mut inflight = std::collections::VecDeque::new();
    let mut after: Option<serde_json::Value> = None;
    // The last due key (see `store::last_due_key`), asked once the run needs a second batch.
    let mut upto: Option<serde_json::Value> = None;
    let mut last_due: Option<tokio::task::JoinHandle<Result<Option<String>>>> = None;
    let mut asked_last_due = false;
    let mut more = true;
    let mut outcome: Result<Stop> = Ok(Stop::Done);
    loop {
        while more && inflight.len() < depth {
            if let Some(q) = last_due.take_if(|q| q.is_finished()) {
                match q.await {
                    Ok(Ok(key)) => upto = key.and_then(|k| serde_json::from_str(&k).ok()),
                    Ok(Err(e)) => tracing::warn!(run = %run.id, error = %e, "last due key unknown; reading on"),
                    Err(e) => tracing::warn!(run = %run.id, error = %e, "last due key task failed; reading on"),
                }
            }
            if let Some(stop) = stop_requested(ctx, false) {
                outcome = Ok(stop);
                more = false;
                break;
            }
            let mut conn = ctx.db.write().await?;
            if !store::renew_lease(&mut conn, &p.id, &run.id, lease_until(ctx)).await? {
                outcome = Err(lease_lost());
                more = false;
                break;
            }
            drop(conn);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(one_batch(
                ctx.clone(),
                p.clone(),
                run.id.clone(),
                sql.clone(),
                columns.clone(),
                store::params(&sql, cutoff, &p.spec.filters, after.as_ref(), upto.as_ref(), p.spec.batch_size),
                (after.is_some(), upto.is_some()),
                tx,
            ));
            inflight.push_back(task);
            // The next batch may start once this one has read (and locked) its rows.
            match rx.await {
                Ok(c) => {
                    more = c.full;
                    after = Some(serde_json::from_str(&c.last_key).map_err(|e| {
                        Error::Db(db::Error::Unsupported(format!("unreadable key {:?}: {e}", c.last_key)))
                    })?);
                    // PostgreSQL only (the only backend with batches in flight beside each other).
                    if more && depth > 1 && !asked_last_due {
                        asked_last_due = true;
                        let (ctx, sql) = (ctx.clone(), sql.clone());
                        let params = store::params(&sql, cutoff, &p.spec.filters, None, None, 0);
                        last_due = Some(tokio::spawn(async move {
                            Ok(store::last_due_key(&mut ctx.db.write().await?, &sql, &params).await?)
                        }));
                    }
                }
                Err(_) => more = false,
            }
        }
        let Some(task) = inflight.pop_front() else { break };
        let end = task.await.map_err(|e| Error::Unavailable(format!("batch task: {e}")))?;
        match end {
            Ok(BatchEnd::Committed { cancel_requested }) => {
                if let Some(stop) = stop_requested(ctx, cancel_requested) {
                    more = false;
                    if outcome.is_ok() {
                        outcome = Ok(stop);
                    }
                }
            }
            Ok(BatchEnd::Empty) => more = false,
            Err(e) => {
                more = false;
                if outcome.is_ok() {
                    // A batch cut short by the server stopping was rolled back: the run stopped,
                    // it did not fail.
                    outcome = match (e, stop_requested(ctx, false)) {
                        (Error::Cancelled(_), Some(stop)) => Ok(stop),
                        (e, _) => Err(e),
                    };
                }
            }
        }
    }
    outcome
}

/// One archive batch in its own task and transaction: insert the pending manifest, lock and read
/// the rows (reporting the cursor), seal the segment, delete the rows and commit; on failure remove
/// the segment again.
#[expect(clippy::too_many_arguments, reason = "one batch's whole identity, passed to a spawned task")]
async fn one_batch(
    ctx: Context,
    p: Policy,
    run_id: String,
    sql: std::sync::Arc<store::TableSql>,
    columns: std::sync::Arc<String>,
    params: String,
    (after, upto): (bool, bool),
    cursor: tokio::sync::oneshot::Sender<Cursor>,
) -> Result<BatchEnd> {
    let segment_id = uuid::Uuid::now_v7().to_string();
    let t = now();
    let pending = SegmentRow {
        id: segment_id.clone(),
        policy_id: p.id.clone(),
        run_id: run_id.clone(),
        object_key: String::new(),
        state: state::PENDING.into(),
        row_count: 0,
        raw_bytes: 0,
        compressed_bytes: 0,
        sha256: String::new(),
        first_key: String::new(),
        last_key: String::new(),
        min_time: None,
        max_time: None,
        column_list: columns.to_string(),
        created_at: t,
        restored_at: None,
    };
    store::insert_pending_segment(&mut ctx.db.write().await?, &pending).await?;
    let batch = Batch {
        sql: &sql,
        params,
        after,
        upto,
        policy_id: &p.id,
        run_id: &run_id,
        segment_id: &segment_id,
        lease_until: lease_until(&ctx),
        now: t,
    };
    let written = std::sync::Mutex::new(None::<String>);
    let mut cursor = Some(cursor);
    let outcome = {
        let mut conn = ctx.db.write().await?;
        store::archive_batch(&mut conn, &batch, buffers::take(), async |rows: &mut DueRows| {
            if let Some(tx) = cursor.take() {
                let _ =
                    tx.send(Cursor { last_key: rows.last_key.clone(), full: rows.count as i64 >= p.spec.batch_size });
            }
            seal(&ctx, &p, &segment_id, rows, &written).await
        })
        .await
    };
    let key = written.lock().expect("lock").take();
    match outcome {
        Ok(BatchOutcome::Committed { rows, cancel_requested, txn, phases, .. }) => {
            tracing::debug!(
                run = %run_id, rows, txn_ms = txn.as_millis() as u64,
                select_ms = phases.select.as_millis() as u64, seal_ms = phases.seal.as_millis() as u64,
                finish_ms = phases.finish.as_millis() as u64, "archive batch committed"
            );
            Ok(BatchEnd::Committed { cancel_requested })
        }
        Ok(BatchOutcome::Empty) => {
            discard(&ctx, &segment_id, key).await?;
            Ok(BatchEnd::Empty)
        }
        Ok(BatchOutcome::LeaseLost) => Err(lease_lost()),
        Err(e) => {
            // The transaction rolled back: the rows are in the table, the segment must go.
            if let Err(d) = discard(&ctx, &segment_id, key).await {
                tracing::warn!(segment = %segment_id, error = %d, "discarding a failed segment failed");
            }
            Err(match e {
                BatchError::Db(e) => e.into(),
                BatchError::Seal(e) => e,
            })
        }
    }
}

/// Memory that archive batches reuse. A batch's documents are a few megabytes and zstd's context
/// about one more; allocated fresh for every batch, the kernel zeroed each page again (page faults
/// were ≈ 3 % of a run's CPU).
mod buffers {
    use std::{cell::RefCell, sync::Mutex};

    /// Document buffers of finished batches: enough for the batches in flight.
    static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    /// Larger buffers are not kept (a batch of unusually wide rows).
    const KEEP_AT_MOST: usize = 64 << 20;

    pub(super) fn take() -> Vec<u8> {
        FREE.lock().expect("buffer pool").pop().unwrap_or_default()
    }

    pub(super) fn give(buffer: Vec<u8>) {
        let mut free = FREE.lock().expect("buffer pool");
        if buffer.capacity() <= KEEP_AT_MOST && free.len() <= super::PIPELINE_DEPTH {
            free.push(buffer);
        }
    }

    thread_local! {
        /// One compression context per blocking thread, reused.
        static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    }

    /// zstd at the archive's level, through this thread's context.
    pub(super) fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
        COMPRESSOR.with_borrow_mut(|c| {
            let c = match c {
                Some(c) => c,
                None => c.insert(zstd::bulk::Compressor::new(super::ZSTD_LEVEL)?),
            };
            c.compress(data)
        })
    }
}

/// Writes the rows as a compressed segment, reads it back and checks its SHA-256.
async fn seal(
    ctx: &Context,
    p: &Policy,
    segment_id: &str,
    rows: &mut DueRows,
    written: &std::sync::Mutex<Option<String>>,
) -> Result<Sealed> {
    let jsonl = std::mem::take(&mut rows.jsonl);
    let raw_bytes = jsonl.len() as i64;
    let started = std::time::Instant::now();
    // Compression is CPU work: off the async workers.
    let (compressed, sha256) = tokio::task::spawn_blocking(move || {
        let c = buffers::compress(&jsonl);
        buffers::give(jsonl);
        let c = c?;
        let h = hex::encode(Sha256::digest(&c));
        Ok::<_, std::io::Error>((Bytes::from(c), h))
    })
    .await
    .map_err(|e| Error::Unavailable(format!("compression task: {e}")))?
    .map_err(|e| Error::Unavailable(format!("compression: {e}")))?;
    let (min_ts, max_ts) = (rows.min_ts, rows.max_ts);
    let month = min_ts.and_then(DateTime::from_timestamp_micros).map(|t| t.format("%Y/%m").to_string());
    let object_key = format!("{}{}/{segment_id}.jsonl.zst", table_prefix(p), month.as_deref().unwrap_or("undated"));
    let size = compressed.len() as u64;
    let compressed_at = started.elapsed();
    *written.lock().expect("lock") = Some(object_key.clone());
    ctx.objects.put(&object_key, compressed.clone(), &ctx.background).await.map_err(store_unavailable)?;
    let written_at = started.elapsed();
    // Verify what the store holds before the rows are deleted: byte for byte against what was
    // sent (exact, and cheaper than hashing it again; the manifest's SHA-256 is of these bytes).
    let mut read = 0usize;
    let mut same = true;
    let mut s = ctx.objects.get(&object_key, 0, None, &ctx.background).await.map_err(store_unavailable)?;
    while let Some(chunk) = s.try_next().await.map_err(store_unavailable)? {
        let end = read + chunk.len();
        same &= end <= compressed.len() && compressed[read..end] == chunk[..];
        read = end;
    }
    if !same || read as u64 != size {
        return Err(Error::DataLoss(format!("segment {segment_id} read back differs from what was written")));
    }
    tracing::debug!(
        segment = segment_id,
        raw_bytes,
        compressed_bytes = size,
        compress_ms = compressed_at.as_millis() as u64,
        write_ms = (written_at - compressed_at).as_millis() as u64,
        verify_ms = (started.elapsed() - written_at).as_millis() as u64,
        "segment sealed"
    );
    Ok(Sealed {
        raw_bytes,
        compressed_bytes: size as i64,
        sha256,
        object_key,
        min_time: min_ts.and_then(micros_to_time),
        max_time: max_ts.and_then(micros_to_time),
    })
}

async fn purge_rows(
    ctx: &Context,
    p: &Policy,
    run: &RunRow,
    sql: &store::TableSql,
    cutoff: DateTime<Utc>,
) -> Result<Stop> {
    loop {
        if let Some(stop) = stop_requested(ctx, false) {
            return Ok(stop);
        }
        let batch = Batch {
            sql,
            params: store::params(sql, cutoff, &p.spec.filters, None, None, p.spec.batch_size),
            after: false,
            upto: false,
            policy_id: &p.id,
            run_id: &run.id,
            segment_id: "",
            lease_until: lease_until(ctx),
            now: now(),
        };
        let mut conn = ctx.db.write().await?;
        match store::purge_batch(&mut conn, &batch).await? {
            None => return Err(lease_lost()),
            Some((n, cancel, _)) => {
                if let Some(stop) = stop_requested(ctx, cancel) {
                    return Ok(stop);
                }
                if (n as i64) < p.spec.batch_size {
                    return Ok(Stop::Done);
                }
            }
        }
    }
}

async fn select_segments(ctx: &Context, p: &Policy, sel: &Selection) -> Result<Vec<SegmentRow>> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    match sel {
        Selection::Ids(ids) => {
            let found = store::segments_by_id(&mut conn, ids).await?;
            for id in ids {
                match found.iter().find(|s| &s.id == id) {
                    None => return Err(Error::NotFound(format!("segment {id:?}"))),
                    Some(s) if s.policy_id != p.id => {
                        return Err(Error::InvalidArgument(format!("segment {id} belongs to another policy")));
                    }
                    Some(s) if s.state != state::COMMITTED => {
                        return Err(Error::FailedPrecondition(format!("segment {id} is {}", s.state)));
                    }
                    Some(_) => {}
                }
            }
            Ok(found)
        }
        Selection::Range { start, end } => {
            let all = store::segments(&mut conn, &p.id, &[state::COMMITTED], 0, i64::MAX).await?;
            Ok(all
                .into_iter()
                .filter(|s| {
                    let (Some(lo), Some(hi)) = (s.min_time, s.max_time) else {
                        return start.is_none() && end.is_none();
                    };
                    start.is_none_or(|st| hi >= st.naive_utc()) && end.is_none_or(|en| lo < en.naive_utc())
                })
                .collect())
        }
    }
}

/// Fetches a segment, checks its SHA-256 and decompresses it.
async fn load_segment(ctx: &Context, s: &SegmentRow) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(s.compressed_bytes.max(0) as usize);
    let mut stream = ctx.objects.get(&s.object_key, 0, None, &ctx.background).await.map_err(|e| match e {
        crate::objects::Error::NotFound(_) => {
            Error::DataLoss(format!("segment {} object {} is missing", s.id, s.object_key))
        }
        e => store_unavailable(e),
    })?;
    while let Some(chunk) = stream.try_next().await.map_err(store_unavailable)? {
        body.extend_from_slice(&chunk);
    }
    let expected = s.sha256.clone();
    let id = s.id.clone();
    tokio::task::spawn_blocking(move || {
        if hex::encode(Sha256::digest(&body)) != expected {
            return Err(Error::DataLoss(format!("segment {id}: object checksum does not match its manifest")));
        }
        zstd::stream::decode_all(body.as_slice())
            .map_err(|e| Error::DataLoss(format!("segment {id}: cannot decompress: {e}")))
    })
    .await
    .map_err(|e| Error::Unavailable(format!("decompression task: {e}")))?
}

async fn restore_segments(
    ctx: &Context,
    p: &Policy,
    run: &RunRow,
    sql: &store::TableSql,
    segments: Vec<SegmentRow>,
) -> Result<Stop> {
    for s in segments {
        if let Some(stop) = stop_requested(ctx, false) {
            return Ok(stop);
        }
        let raw = load_segment(ctx, &s).await?;
        let text = String::from_utf8(raw).map_err(|_| Error::DataLoss(format!("segment {} is not UTF-8", s.id)))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        let json = format!("[{}]", lines.join(","));
        let batch = Batch {
            sql,
            params: String::new(),
            after: false,
            upto: false,
            policy_id: &p.id,
            run_id: &run.id,
            segment_id: &s.id,
            lease_until: lease_until(ctx),
            now: now(),
        };
        let mut conn = ctx.db.write().await?;
        if store::restore_segment(&mut conn, sql, &json, lines.len(), &s, &batch).await?.is_none() {
            // Lost the lease, or the segment was restored or deleted meanwhile.
            let mut conn = ctx.db.write().await?;
            if !store::renew_lease(&mut conn, &p.id, &run.id, lease_until(ctx)).await? {
                return Err(lease_lost());
            }
        }
        let mut conn = ctx.db.write().await?;
        let cancel = store::add_progress(&mut conn, &run.id, &store::Progress::default(), now()).await?;
        if let Some(stop) = stop_requested(ctx, cancel) {
            return Ok(stop);
        }
    }
    Ok(Stop::Done)
}

async fn retention(ctx: &Context, p: &Policy, run: &RunRow, cutoff: DateTime<Utc>) -> Result<Stop> {
    clean_pending(ctx, p, run).await?;
    let mut conn = ctx.db.write().await?;
    let due: Vec<SegmentRow> =
        store::segments(&mut conn, &p.id, &[state::COMMITTED, state::RESTORED, state::DELETING], 0, i64::MAX)
            .await?
            .into_iter()
            .filter(|s| s.max_time.is_some_and(|t| t < cutoff.naive_utc()))
            .collect();
    drop(conn);
    for s in due {
        if let Some(stop) = stop_requested(ctx, false) {
            return Ok(stop);
        }
        let mut conn = ctx.db.write().await?;
        if !store::renew_lease(&mut conn, &p.id, &run.id, lease_until(ctx)).await? {
            return Err(lease_lost());
        }
        // Marked first: a crash after the object is gone leaves a manifest that says so, and the
        // next retention run finishes the job (deleting a missing object succeeds).
        store::set_segment_state(&mut conn, &s.id, state::DELETING).await?;
        drop(conn);
        ctx.objects.delete(&s.object_key, &ctx.background).await.map_err(store_unavailable)?;
        let mut conn = ctx.db.write().await?;
        store::delete_segment(&mut conn, &s.id).await?;
        let progress = store::Progress {
            rows: s.row_count,
            segments: 1,
            raw: s.raw_bytes,
            compressed: s.compressed_bytes,
            ..Default::default()
        };
        if let Some(stop) = stop_requested(ctx, store::add_progress(&mut conn, &run.id, &progress, now()).await?) {
            return Ok(stop);
        }
    }
    Ok(Stop::Done)
}

/// Rows of the selected committed segments, in chunks, sent to `tx` until it closes.
pub async fn read(
    ctx: &Context,
    policy: &str,
    selection: Selection,
    tx: tokio::sync::mpsc::Sender<Result<(String, Vec<String>)>>,
) {
    let segments = match get_policy(ctx, policy).await {
        Ok(p) => select_segments(ctx, &p, &selection).await,
        Err(e) => Err(e),
    };
    let segments = match segments {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    for s in segments {
        let raw = match load_segment(ctx, &s).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let Ok(text) = String::from_utf8(raw) else {
            let _ = tx.send(Err(Error::DataLoss(format!("segment {} is not UTF-8", s.id)))).await;
            return;
        };
        let mut chunk = Vec::new();
        let mut size = 0;
        for line in text.lines().filter(|l| !l.is_empty()) {
            size += line.len();
            chunk.push(line.to_owned());
            if size >= READ_CHUNK {
                if tx.send(Ok((s.id.clone(), std::mem::take(&mut chunk)))).await.is_err() {
                    return;
                }
                size = 0;
            }
        }
        if !chunk.is_empty() && tx.send(Ok((s.id.clone(), chunk))).await.is_err() {
            return;
        }
    }
}

/// Records runs whose server went away (lease expired) as interrupted; called at start-up.
pub async fn mark_orphaned_runs(ctx: &Context) -> Result<usize> {
    let mut conn = ctx.db.write().await?;
    let t = now();
    // SQLite serves one strata instance: at start-up every run still marked running is a leftover,
    // whatever its lease says. PostgreSQL may have other live instances: only expired leases count.
    let horizon = match ctx.db.backend() {
        db::BackendKind::Sqlite => t + chrono::Duration::days(36_500),
        db::BackendKind::Postgres => t,
    };
    let orphans = store::orphaned_runs(&mut conn, horizon).await?;
    for id in &orphans {
        store::finish_run(&mut conn, id, state::FAILED, Some("interrupted: its server stopped"), t).await?;
    }
    Ok(orphans.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PolicySpec {
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

    #[test]
    fn object_keys_stay_safe_whatever_the_table_name() {
        assert_eq!(key_part("my table/../x"), "my_table_.._x");
        let p = Policy {
            id: "p".into(),
            spec: PolicySpec { table_name: "bad/../name".into(), schema_name: "public".into(), ..spec() },
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let prefix = table_prefix(&p);
        assert_eq!(prefix, "archive/public.bad_.._name/");
        assert!(!prefix.split('/').any(|s| s == ".."));
    }
}
