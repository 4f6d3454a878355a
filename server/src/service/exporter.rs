//! What `/metrics` exports besides the events counted where they happen, into the gauges of
//! [`crate::telemetry::Metrics`]:
//! - at each scrape, from memory ([`pools`]): the pools and the database nodes (occupancy,
//!   probes, lag, routing);
//! - every [`CATALOG_EVERY`], by a background loop ([`refresh_catalog`], run by `jobs`): the
//!   newest storage snapshot (the `metrics_max_tables` largest tables), growth and the days until
//!   the disk is full, alerts by severity and state, the health score, the newest successful
//!   backup, and how late each enabled job's next occurrence is. A scrape never waits for the
//!   database (Prometheus gives up on a slow target and marks its series stale), and several
//!   instances scraped every few seconds would otherwise read the same catalog over and over.

use std::time::Duration;

use super::{
    Context, Result,
    alerts::{self, AlertFilter, AlertState, Severity},
    backup, metrics, scheduler,
};
use crate::{
    db::{Role, snapshots},
    model::backup::BackupState,
    telemetry::metrics::{AlertLabels, JobLabels, NodeLabels, TableLabels, catch_up, no_labels},
};

/// How often the catalog's figures are read.
pub const CATALOG_EVERY: Duration = Duration::from_secs(5);

/// How long one reading of the catalog may take before it is given up (the last figures stay):
/// a few of its periods, so that a reading stuck behind a lock holds a pooled connection briefly.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(10);

fn node(name: &str, role: Role) -> NodeLabels {
    NodeLabels { node: name.to_owned(), role: role.as_str() }
}

/// Pools and nodes, from memory: called by each scrape.
pub fn pools(ctx: &Context) {
    let p = &ctx.metrics.pools;
    for s in ctx.db.pool_stats() {
        let l = node(&s.name, s.role);
        p.max.get_or_create(&l).set(i64::from(s.max_size));
        p.connections.get_or_create(&l).set(i64::from(s.connections));
        p.idle.get_or_create(&l).set(i64::from(s.idle));
        p.in_use.get_or_create(&l).set(i64::from(s.connections.saturating_sub(s.idle)));
        catch_up(&p.waits.get_or_create(&l), s.gets_waited);
        catch_up(&p.timeouts.get_or_create(&l), s.gets_timed_out);
    }
    for n in ctx.db.nodes() {
        let l = node(&n.name, n.role);
        p.up.get_or_create(&l).set(i64::from(n.health.healthy));
        p.serving_reads.get_or_create(&l).set(i64::from(n.serving_reads));
        if n.role == Role::Replica {
            match n.health.lag {
                Some(lag) => {
                    p.replica_lag.get_or_create(&l).set(lag.as_secs_f64());
                }
                None => {
                    p.replica_lag.remove(&l);
                }
            }
        }
    }
    catch_up(&p.replica_fallbacks, ctx.db.replica_fallbacks());
    catch_up(&p.point_read_fallbacks, ctx.db.point_read_fallbacks());
}

/// `schema.table` on PostgreSQL, the table's name on SQLite.
fn table_label(schema: &str, table: &str) -> String {
    if schema.is_empty() || schema == "main" { table.to_owned() } else { format!("{schema}.{table}") }
}

/// What the catalog says, read before any gauge changes.
struct Figures {
    snapshot: Option<(snapshots::SnapshotRow, Vec<snapshots::LatestTable>, i64)>,
    growth_bytes_per_day: f64,
    health_score: u32,
    days_until_full: Option<f64>,
    open_alerts: Vec<(Severity, AlertState)>,
    last_backup: Option<(f64, i64)>,
    job_lag: Vec<(String, f64)>,
}

/// Reads the catalog's figures and sets their gauges; on failure (or after [`CATALOG_TIMEOUT`])
/// the gauges keep their last values and `strata_metrics_catalog_errors_total` counts it.
pub async fn refresh_catalog(ctx: &Context) {
    match tokio::time::timeout(CATALOG_TIMEOUT, read(ctx)).await {
        Ok(Ok(figures)) => apply(ctx, figures),
        Ok(Err(e)) => {
            ctx.metrics.scrape_errors.inc();
            tracing::debug!(error = %e, "metrics: reading the catalog failed; the last figures stay");
        }
        Err(_) => {
            ctx.metrics.scrape_errors.inc();
            tracing::debug!("metrics: the catalog did not answer within {CATALOG_TIMEOUT:?}; the last figures stay");
        }
    }
}

