//! Storage metrics: current figures, stored snapshots, growth trends and forecasts.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

use super::{Context, Error, Result};
use crate::db::{
    BackendKind, PoolStats, Role,
    snapshots::{self, SnapshotRow},
    stats,
};
pub use crate::model::stats::{DatabaseStats, TableStats};

/// Longest table-name prefix accepted as a filter (PostgreSQL identifiers are at most 63 bytes).
const MAX_PREFIX_LEN: usize = 128;

/// A validated table-name prefix filter.
#[derive(Debug, Clone, Default)]
pub struct TablePrefix(String);

impl TablePrefix {
    /// Validates a client-supplied prefix (empty: every table).
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.len() > MAX_PREFIX_LEN {
            return Err(Error::InvalidArgument(format!("table_name_prefix is longer than {MAX_PREFIX_LEN} bytes")));
        }
        if raw.chars().any(|c| c.is_control()) {
            return Err(Error::InvalidArgument("table_name_prefix contains control characters".into()));
        }
        Ok(Self(raw.to_owned()))
    }
}

/// Replica lag as seen by the monitor.
#[derive(Debug, Clone)]
pub struct ReplicaLag {
    /// Replica name.
    pub name: String,
    /// Healthy at the last probe.
    pub healthy: bool,
    /// Lag, when known.
    pub lag: Option<Duration>,
}

/// What `GetStorageMetrics` returns.
#[derive(Debug, Clone)]
pub struct StorageMetrics {
    /// Backend.
    pub backend: BackendKind,
    /// Database figures and tables.
    pub stats: DatabaseStats,
    /// Pools.
    pub pools: Vec<PoolStats>,
    /// Replica lag.
    pub replicas: Vec<ReplicaLag>,
    /// When collected.
    pub collected_at: DateTime<Utc>,
    /// Node that answered.
    pub served_by: Role,
}

/// Reads current figures. They come from the primary when it is up: sizes replicate to standbys,
/// but dead-row, vacuum and scan statistics are kept per node, so a replica's would be wrong.
pub async fn storage_metrics(ctx: &Context, prefix: &TablePrefix) -> Result<StorageMetrics> {
    let (mut conn, served_by) = ctx.db.read_prefer_primary().await?;
    let stats = stats::database_stats(&mut conn, ctx.db.sqlite_path(), &prefix.0).await?;
    drop(conn);
    let replicas = ctx
        .db
        .nodes()
        .into_iter()
        .filter(|n| n.role == Role::Replica)
        .map(|n| ReplicaLag { name: n.name, healthy: n.health.healthy, lag: n.health.lag })
        .collect();
    Ok(StorageMetrics {
        backend: ctx.db.backend(),
        stats,
        pools: ctx.db.pool_stats(),
        replicas,
        collected_at: ctx.now_utc(),
        served_by,
    })
}

/// A stored snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Id.
    pub id: i64,
    /// When taken.
    pub taken_at: DateTime<Utc>,
    /// Database size.
    pub database_size_bytes: i64,
    /// Tables captured.
    pub table_count: i64,
}

fn snapshot(row: SnapshotRow, table_count: i64) -> Snapshot {
    Snapshot { id: row.id, taken_at: row.taken_at.and_utc(), database_size_bytes: row.database_size_bytes, table_count }
}

/// Reads figures from the primary and stores them as a snapshot (one transaction).
pub async fn record_snapshot(ctx: &Context) -> Result<Snapshot> {
    let mut conn = ctx.db.write().await?;
    let stats = stats::database_stats(&mut conn, ctx.db.sqlite_path(), "").await?;
    let now = ctx.now_utc();
    // Truncate to microseconds: PostgreSQL stores no finer, and the response must equal what is stored.
    let taken_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now).naive_utc();
    let id = snapshots::insert(&mut conn, taken_at, stats.size_bytes, &stats.tables).await?;
    Ok(Snapshot {
        id,
        taken_at: taken_at.and_utc(),
        database_size_bytes: stats.size_bytes,
        table_count: stats.tables.len() as i64,
    })
}

/// Default and largest page of `ListSnapshots`.
const DEFAULT_PAGE_SIZE: i64 = 100;
const MAX_PAGE_SIZE: i64 = 1000;

/// A page request, validated.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    size: i64,
    before_id: Option<i64>,
}

