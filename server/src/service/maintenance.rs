//! Vacuum / analyze on demand, and recommendations drawn from the statistics views.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    Context, Error, Result,
    operation::{self, Handle, Item, ItemKind, NewItem, Operation, OperationKind},
};
use crate::db::{self, maintenance as store};

/// One table's maintenance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableResult {
    /// Schema.
    pub schema: String,
    /// Table (the file on SQLite).
    pub table: String,
    /// Size before.
    pub size_before: i64,
    /// Size after.
    pub size_after: i64,
    /// Dead rows before.
    pub dead_rows_before: i64,
    /// Time taken.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// What RunMaintenance was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    /// Tables (schema, table); empty: every user table.
    pub tables: Vec<(String, String)>,
    /// VACUUM FULL.
    pub full: bool,
    /// ANALYZE too.
    pub analyze: bool,
    /// Purge and retention runs first.
    pub emergency: bool,
}

/// Counters of a maintenance operation, and the table it reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MaintenanceProgress {
    /// Every table up to this one (schema, table, in that order) is done.
    pub after: Option<(String, String)>,
    /// Tables done.
    pub tables_done: i64,
    /// Sum of the bytes given back.
    pub reclaimed_bytes: i64,
    /// The emergency runs were started.
    pub emergency_done: bool,
}

/// A table's figures as recorded in its operation item.
pub fn table_of(item: &Item) -> Option<TableResult> {
    (item.kind == ItemKind::Table).then(|| serde_json::from_str(&item.detail).ok()).flatten()
}

/// Emergency mode: starts every purge policy's run and every archive policy's retention now.
/// Returns (run ids started, "policy: reason" for those that could not start).
pub async fn emergency(ctx: &Context) -> Result<(Vec<String>, Vec<String>)> {
    use super::archive::{self, Mode};
    let (mut started, mut skipped) = (Vec::new(), Vec::new());
    for p in archive::list_policies(ctx).await? {
        let r = match (p.spec.mode, p.spec.delete_after) {
            (Mode::Purge, _) => archive::run(ctx, &p.id).await,
            (Mode::Archive, Some(_)) => archive::apply_retention(ctx, &p.id).await,
            (Mode::Archive, None) => continue,
        };
        match r {
            Ok(run) => started.push(run.id),
            Err(e) => skipped.push(format!("{}: {e}", p.spec.name)),
        }
    }
    tracing::warn!(
        started = started.len(),
        skipped = skipped.len(),
        "emergency maintenance: purge and retention started"
    );
    Ok((started, skipped))
}

/// Parses `schema.table` or `table` (schema `public`).
pub fn parse_table(s: &str) -> Result<(String, String)> {
    let (schema, table) = s.split_once('.').unwrap_or(("public", s));
    if table.is_empty() || schema.is_empty() || s.len() > 127 || s.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!("table {s:?} is not schema.table or table")));
    }
    Ok((schema.to_owned(), table.to_owned()))
}

/// Starts maintenance as an operation (one at a time across the fleet) and returns it at once. The
/// tables named must exist.
pub async fn start(ctx: &Context, req: MaintenanceRequest) -> Result<Operation> {
    if ctx.db.backend() == db::BackendKind::Postgres && !req.tables.is_empty() {
        let found = store::pg_tables(&mut ctx.db.read_prefer_primary().await?.0, &req.tables).await?;
        missing_table(&req.tables, &found)?;
    }
    let target = match (ctx.db.backend(), req.tables.is_empty()) {
        (db::BackendKind::Sqlite, _) => ctx.db.sqlite_path().unwrap_or("the database file").to_owned(),
        (_, true) => "every user table".to_owned(),
        (_, false) => req.tables.iter().map(|(s, t)| format!("{s}.{t}")).collect::<Vec<_>>().join(", "),
    };
    let (row, runner) = operation::begin(ctx, OperationKind::Maintenance, "maintenance".into(), target, &req).await?;
    let op = Operation::from(row.clone());
    operation::drive(ctx, row, runner, work);
    Ok(op)
}

fn missing_table(asked: &[(String, String)], found: &[store::TableInfo]) -> Result<()> {
    match asked.iter().find(|(s, t)| !found.iter().any(|f| f.schema == *s && f.table == *t)) {
        Some((s, t)) => Err(Error::InvalidArgument(format!("table {s}.{t} does not exist"))),
        None => Ok(()),
    }
}

