//! Partition upkeep for time-range-partitioned PostgreSQL tables: premake, health, dropping whole
//! old partitions, rescuing rows from the default partition.

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};

use super::{Context, Error, Result, ident};
use crate::db::{
    self,
    partitions::{self as store, PartitionRow},
    quote,
};

/// Length of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    /// One UTC day.
    Daily,
    /// One UTC calendar month.
    Monthly,
}

impl Interval {
    fn start_of(self, t: DateTime<Utc>) -> NaiveDate {
        let d = t.date_naive();
        match self {
            Interval::Daily => d,
            Interval::Monthly => d.with_day(1).expect("day 1 exists"),
        }
    }
    fn next(self, d: NaiveDate) -> NaiveDate {
        match self {
            Interval::Daily => d.succ_opt().expect("in range"),
            Interval::Monthly => d + Months::new(1),
        }
    }
    fn prev(self, d: NaiveDate) -> NaiveDate {
        match self {
            Interval::Daily => d.pred_opt().expect("in range"),
            Interval::Monthly => d - Months::new(1),
        }
    }
    fn suffix(self, d: NaiveDate) -> String {
        match self {
            Interval::Daily => d.format("%Y%m%d").to_string(),
            Interval::Monthly => d.format("%Y%m").to_string(),
        }
    }
    fn unit(self) -> &'static str {
        match self {
            Interval::Daily => "day",
            Interval::Monthly => "month",
        }
    }
}

/// A partitioned table, resolved.
#[derive(Debug, Clone)]
pub struct Parent {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Partition key column.
    pub key: String,
    /// Its SQL type.
    pub key_type: String,
}

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

/// Checks the table is range-partitioned on one time column.
pub async fn resolve(ctx: &Context, schema: &str, table: &str) -> Result<Parent> {
    if ctx.db.backend() != db::BackendKind::Postgres {
        return Err(Error::FailedPrecondition(
            "partition upkeep needs PostgreSQL: SQLite has no table partitioning (use an archive policy instead)"
                .into(),
        ));
    }
    let schema = if schema.is_empty() { "public" } else { schema };
    ident("schema", schema)?;
    ident("table", table)?;
    // Partition names append `_pYYYYMMDD` (10 bytes) and must stay within 63 bytes.
    if table.len() > 53 {
        return Err(Error::InvalidArgument(format!(
            "table name {table:?} is too long for partition names (max 53 bytes)"
        )));
    }
    let mut conn = ctx.db.write().await?;
    let Some((key, key_type)) = store::partition_key(&mut conn, schema, table).await? else {
        return Err(if store::table_exists(&mut conn, schema, table).await? {
            Error::FailedPrecondition(format!("{schema}.{table} is not range-partitioned on one column"))
        } else {
            Error::InvalidArgument(format!("table {schema}.{table} does not exist"))
        });
    };
    if !matches!(key_type.as_str(), "timestamp with time zone" | "timestamp without time zone" | "date") {
        return Err(Error::FailedPrecondition(format!(
            "{schema}.{table} is partitioned on {key} of type {key_type}; expected a timestamp or date"
        )));
    }
    Ok(Parent { schema: schema.into(), table: table.into(), key, key_type })
}

fn literal(p: &Parent, d: NaiveDate) -> String {
    match p.key_type.as_str() {
        "timestamp with time zone" => format!("'{} 00:00:00+00'", d.format("%Y-%m-%d")),
        "timestamp without time zone" => format!("'{} 00:00:00'", d.format("%Y-%m-%d")),
        _ => format!("'{}'", d.format("%Y-%m-%d")),
    }
}