impl PageRequest {
    /// Validates `page_size` (0: default) and `page_token` (empty: first page).
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                return Err(Error::InvalidArgument("page_size must not be negative".into()));
            }
            n => i64::from(n).min(MAX_PAGE_SIZE),
        };
        let before_id = if page_token.is_empty() {
            None
        } else {
            // The token is the id to continue below; opaque to clients, validated here.
            Some(
                page_token
                    .strip_prefix("s")
                    .and_then(|t| t.parse::<i64>().ok())
                    .filter(|id| *id > 0)
                    .ok_or_else(|| Error::InvalidArgument("page_token is not one this server issued".into()))?,
            )
        };
        Ok(Self { size, before_id })
    }
}

/// Lists snapshots newest first; returns the page and the next token (empty when done).
pub async fn list_snapshots(ctx: &Context, page: PageRequest) -> Result<(Vec<Snapshot>, String)> {
    let (mut conn, _) = ctx.db.read().await?;
    // Fetch one extra row to know whether another page exists.
    let mut rows = snapshots::list(&mut conn, page.before_id, page.size + 1).await?;
    let more = rows.len() as i64 > page.size;
    rows.truncate(page.size as usize);
    let next = match (more, rows.last()) {
        (true, Some((last, _))) => format!("s{}", last.id),
        _ => String::new(),
    };
    Ok((rows.into_iter().map(|(r, n)| snapshot(r, n)).collect(), next))
}

/// The window fitted by `GetGrowth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// 24 hours.
    Day,
    /// 7 days.
    Week,
    /// 30 days.
    Month,
}

impl Window {
    /// Length of the window.
    pub fn length(self) -> Duration {
        const DAY: u64 = 86_400;
        Duration::from_secs(match self {
            Window::Day => DAY,
            Window::Week => 7 * DAY,
            Window::Month => 30 * DAY,
        })
    }
}

/// A validated `GetGrowth` request.
#[derive(Debug, Clone)]
pub struct GrowthQuery {
    /// Window.
    pub window: Window,
    /// Forecast target, if any.
    pub target_size_bytes: Option<i64>,
    /// Table filter.
    pub prefix: TablePrefix,
}

/// A fitted trend.
#[derive(Debug, Clone, PartialEq)]
pub struct Trend {
    /// Samples fitted.
    pub samples: usize,
    /// Newest size.
    pub current_size_bytes: i64,
    /// Newest rows.
    pub current_rows: i64,
    /// Bytes per day.
    pub bytes_per_day: f64,
    /// Rows per day.
    pub rows_per_day: f64,
    /// Days until the target.
    pub days_until_target: Option<f64>,
    /// Target already reached.
    pub target_reached: bool,
}

/// Growth of one table.
#[derive(Debug, Clone)]
pub struct TableGrowth {
    /// Schema.
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Trend.
    pub trend: Trend,
}

/// What `GetGrowth` returns.
#[derive(Debug, Clone)]
pub struct Growth {
    /// Window.
    pub window: Window,
    /// Window start.
    pub window_start: DateTime<Utc>,
    /// Database trend.
    pub database: Trend,
    /// Table trends, fastest growing first.
    pub tables: Vec<TableGrowth>,
}

/// Least-squares slope of `y` over `x`; 0 when fewer than two distinct `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return 0.0;
    }
    points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx
}

/// (taken at, size bytes, rows) of one table or the database.
type Sample = (NaiveDateTime, i64, i64);

/// Fits sizes (and rows) sampled at `times` (oldest first) and forecasts `target`.
fn fit(samples: &[Sample], target: Option<i64>) -> Trend {
    let Some(&(t_last, size, rows)) = samples.last() else {
        return Trend {
            samples: 0,
            current_size_bytes: 0,
            current_rows: 0,
            bytes_per_day: 0.0,
            rows_per_day: 0.0,
            days_until_target: None,
            target_reached: false,
        };
    };
    // x in days relative to the newest sample keeps the numbers small and well conditioned.
    let day = |t: NaiveDateTime| (t - t_last).num_microseconds().unwrap_or(0) as f64 / 86_400e6;
    let bytes_per_day = slope(&samples.iter().map(|s| (day(s.0), s.1 as f64)).collect::<Vec<_>>());
    let rows_per_day = slope(&samples.iter().map(|s| (day(s.0), s.2 as f64)).collect::<Vec<_>>());
    let target_reached = target.is_some_and(|t| size >= t);
    let days_until_target = match target {
        Some(_) if target_reached => Some(0.0),
        Some(t) if samples.len() >= 2 && bytes_per_day > 0.0 => Some((t - size) as f64 / bytes_per_day),
        _ => None,
    };
    Trend {
        samples: samples.len(),
        current_size_bytes: size,
        current_rows: rows,
        bytes_per_day,
        rows_per_day,
        days_until_target,
        target_reached,
    }
}