/// Runs (or continues) the maintenance held by `h`: the emergency runs once, then each table in
/// (schema, table) order after the last one recorded, each recorded as an item when done.
pub async fn work(h: Handle) -> Result<()> {
    let ctx = &h.ctx;
    let req: MaintenanceRequest = h.request()?;
    let mut p: MaintenanceProgress = h.progress();
    if req.emergency && !p.emergency_done {
        let (started, skipped) = emergency(ctx).await?;
        p.emergency_done = true;
        let items: Vec<NewItem> = started
            .into_iter()
            .map(|id| NewItem::new(ItemKind::StartedRun, id))
            .chain(skipped.into_iter().map(|s| NewItem::new(ItemKind::SkippedPolicy, s)))
            .collect();
        h.step("purge and retention runs started", 0, 0, &p, &items).await?;
    }
    let mut conn = ctx.db.long_work(ctx.config.maintenance_timeout).await?;
    if ctx.db.backend() == db::BackendKind::Sqlite {
        if p.tables_done == 0 {
            h.step("vacuum of the database file", 0, 1, &p, &[]).await?;
            let t = sqlite_vacuum(ctx, &mut conn, req.analyze).await?;
            done(&h, &mut p, 1, t).await?;
        }
        return Ok(());
    }
    let tables: Vec<store::TableInfo> = store::pg_tables(&mut conn, &req.tables)
        .await?
        .into_iter()
        .filter(|t| p.after.as_ref().is_none_or(|(s, n)| (&t.schema, &t.table) > (s, n)))
        .collect();
    let total = p.tables_done + tables.len() as i64;
    let pid = store::backend_pid(&mut conn).await?;
    for t in tables {
        h.step(&format!("vacuum {}.{}", t.schema, t.table), p.tables_done, total, &p, &[]).await?;
        let vacuum = vacuum_one(&mut conn, t, req.full, req.analyze);
        tokio::pin!(vacuum);
        let r = tokio::select! {
            r = &mut vacuum => r,
            _ = h.stop().cancelled() => {
                // Stop the statement now rather than when the table is done.
                if let Some(pid) = pid {
                    store::cancel_backend(&mut ctx.db.write().await?, pid).await?;
                }
                vacuum.await
            }
        };
        h.check()?;
        done(&h, &mut p, total, r?).await?;
    }
    Ok(())
}

async fn done(h: &Handle, p: &mut MaintenanceProgress, total: i64, t: TableResult) -> Result<()> {
    p.after = Some((t.schema.clone(), t.table.clone()));
    p.tables_done += 1;
    p.reclaimed_bytes += (t.size_before - t.size_after).max(0);
    let item = NewItem {
        kind: ItemKind::Table,
        value: if t.schema.is_empty() { t.table.clone() } else { format!("{}.{}", t.schema, t.table) },
        detail: serde_json::to_string(&t).expect("serializes"),
    };
    h.step("vacuumed", p.tables_done, total, p, &[item]).await
}

async fn sqlite_vacuum(ctx: &Context, conn: &mut db::Conn, analyze: bool) -> Result<TableResult> {
    let started = Instant::now();
    let before = store::sqlite_size(conn).await?;
    store::sqlite_vacuum(conn, analyze).await?;
    let after = store::sqlite_size(conn).await?;
    // SQLite vacuums the whole file: the "table" is the database file itself.
    Ok(TableResult {
        schema: String::new(),
        table: ctx.db.sqlite_path().unwrap_or("").into(),
        size_before: before,
        size_after: after,
        dead_rows_before: 0,
        duration: started.elapsed(),
    })
}

async fn vacuum_one(conn: &mut db::Conn, t: store::TableInfo, full: bool, analyze: bool) -> Result<TableResult> {
    let started = Instant::now();
    store::vacuum(conn, &t, full, analyze).await?;
    let after = store::pg_size(conn, &t).await?;
    tracing::info!(table = %format!("{}.{}", t.schema, t.table), before = t.size, after, "vacuumed");
    Ok(TableResult {
        schema: t.schema,
        table: t.table,
        size_before: t.size,
        size_after: after,
        dead_rows_before: t.dead_rows,
        duration: started.elapsed(),
    })
}

/// Vacuums (and analyzes) the tables — all user tables when `tables` is empty — on a session of
/// its own whose statements may run for `timeout` (None: the `maintenance_timeout` setting), not
/// the pooled `statement_timeout`: a big table's VACUUM takes as long as it takes. The scheduler's
/// maintenance job calls this (its job run is the record); RunMaintenance starts an operation.
pub async fn run(
    ctx: &Context,
    tables: &[(String, String)],
    full: bool,
    analyze: bool,
    timeout: Option<Duration>,
) -> Result<Vec<TableResult>> {
    let mut conn = ctx.db.long_work(timeout.unwrap_or(ctx.config.maintenance_timeout)).await?;
    if ctx.db.backend() == db::BackendKind::Sqlite {
        return Ok(vec![sqlite_vacuum(ctx, &mut conn, analyze).await?]);
    }
    let found = store::pg_tables(&mut conn, tables).await?;
    missing_table(tables, &found)?;
    let mut out = Vec::new();
    for t in found {
        out.push(vacuum_one(&mut conn, t, full, analyze).await?);
    }
    Ok(out)
}

