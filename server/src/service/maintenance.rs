//! Vacuum / analyze on demand, and recommendations drawn from the statistics views.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{Context, Error, Result};
use crate::db::{self, maintenance as store};

/// One table's maintenance.
#[derive(Debug, Clone)]
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
    pub duration: Duration,
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

/// Vacuums (and analyzes) the tables — all user tables when `tables` is empty — on a session of
/// its own whose statements may run for `timeout` (None: the `maintenance_timeout` setting), not
/// the pooled `statement_timeout`: a big table's VACUUM takes as long as it takes.
pub async fn run(
    ctx: &Context,
    tables: &[(String, String)],
    full: bool,
    analyze: bool,
    timeout: Option<Duration>,
) -> Result<Vec<TableResult>> {
    let mut conn = ctx.db.long_work(timeout.unwrap_or(ctx.config.maintenance_timeout)).await?;
    if ctx.db.backend() == db::BackendKind::Sqlite {
        let started = Instant::now();
        let before = store::sqlite_size(&mut conn).await?;
        store::sqlite_vacuum(&mut conn, analyze).await?;
        let after = store::sqlite_size(&mut conn).await?;
        // SQLite vacuums the whole file: the "table" is the database file itself.
        return Ok(vec![TableResult {
            schema: String::new(),
            table: ctx.db.sqlite_path().unwrap_or("").into(),
            size_before: before,
            size_after: after,
            dead_rows_before: 0,
            duration: started.elapsed(),
        }]);
    }
    let found = store::pg_tables(&mut conn, tables).await?;
    if let Some((s, t)) = tables.iter().find(|(s, t)| !found.iter().any(|f| f.schema == *s && f.table == *t)) {
        return Err(Error::InvalidArgument(format!("table {s}.{t} does not exist")));
    }
    let mut out = Vec::new();
    for t in found {
        let started = Instant::now();
        store::vacuum(&mut conn, &t, full, analyze).await?;
        let after = store::pg_size(&mut conn, &t).await?;
        tracing::info!(table = %format!("{}.{}", t.schema, t.table), before = t.size, after, "vacuumed");
        out.push(TableResult {
            schema: t.schema,
            table: t.table,
            size_before: t.size,
            size_after: after,
            dead_rows_before: t.dead_rows,
            duration: started.elapsed(),
        });
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