fn at(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

/// The table's partitions, with bounds.
pub async fn list(ctx: &Context, p: &Parent) -> Result<Vec<Partition>> {
    let mut conn = ctx.db.write().await?;
    Ok(store::partitions(&mut conn, &p.schema, &p.table).await?.into_iter().map(Partition::from).collect())
}

fn create_sql(p: &Parent, name: &str, from: NaiveDate, to: NaiveDate) -> String {
    format!(
        "CREATE TABLE {s}.{n} PARTITION OF {s}.{t} FOR VALUES FROM ({a}) TO ({b})",
        s = quote(&p.schema),
        n = quote(name),
        t = quote(&p.table),
        a = literal(p, from),
        b = literal(p, to)
    )
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
    let mut start = interval.start_of(Utc::now());
    for _ in 0..past {
        start = interval.prev(start);
    }
    let mut created_names = Vec::new();
    let mut statements = Vec::new();
    let mut skipped = 0;
    let mut d = start;
    for _ in 0..=(past + ahead) {
        let next = interval.next(d);
        if overlaps(&existing, at(d), at(next)) {
            skipped += 1;
        } else {
            let name = format!("{}_p{}", p.table, interval.suffix(d));
            statements.push(create_sql(p, &name, d, next));
            created_names.push(name);
        }
        d = next;
    }
    if !statements.is_empty() {
        // All of them in one transaction: the parent's lock is taken once, and either every missing
        // partition appears or none does.
        let mut conn = ctx.db.write().await?;
        store::ddl(&mut conn, &statements.join(";\n")).await.map_err(|e| ddl_error(&created_names.join(", "), e))?;
    }
    let now = list(ctx, p).await?;
    let created = now.into_iter().filter(|x| created_names.contains(&x.name)).collect();
    Ok((created, skipped))
}

/// Turns a DDL failure into an error the caller can act on.
pub fn ddl_error(what: &str, e: db::Error) -> Error {
    let msg = e.to_string();
    if msg.contains("lock timeout") {
        Error::Unavailable(format!(
            "{what}: the table is busy (lock not granted within {}); retry",
            store::DDL_LOCK_TIMEOUT
        ))
    } else if msg.contains("default partition") {
        Error::FailedPrecondition(format!(
            "{what}: rows for this range are in the default partition; rescue them first ({msg})"
        ))
    } else {
        Error::Db(e)
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
        Some(d) => store::count_rows(&mut ctx.db.write().await?, &p.schema, &d.name, "").await?,
        None => 0,
    };
    let newest = ranges.iter().filter_map(|x| x.end).max();
    let coverage_ahead = newest.map(|e| (e - Utc::now()).to_std().unwrap_or_default()).unwrap_or_default();
    Ok(Health { parent: p, partitions, gaps, default_rows, coverage_ahead })
}

/// Drops partitions entirely older than `now - older_than`, in one transaction.
pub async fn drop_old(
    ctx: &Context,
    p: &Parent,
    older_than: std::time::Duration,
    dry_run: bool,
) -> Result<Vec<Partition>> {
    let cutoff = Utc::now()
        - chrono::Duration::from_std(older_than).map_err(|_| Error::InvalidArgument("older_than too large".into()))?;
    let due: Vec<Partition> =
        list(ctx, p).await?.into_iter().filter(|x| !x.is_default && x.end.is_some_and(|e| e <= cutoff)).collect();
    if !dry_run && !due.is_empty() {
        // One transaction (DROP detaches and removes in one step): all due partitions go, or none.
        let names: Vec<String> = due.iter().map(|x| format!("{}.{}", quote(&p.schema), quote(&x.name))).collect();
        let mut conn = ctx.db.write().await?;
        store::ddl(&mut conn, &format!("DROP TABLE {}", names.join(", ")))
            .await
            .map_err(|e| ddl_error(&names.join(", "), e))?;
        tracing::info!(partitions = due.len(), "dropped partitions");
    }
    Ok(due)
}

/// Moves default-partition rows into partitions of `interval`, one period per transaction.
/// Returns (rows moved, partitions created, rows left).
pub async fn rescue(ctx: &Context, p: &Parent, interval: Interval, dry_run: bool) -> Result<(i64, Vec<String>, i64)> {
    let parts = list(ctx, p).await?;
    let Some(def) = parts.iter().find(|x| x.is_default).cloned() else {
        return Ok((0, Vec::new(), 0));
    };
    let mut conn = ctx.db.write().await?;
    let periods = store::periods(&mut conn, &p.schema, &def.name, &p.key, &p.key_type, interval.unit()).await?;
    drop(conn);
    let (s, k, d, t) = (quote(&p.schema), quote(&p.key), quote(&def.name), quote(&p.table));
    let mut moved = 0;
    let mut created = Vec::new();
    for micros in periods {
        let Some(from) = DateTime::from_timestamp_micros(micros).map(|x| x.date_naive()) else { continue };
        let to = interval.next(from);
        if overlaps(&parts, at(from), at(to)) {
            continue;
        }
        let range = format!("WHERE {k} >= {} AND {k} < {}", literal(p, from), literal(p, to));
        let n = store::count_rows(&mut ctx.db.write().await?, &p.schema, &def.name, &range).await?;
        let name = format!("{}_p{}", p.table, interval.suffix(from));
        if !dry_run {
            let tmp = quote(&format!("strata_rescue_{}", interval.suffix(from)));
            // One transaction: rows leave the default partition, the partition appears, the rows
            // come back through the parent into it. A crash rolls all of it back.
            let sql = format!(
                "CREATE TEMP TABLE {tmp} ON COMMIT DROP AS WITH moved AS (DELETE FROM {s}.{d} {range} RETURNING *) SELECT * FROM moved;
                 {create};
                 INSERT INTO {s}.{t} SELECT * FROM {tmp}",
                create = create_sql(p, &name, from, to)
            );
            store::ddl(&mut ctx.db.write().await?, &sql).await.map_err(|e| ddl_error(&name, e))?;
            tracing::info!(partition = %name, rows = n, "rescued default-partition rows");
        }
        moved += n;
        created.push(name);
    }
    let left =
        if dry_run { 0 } else { store::count_rows(&mut ctx.db.write().await?, &p.schema, &def.name, "").await? };
    Ok((moved, created, left))
}