/// What a recommendation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Mostly sequential scans on a large table.
    IndexCandidate,
    /// Unused index.
    UnusedIndex,
    /// Dead-row bloat.
    Vacuum,
    /// Large table with no partitioning or policy.
    ArchiveOrPartition,
    /// Replica lag.
    ReplicaLag,
    /// Pool waits or timeouts.
    PoolSaturation,
}

/// One piece of advice with its evidence.
#[derive(Debug, Clone)]
pub struct Recommendation {
    /// Kind.
    pub kind: Kind,
    /// What it concerns.
    pub target: String,
    /// The advice.
    pub message: String,
    /// The numbers behind it.
    pub evidence: BTreeMap<String, String>,
}

fn evidence<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Advice from the statistics views, the node health and the pools.
pub async fn recommendations(ctx: &Context, large_table_bytes: i64, min_rows: i64) -> Result<Vec<Recommendation>> {
    let mut out = Vec::new();
    let (mut conn, _) = ctx.db.read_prefer_primary().await?;
    let tables = store::scan_stats(&mut conn).await?;
    let policies = db::archive::list_policies(&mut conn).await?;
    for t in &tables {
        let name = format!("{}.{}", t.schema, t.table);
        // Mostly sequential scans over many rows: each reads the whole table.
        if t.live_rows >= min_rows && t.seq_scan >= 10 && t.seq_scan > 2 * t.idx_scan {
            out.push(Recommendation {
                kind: Kind::IndexCandidate,
                target: name.clone(),
                message: format!(
                    "{name} is read by sequential scans {} times against {} index scans, {} rows each: index the columns its queries filter on",
                    t.seq_scan, t.idx_scan, t.live_rows
                ),
                evidence: evidence([
                    ("seq_scan", t.seq_scan.to_string()),
                    ("idx_scan", t.idx_scan.to_string()),
                    ("seq_tup_read", t.seq_tup_read.to_string()),
                    ("live_rows", t.live_rows.to_string()),
                ]),
            });
        }
        if t.dead_rows >= 1000 && t.dead_rows * 5 > t.live_rows {
            out.push(Recommendation {
                kind: Kind::Vacuum,
                target: name.clone(),
                message: format!("{name} has {} dead rows for {} live ones: VACUUM it", t.dead_rows, t.live_rows),
                evidence: evidence([("dead_rows", t.dead_rows.to_string()), ("live_rows", t.live_rows.to_string())]),
            });
        }
        let has_policy = policies.iter().any(|p| p.schema_name == t.schema && p.table_name == t.table);
        if t.size >= large_table_bytes && !t.partitioned && !has_policy {
            out.push(Recommendation {
                kind: Kind::ArchiveOrPartition,
                target: name.clone(),
                message: format!(
                    "{name} holds {} bytes with neither partitioning nor an archive policy: archive or partition its old rows",
                    t.size
                ),
                evidence: evidence([("total_size_bytes", t.size.to_string()), ("live_rows", t.live_rows.to_string())]),
            });
        }
    }
    for i in store::unused_indexes(&mut conn).await? {
        out.push(Recommendation {
            kind: Kind::UnusedIndex,
            target: format!("{}.{}", i.schema, i.index),
            message: format!(
                "index {}.{} on {} has never been scanned since statistics were reset: consider dropping it",
                i.schema, i.index, i.table
            ),
            evidence: evidence([("idx_scan", "0".into()), ("size_bytes", i.size.to_string()), ("table", i.table)]),
        });
    }
    drop(conn);
    for n in ctx.db.nodes() {
        if let Some(lag) = n.health.lag
            && lag > ctx.db.settings().max_replica_lag / 2
        {
            out.push(Recommendation {
                kind: Kind::ReplicaLag,
                target: n.name.clone(),
                message: format!("{} lags {:.1} s behind the primary", n.name, lag.as_secs_f64()),
                evidence: evidence([
                    ("lag_seconds", format!("{:.3}", lag.as_secs_f64())),
                    ("max_replica_lag_seconds", format!("{:.3}", ctx.db.settings().max_replica_lag.as_secs_f64())),
                ]),
            });
        }
    }
    for p in ctx.db.pool_stats() {
        let total = p.gets_direct + p.gets_waited;
        if p.gets_timed_out > 0 || (total >= 100 && p.gets_waited * 5 > total) {
            out.push(Recommendation {
                kind: Kind::PoolSaturation,
                target: p.name.clone(),
                message: format!(
                    "pool {}: {} of {} checkouts waited and {} timed out: raise pool_max_size or find slow queries",
                    p.name, p.gets_waited, total, p.gets_timed_out
                ),
                evidence: evidence([
                    ("gets_waited", p.gets_waited.to_string()),
                    ("gets_timed_out", p.gets_timed_out.to_string()),
                    ("max_size", p.max_size.to_string()),
                ]),
            });
        }
    }
    out.sort_by_key(|r| r.kind);
    Ok(out)
}