/// Growth over the window from stored snapshots (read from a replica when one can serve).
pub async fn growth(ctx: &Context, q: &GrowthQuery) -> Result<Growth> {
    let now = ctx.now_utc();
    let window_start = now - chrono::Duration::from_std(q.window.length()).expect("window fits");
    let (mut conn, _) = ctx.db.read().await?;
    let (snaps, tables) = snapshots::since(&mut conn, window_start.naive_utc(), &q.prefix.0).await?;
    drop(conn);

    let db_samples: Vec<_> = snaps.iter().map(|s| (s.taken_at, s.database_size_bytes, 0)).collect();
    let mut database = fit(&db_samples, q.target_size_bytes);
    database.current_rows = 0;

    let taken: std::collections::HashMap<i64, NaiveDateTime> = snaps.iter().map(|s| (s.id, s.taken_at)).collect();
    let mut per_table: std::collections::BTreeMap<(String, String), Vec<Sample>> = Default::default();
    for t in tables {
        if let Some(&at) = taken.get(&t.snapshot_id) {
            per_table.entry((t.schema_name, t.table_name)).or_default().push((
                at,
                t.total_size_bytes,
                t.estimated_rows,
            ));
        }
    }
    let mut tables: Vec<TableGrowth> = per_table
        .into_iter()
        .map(|((schema_name, table_name), mut samples)| {
            samples.sort_by_key(|s| s.0);
            TableGrowth { schema_name, table_name, trend: fit(&samples, q.target_size_bytes) }
        })
        .collect();
    tables.sort_by(|a, b| {
        b.trend.bytes_per_day.total_cmp(&a.trend.bytes_per_day).then_with(|| a.table_name.cmp(&b.table_name))
    });
    Ok(Growth { window: q.window, window_start, database, tables })
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn at(day: u32, hour: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 1, day).unwrap().and_hms_opt(hour, 0, 0).unwrap()
    }

    #[test]
    fn fits_a_straight_line_exactly() {
        // 1000 bytes and 10 rows per day, sampled every 12 hours.
        let samples: Vec<_> =
            (0..6).map(|i| (at(1 + i / 2, (i % 2) * 12), 5000 + 500 * i as i64, 100 + 5 * i as i64)).collect();
        let t = fit(&samples, Some(10_000));
        assert_eq!(t.samples, 6);
        assert!((t.bytes_per_day - 1000.0).abs() < 1e-6, "{}", t.bytes_per_day);
        assert!((t.rows_per_day - 10.0).abs() < 1e-9);
        assert_eq!(t.current_size_bytes, 7500);
        // 2500 bytes to go at 1000 bytes/day.
        assert!((t.days_until_target.unwrap() - 2.5).abs() < 1e-6);
        assert!(!t.target_reached);
    }

    #[test]
    fn no_forecast_when_shrinking_or_single_sample() {
        let shrinking = [(at(1, 0), 2000, 0), (at(2, 0), 1000, 0)];
        let t = fit(&shrinking, Some(5000));
        assert!((t.bytes_per_day + 1000.0).abs() < 1e-6);
        assert_eq!(t.days_until_target, None);
        let one = [(at(1, 0), 2000, 0)];
        let t = fit(&one, Some(5000));
        assert_eq!((t.bytes_per_day, t.days_until_target), (0.0, None));
        let t = fit(&one, Some(1000));
        assert!(t.target_reached);
        assert_eq!(t.days_until_target, Some(0.0));
    }

    #[test]
    fn page_tokens_are_validated() {
        assert!(PageRequest::parse(-1, "").is_err());
        assert!(PageRequest::parse(10, "x12").is_err());
        assert!(PageRequest::parse(10, "s-3").is_err());
        let p = PageRequest::parse(5000, "s42").unwrap();
        assert_eq!((p.size, p.before_id), (MAX_PAGE_SIZE, Some(42)));
        assert_eq!(PageRequest::parse(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
    }
}
