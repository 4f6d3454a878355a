//! Partition upkeep for partitioned PostgreSQL tables. Time-range tables get every call: premake,
//! health, dropping whole old partitions, rescuing rows from the default partition (this module).
//! Integer-range and hash tables get premake and health ([`keyed`]); the time-only calls refuse
//! them through [`resolve`].

mod keyed;

use chrono::{DateTime, NaiveDate, Utc};

use serde::{Deserialize, Serialize};

use super::{
    Context, Error, Result, ident,
    operation::{self, Handle, Item, ItemKind, NewItem, Operation, OperationKind},
};
use crate::db::{
    self,
    partitions::{self as store, DdlError, Lookup, NewPartition, PartitionRow},
};
pub use crate::model::partitions::{IntKeyType, Interval, KeyType, Kind, Parent, Table};
pub use keyed::{Ensure, HashHealth, RangeHealth, TableHealth, ensure_any, health_any};

/// A partition with bounds in UTC.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Name.
    pub name: String,
    /// Lower bound.
    pub start: Option<DateTime<Utc>>,
    /// Upper bound.
    pub end: Option<DateTime<Utc>>,
    /// Total size.
    pub size: i64,
    /// Row estimate.
    pub estimated_rows: i64,
    /// The default partition.
    pub is_default: bool,
    /// Lower bound of an integer range (None: MINVALUE, or another kind).
    pub start_key: Option<i64>,
    /// Upper bound of an integer range (None: MAXVALUE, or another kind).
    pub end_key: Option<i64>,
    /// Modulus and remainder of a hash partition.
    pub hash: Option<(i32, i32)>,
}

impl From<PartitionRow> for Partition {
    fn from(r: PartitionRow) -> Self {
        Partition {
            name: r.name,
            start: r.lower.and_then(DateTime::from_timestamp_micros),
            end: r.upper.and_then(DateTime::from_timestamp_micros),
            size: r.size,
            estimated_rows: r.estimated_rows,
            is_default: r.is_default,
            start_key: None,
            end_key: None,
            hash: None,
        }
    }
}

/// What GetPartitionHealth reports.
#[derive(Debug, Clone)]
pub struct Health {
    /// The table.
    pub parent: Parent,
    /// Range partitions by start, then the default.
    pub partitions: Vec<Partition>,
    /// Holes between consecutive range partitions.
    pub gaps: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Rows in the default partition.
    pub default_rows: i64,
    /// How far ahead of now the newest partition reaches.
    pub coverage_ahead: std::time::Duration,
}

/// Checks the table is range-partitioned on one time column: what every call but EnsurePartitions
/// and GetPartitionHealth needs. Other kinds are FAILED_PRECONDITION.
pub async fn resolve(ctx: &Context, schema: &str, table: &str) -> Result<Parent> {
    resolve_time(ctx, schema, table, "this call").await
}

/// [`resolve`], naming the call `what` when it refuses another kind.
pub async fn resolve_time(ctx: &Context, schema: &str, table: &str, what: &str) -> Result<Parent> {
    let t = resolve_table(ctx, schema, table).await?;
    t.time().ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "{what} works on time-range partitions only; {}.{} is partitioned by {}",
            t.schema,
            t.table,
            t.kind.describe()
        ))
    })
}

/// Checks the table is partitioned in a way strata handles: by range on one time or integer
/// column, or by hash.
pub async fn resolve_table(ctx: &Context, schema: &str, table: &str) -> Result<Table> {
    if ctx.db.backend() != db::BackendKind::Postgres {
        return Err(Error::FailedPrecondition(
            "partition upkeep needs PostgreSQL: SQLite has no table partitioning (use an archive policy instead)"
                .into(),
        ));
    }
    let schema = if schema.is_empty() { "public" } else { schema };
    ident("schema", schema)?;
    ident("table", table)?;
    // Partition names append `_pYYYYMMDD` (10 bytes) and must stay within 63 bytes (integer-range
    // and hash names shorten the table's part when their suffix is longer).
    if table.len() > 53 {
        return Err(Error::InvalidArgument(format!(
            "table name {table:?} is too long for partition names (max 53 bytes)"
        )));
    }
    let mut conn = ctx.db.write().await?;
    match store::find(&mut conn, schema, table).await? {
        Lookup::Found(t) => Ok(t),
        Lookup::NotPartitioned => Err(Error::FailedPrecondition(format!(
            "{schema}.{table} is neither range-partitioned on one column nor hash-partitioned"
        ))),
        Lookup::Missing => Err(Error::InvalidArgument(format!("table {schema}.{table} does not exist"))),
        Lookup::OtherKeyType { key, sql_type } => Err(Error::FailedPrecondition(format!(
            "{schema}.{table} is partitioned on {key} of type {sql_type}; expected a timestamp, date or integer"
        ))),
    }
}