async fn read(ctx: &Context) -> Result<Figures> {
    let limit = i64::try_from(ctx.config.metrics_max_tables).unwrap_or(i64::MAX);
    let snapshot = {
        let (mut conn, _) = ctx.db.read().await?;
        snapshots::latest(&mut conn, limit).await?
    };
    let growth = metrics::growth(
        ctx,
        &metrics::GrowthQuery { window: metrics::Window::Day, target_size_bytes: None, prefix: Default::default() },
    )
    .await?;
    let health = alerts::health_report(ctx).await?;
    let states = vec![AlertState::Pending, AlertState::Firing, AlertState::Acknowledged];
    let (open, _) = alerts::list_alerts(ctx, &AlertFilter { states, ..Default::default() }, 10_000, None).await?;
    let (backups, _) = backup::list(ctx, 100, None).await?;
    let last_backup = backups.iter().find(|b| b.state == BackupState::Succeeded).map(|b| {
        let at = b.finished_at.unwrap_or(b.started_at);
        (at.timestamp_micros() as f64 / 1e6, b.size_bytes)
    });
    let now = ctx.now();
    let job_lag = scheduler::list_jobs(ctx)
        .await?
        .into_iter()
        .filter_map(|job| match (job.spec.enabled, job.next_due) {
            (true, Some(due)) => Some((job.spec.name, (now - due).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6)),
            _ => None,
        })
        .collect();
    Ok(Figures {
        snapshot,
        growth_bytes_per_day: growth.database.bytes_per_day,
        health_score: health.score,
        days_until_full: health.days_until_full,
        open_alerts: open.iter().map(|a| (a.severity, a.state)).collect(),
        last_backup,
        job_lag,
    })
}

/// Sets the gauges at once, holding the metrics' lock: a scrape never sees half of them.
fn apply(ctx: &Context, f: Figures) {
    let m = &ctx.metrics;
    let _exclusive = m.exclusive();
    let s = &m.storage;
    s.table_bytes.clear();
    s.table_rows.clear();
    s.table_dead_rows.clear();
    if let Some((snap, tables, count)) = f.snapshot {
        s.database_bytes.set(snap.database_size_bytes);
        s.snapshot_time.set(snap.taken_at.and_utc().timestamp_micros() as f64 / 1e6);
        for t in &tables {
            let l = TableLabels { table: table_label(&t.schema_name, &t.table_name) };
            s.table_bytes.get_or_create(&l).set(t.total_size_bytes);
            s.table_rows.get_or_create(&l).set(t.estimated_rows);
            if let Some(dead) = t.dead_rows {
                s.table_dead_rows.get_or_create(&l).set(dead);
            }
        }
        s.tables_omitted.set(count.saturating_sub(tables.len() as i64));
    }
    s.growth_bytes_per_day.set(f.growth_bytes_per_day);
    s.until_full.clear();
    if let Some(days) = f.days_until_full {
        s.until_full.get_or_create(&no_labels()).set(days * 86_400.0);
    }
    m.alerts.health_score.set(i64::from(f.health_score));
    for severity in [Severity::Warning, Severity::Critical] {
        for state in [AlertState::Pending, AlertState::Firing, AlertState::Acknowledged] {
            let n = f.open_alerts.iter().filter(|a| **a == (severity, state)).count();
            let l = AlertLabels { severity: severity.as_str(), state: state.as_str() };
            m.alerts.alerts.get_or_create(&l).set(n as i64);
        }
    }
    m.backups.last_success_time.clear();
    m.backups.last_success_bytes.clear();
    if let Some((at, bytes)) = f.last_backup {
        m.backups.last_success_time.get_or_create(&no_labels()).set(at);
        m.backups.last_success_bytes.get_or_create(&no_labels()).set(bytes);
    }
    let lag = &m.scheduler.next_due_lag;
    lag.clear();
    for (job_name, late) in f.job_lag {
        lag.get_or_create(&JobLabels { job_name }).set(late);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_are_named_with_their_schema_on_postgresql() {
        assert_eq!(super::table_label("public", "messages"), "public.messages");
        assert_eq!(super::table_label("main", "messages"), "messages");
        assert_eq!(super::table_label("", "messages"), "messages");
    }
}