fn at(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

/// The table's partitions, with bounds.
pub async fn list(ctx: &Context, p: &Parent) -> Result<Vec<Partition>> {
    let mut conn = ctx.db.write().await?;
    Ok(store::partitions(&mut conn, p).await?.into_iter().map(Partition::from).collect())
}

fn overlaps(parts: &[Partition], from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
    parts.iter().filter(|x| !x.is_default).any(|x| x.start.is_none_or(|s| s < to) && x.end.is_none_or(|e| e > from))
}

/// Creates missing partitions from `past` periods before the current one through `ahead` after it.
/// Returns the created partitions and how many periods were already covered.
pub async fn ensure(
    ctx: &Context,
    p: &Parent,
    interval: Interval,
    ahead: u32,
    past: u32,
) -> Result<(Vec<Partition>, u32)> {
    let existing = list(ctx, p).await?;
    let mut start = interval.start_of(ctx.now_utc());
    for _ in 0..past {
        start = interval.prev(start);
    }
    let mut missing = Vec::new();
    let mut skipped = 0;
    let mut d = start;
    for _ in 0..=(past + ahead) {
        let next = interval.next(d);
        if overlaps(&existing, at(d), at(next)) {
            skipped += 1;
        } else {
            missing.push(NewPartition { name: format!("{}_p{}", p.table, interval.suffix(d)), from: d, to: next });
        }
        d = next;
    }
    let created_names: Vec<String> = missing.iter().map(|x| x.name.clone()).collect();
    if !missing.is_empty() {
        // All of them in one transaction: the parent's lock is taken once, and either every missing
        // partition appears or none does.
        let mut conn = ctx.db.write().await?;
        store::create_partitions(&mut conn, p, &missing).await.map_err(|e| ddl_error(&created_names.join(", "), e))?;
    }
    let now = list(ctx, p).await?;
    let created = now.into_iter().filter(|x| created_names.contains(&x.name)).collect();
    Ok((created, skipped))
}

/// Turns a DDL failure into an error the caller can act on.
pub fn ddl_error(what: &str, e: DdlError) -> Error {
    match e {
        DdlError::LockTimeout => Error::Unavailable(format!(
            "{what}: the table is busy (lock not granted within {}); retry",
            store::DDL_LOCK_TIMEOUT
        )),
        DdlError::DefaultPartitionRows(msg) => Error::FailedPrecondition(format!(
            "{what}: rows for this range are in the default partition; rescue them first ({msg})"
        )),
        DdlError::Db(e) => Error::Db(e),
    }
}

/// Partitions, gaps, default rows and coverage.
pub async fn health(ctx: &Context, p: Parent) -> Result<Health> {
    let partitions = list(ctx, &p).await?;
    let ranges: Vec<&Partition> = partitions.iter().filter(|x| !x.is_default).collect();
    let gaps = ranges
        .windows(2)
        .filter_map(|w| match (w[0].end, w[1].start) {
            (Some(e), Some(s)) if e < s => Some((e, s)),
            _ => None,
        })
        .collect();
    let default_rows = match partitions.iter().find(|x| x.is_default) {
        // As long as the default partition is big: its own session and timeout.
        Some(d) => {
            store::count_rows(&mut ctx.db.long_work(ctx.config.maintenance_timeout).await?, &p, &d.name, None).await?
        }
        None => 0,
    };
    let newest = ranges.iter().filter_map(|x| x.end).max();
    let coverage_ahead = newest.map(|e| (e - ctx.now_utc()).to_std().unwrap_or_default()).unwrap_or_default();
    Ok(Health { parent: p, partitions, gaps, default_rows, coverage_ahead })
}

/// Drops partitions entirely older than `now - older_than`, in one transaction.
pub async fn drop_old(
    ctx: &Context,
    p: &Parent,
    older_than: std::time::Duration,
    dry_run: bool,
) -> Result<Vec<Partition>> {
    let cutoff = ctx.now_utc()
        - chrono::Duration::from_std(older_than).map_err(|_| Error::InvalidArgument("older_than too large".into()))?;
    let due: Vec<Partition> =
        list(ctx, p).await?.into_iter().filter(|x| !x.is_default && x.end.is_some_and(|e| e <= cutoff)).collect();
    if !dry_run && !due.is_empty() {
        // One transaction (DROP detaches and removes in one step): all due partitions go, or none.
        let names: Vec<&str> = due.iter().map(|x| x.name.as_str()).collect();
        let mut conn = ctx.db.write().await?;
        store::drop_partitions(&mut conn, p, &names).await.map_err(|e| {
            let what: Vec<String> = names.iter().map(|n| store::qualified(p, n)).collect();
            ddl_error(&what.join(", "), e)
        })?;
        tracing::info!(partitions = due.len(), "dropped partitions");
    }
    Ok(due)
}

/// What RescueDefaultRows was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RescueRequest {
    /// Schema.
    pub schema: String,
    /// The partitioned table.
    pub table: String,
    /// Length of the partitions to create.
    pub interval: Interval,
    /// Only count.
    pub dry_run: bool,
}

/// Counters of a rescue, and the period it reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RescueProgress {
    /// Every period starting at or before this (µs since the epoch) is done.
    pub after: Option<i64>,
    /// Rows moved (or that would be).
    pub rows_moved: i64,
    /// Partitions created (or that would be).
    pub partitions_created: i64,
    /// Rows left in the default partition as of the last step (a dry run: that would be left);
    /// counted again at the end.
    pub rows_left: i64,
}

/// Starts moving default-partition rows into partitions of `interval` (one rescue per table at a
/// time across the fleet) and returns the operation at once.
pub async fn start_rescue(ctx: &Context, p: &Parent, interval: Interval, dry_run: bool) -> Result<Operation> {
    let req = RescueRequest { schema: p.schema.clone(), table: p.table.clone(), interval, dry_run };
    let target = format!("{}.{}", p.schema, p.table);
    let (row, runner) = operation::begin(ctx, OperationKind::Rescue, format!("rescue:{target}"), target, &req).await?;
    let op = Operation::from(row.clone());
    operation::drive(ctx, row, runner, rescue_work);
    Ok(op)
}

/// Runs (or continues) the rescue held by `h`: one period per transaction, each recorded as an
/// item with its rows once moved (moved rows leave the default partition, so a continuation finds
/// only what is left).
pub async fn rescue_work(h: Handle) -> Result<()> {
    let ctx = &h.ctx;
    let req: RescueRequest = h.request()?;
    let mut prog: RescueProgress = h.progress();
    let p = resolve_time(ctx, &req.schema, &req.table, "RescueDefaultRows").await?;
    let interval = req.interval;
    let parts = list(ctx, &p).await?;
    let Some(def) = parts.iter().find(|x| x.is_default).cloned() else {
        return h.step("no default partition", 0, 0, &prog, &[]).await;
    };
    // Scans, counts and moves as long as the default partition is big: a session of its own,
    // with the maintenance timeout rather than the pooled one.
    let mut conn = ctx.db.long_work(ctx.config.maintenance_timeout).await?;
    h.step("finding the periods of the default partition's rows", 0, 0, &prog, &[]).await?;
    let periods: Vec<i64> = store::periods(&mut conn, &p, &def.name, interval)
        .await?
        .into_iter()
        .filter(|m| prog.after.is_none_or(|a| *m > a))
        .collect();
    // Counted before anything moves, so that an operation cancelled or failed part-way reports
    // what it left (a dry run moves nothing: what it would leave).
    prog.rows_left = store::count_rows(&mut conn, &p, &def.name, None).await?;
    let total = prog.partitions_created + periods.len() as i64;
    for micros in periods {
        let Some(from) = DateTime::from_timestamp_micros(micros).map(|x| x.date_naive()) else { continue };
        let to = interval.next(from);
        if overlaps(&parts, at(from), at(to)) {
            continue;
        }
        let name = format!("{}_p{}", p.table, interval.suffix(from));
        h.step(&format!("moving rows into {name}"), prog.partitions_created, total, &prog, &[]).await?;
        let n = store::count_rows(&mut conn, &p, &def.name, Some((from, to))).await?;
        if !req.dry_run {
            let new = NewPartition { name: name.clone(), from, to };
            store::rescue_rows(&mut conn, &p, &def.name, &new).await.map_err(|e| ddl_error(&name, e))?;
            tracing::info!(partition = %name, rows = n, "rescued default-partition rows");
        }
        prog.after = Some(micros);
        prog.rows_moved += n;
        prog.rows_left -= n;
        prog.partitions_created += 1;
        let detail = serde_json::to_string(&RescuedRows { rows: n }).expect("serializes");
        let item = NewItem { kind: ItemKind::Partition, value: name, detail };
        h.step("moved", prog.partitions_created, total, &prog, &[item]).await?;
    }
    if !req.dry_run {
        prog.rows_left = store::count_rows(&mut conn, &p, &def.name, None).await?;
    }
    h.step("done", prog.partitions_created, total, &prog, &[]).await
}

/// Rows of a rescued partition as recorded in its operation item.
pub fn rescued_rows(item: &Item) -> Option<i64> {
    (item.kind == ItemKind::Partition)
        .then(|| serde_json::from_str::<RescuedRows>(&item.detail).ok().map(|d| d.rows))
        .flatten()
}

/// The detail of a rescued partition's item.
#[derive(Serialize, Deserialize)]
struct RescuedRows {
    rows: i64,
}
