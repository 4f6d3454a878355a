//! Backend-specific reads of the database's own statistics: sizes, row estimates, activity and
//! replication lag. On PostgreSQL these read the statistics catalogs only (never `COUNT(*)`), so
//! their cost does not grow with the number of rows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Double, Nullable, Text, Timestamptz},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use super::{Conn, Error, Result, SqliteConn};

// The figures are domain types (`service::metrics` returns them as they are): they live in
// `model/`, below both; this module fills them.
pub use crate::model::stats::{DatabaseStats, TableStats};

#[derive(QueryableByName)]
struct PgTableRow {
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Double)]
    reltuples: f64,
    #[diesel(sql_type = BigInt)]
    table_bytes: i64,
    #[diesel(sql_type = BigInt)]
    index_bytes: i64,
    #[diesel(sql_type = BigInt)]
    toast_bytes: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    dead_rows: Option<i64>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_vacuum: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_analyze: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    seq_scans: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    index_scans: Option<i64>,
}

#[derive(QueryableByName)]
struct PgDbRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    size_bytes: i64,
}

/// The application-table query, with the three size expressions and the ordering filled in. The
/// filter is shared: `strata` (our catalog) and system schemas are excluded; `reltuples` is -1 for
/// tables never vacuumed/analyzed.
macro_rules! pg_tables {
    (table: $table:literal, index: $index:literal, toast: $toast:literal, order: $order:literal) => {
        concat!(
            "SELECT n.nspname::text AS schema_name, c.relname::text AS table_name, c.reltuples::float8 AS reltuples, ",
            $table,
            " AS table_bytes, ",
            $index,
            " AS index_bytes, ",
            $toast,
            r" AS toast_bytes,
       s.n_dead_tup::int8 AS dead_rows,
       GREATEST(s.last_vacuum, s.last_autovacuum) AS last_vacuum,
       GREATEST(s.last_analyze, s.last_autoanalyze) AS last_analyze,
       s.seq_scan::int8 AS seq_scans,
       s.idx_scan::int8 AS index_scans
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
 WHERE c.relkind IN ('r', 'p', 'm')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'strata')
   AND n.nspname NOT LIKE 'pg\_toast%'
   AND n.nspname NOT LIKE 'pg\_temp\_%'
   AND starts_with(c.relname::text, $1)
 ORDER BY ",
            $order,
            " DESC, 1, 2"
        )
    };
}

/// Exact sizes. Heap bytes exclude the TOAST relation, which is reported on its own;
/// `pg_table_size` includes the free-space and visibility-map forks.
const PG_TABLES: &str = pg_tables!(
    table: "(pg_table_size(c.oid) - COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0))::int8",
    index: "pg_indexes_size(c.oid)::int8",
    toast: "COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0)::int8",
    order: "pg_total_relation_size(c.oid)"
);

/// Without size functions (which take a lock on each relation): sizes from `relpages`, as of the
/// last VACUUM/ANALYZE. Used when a table is locked (e.g. by DDL) so metrics never wait for it.
const PG_TABLES_ESTIMATED: &str = pg_tables!(
    table: "(c.relpages::int8 * current_setting('block_size')::int8)",
    index: "(COALESCE((SELECT sum(i.relpages) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
              WHERE x.indrelid = c.oid), 0)::int8 * current_setting('block_size')::int8)",
    toast: "(COALESCE((SELECT t.relpages FROM pg_class t WHERE t.oid = c.reltoastrelid), 0)::int8
              * current_setting('block_size')::int8)",
    order: "c.relpages"
);

/// How long the exact size query may wait for a table lock before metrics fall back to estimates.
const LOCK_WAIT: Duration = Duration::from_millis(200);

async fn pg_stats(conn: &mut AsyncPgConnection, prefix: &str) -> Result<DatabaseStats> {
    let db: PgDbRow = diesel::sql_query(
        "SELECT current_database()::text AS name, pg_database_size(current_database())::int8 AS size_bytes",
    )
    .get_result(conn)
    .await?;
    let prefix_owned = prefix.to_owned();
    let exact = conn
        .transaction::<_, diesel::result::Error, _>(async |c| {
            c.batch_execute(&format!("SET LOCAL lock_timeout = '{}ms'", LOCK_WAIT.as_millis())).await?;
            diesel::sql_query(PG_TABLES).bind::<Text, _>(&prefix_owned).load::<PgTableRow>(c).await
        })
        .await;
    let (rows, estimated): (Vec<PgTableRow>, bool) = match exact {
        Ok(rows) => (rows, false),
        // 55P03 lock_not_available: some table is locked (DDL, VACUUM FULL); do not wait for it.
        Err(diesel::result::Error::DatabaseError(_, info)) if info.message().contains("lock timeout") => {
            (diesel::sql_query(PG_TABLES_ESTIMATED).bind::<Text, _>(prefix).load(conn).await?, true)
        }
        Err(e) => return Err(e.into()),
    };
    let tables = rows
        .into_iter()
        .map(|r| TableStats {
            schema_name: r.schema_name,
            table_name: r.table_name,
            rows: (r.reltuples >= 0.0).then(|| r.reltuples.round() as i64),
            rows_exact: false,
            table_bytes: r.table_bytes,
            index_bytes: r.index_bytes,
            toast_bytes: r.toast_bytes,
            sizes_estimated: estimated,
            dead_rows: r.dead_rows,
            last_vacuum: r.last_vacuum,
            last_analyze: r.last_analyze,
            seq_scans: r.seq_scans,
            index_scans: r.index_scans,
        })
        .collect();
    Ok(DatabaseStats {
        name: db.name,
        size_bytes: db.size_bytes,
        free_bytes: None,
        tables,
        notes: {
            let mut notes = vec![
                "estimated_rows comes from pg_class.reltuples, refreshed by VACUUM/ANALYZE (autovacuum)".into(),
                "dead rows and scan counts come from the cumulative statistics system and lag up to a second".into(),
            ];
            if estimated {
                notes.push(
                    "a table was locked: sizes are estimates from pg_class.relpages (last VACUUM/ANALYZE)".into(),
                );
            }
            notes
        },
    })
}

#[derive(QueryableByName)]
struct SqlitePages {
    #[diesel(sql_type = BigInt)]
    page_size: i64,
    #[diesel(sql_type = BigInt)]
    page_count: i64,
    #[diesel(sql_type = BigInt)]
    freelist_count: i64,
}

#[derive(QueryableByName)]
struct SqliteObject {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    tbl_name: String,
    #[diesel(sql_type = Text)]
    kind: String,
}

#[derive(QueryableByName)]
struct SqliteBtree {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    bytes: i64,
    #[diesel(sql_type = BigInt)]
    leaf_cells: i64,
}

#[derive(QueryableByName)]
struct SqliteStat1 {
    #[diesel(sql_type = Text)]
    tbl: String,
    #[diesel(sql_type = Text)]
    stat: String,
}

/// Application tables: not SQLite's own, not strata's catalog.
const SQLITE_OBJECTS: &str = r"
SELECT name, tbl_name, type AS kind FROM sqlite_schema
 WHERE type IN ('table', 'index')
   AND tbl_name NOT LIKE 'sqlite\_%' ESCAPE '\'
   AND tbl_name NOT LIKE 'strata\_%' ESCAPE '\'
   AND substr(tbl_name, 1, length(?1)) = ?1";

async fn sqlite_stats(conn: &mut SqliteConn, file: &str, prefix: &str) -> Result<DatabaseStats> {
    let pages: SqlitePages = diesel::sql_query(
        "SELECT p.page_size, c.page_count, f.freelist_count
           FROM pragma_page_size() p, pragma_page_count() c, pragma_freelist_count() f",
    )
    .get_result(conn)
    .await?;
    let objects: Vec<SqliteObject> = diesel::sql_query(SQLITE_OBJECTS).bind::<Text, _>(prefix).load(conn).await?;
    // dbstat walks every page: exact, and as costly as the file is large. It is compiled into the
    // bundled SQLite; a system SQLite may lack it, and then only planner statistics are available.
    let btrees: Option<Vec<SqliteBtree>> = diesel::sql_query(
        "SELECT name, SUM(pgsize) AS bytes,
                SUM(CASE WHEN pagetype = 'leaf' THEN ncell ELSE 0 END) AS leaf_cells
           FROM dbstat GROUP BY name",
    )
    .load(conn)
    .await
    .ok();
    let has_stat1: bool =
        diesel::sql_query("SELECT name, name AS tbl_name, type AS kind FROM sqlite_schema WHERE name = 'sqlite_stat1'")
            .load::<SqliteObject>(conn)
            .await?
            .len()
            == 1;
    let stat1: Vec<SqliteStat1> = if has_stat1 {
        diesel::sql_query("SELECT tbl, stat FROM sqlite_stat1 WHERE idx IS NULL OR idx = tbl").load(conn).await?
    } else {
        Vec::new()
    };

    let mut notes = Vec::new();
    let mut tables: Vec<TableStats> = objects
        .iter()
        .filter(|o| o.kind == "table")
        .map(|t| {
            let btree = |name: &str| btrees.as_ref().and_then(|b| b.iter().find(|b| b.name == name));
            let index_bytes = objects
                .iter()
                .filter(|o| o.kind == "index" && o.tbl_name == t.name)
                .filter_map(|o| btree(&o.name))
                .map(|b| b.bytes)
                .sum();
            let stat_rows = stat1
                .iter()
                .find(|s| s.tbl == t.name)
                .and_then(|s| s.stat.split_whitespace().next()?.parse::<i64>().ok());
            let (rows, rows_exact) = match btree(&t.name) {
                Some(b) => (Some(b.leaf_cells), true),
                None => (stat_rows, false),
            };
            TableStats {
                schema_name: "main".into(),
                table_name: t.name.clone(),
                rows,
                rows_exact,
                table_bytes: btree(&t.name).map_or(0, |b| b.bytes),
                index_bytes,
                toast_bytes: 0,
                sizes_estimated: btrees.is_none(),
                dead_rows: None,
                last_vacuum: None,
                last_analyze: None,
                seq_scans: None,
                index_scans: None,
            }
        })
        .collect();
    tables.sort_by(|a, b| b.total_bytes().cmp(&a.total_bytes()).then_with(|| a.table_name.cmp(&b.table_name)));
    if btrees.is_some() {
        notes.push("sizes and row counts are exact: counted from the b-tree pages (dbstat)".into());
    } else {
        notes.push(
            "this SQLite lacks dbstat: table sizes are unknown (0) and rows come from ANALYZE (sqlite_stat1)".into(),
        );
    }
    notes.push("SQLite keeps no dead-row, vacuum or scan statistics".into());
    Ok(DatabaseStats {
        name: std::path::Path::new(file)
            .file_name()
            .map_or_else(|| file.to_owned(), |n| n.to_string_lossy().into_owned()),
        size_bytes: pages.page_size * pages.page_count,
        free_bytes: Some(pages.page_size * pages.freelist_count),
        tables,
        notes,
    })
}

/// Sizes and statistics of the database and its application tables whose name starts with `prefix`.
pub async fn database_stats(conn: &mut Conn, sqlite_file: Option<&str>, prefix: &str) -> Result<DatabaseStats> {
    match conn {
        Conn::Pg(c) => pg_stats(c, prefix).await,
        Conn::Sqlite(c) => sqlite_stats(c, sqlite_file.unwrap_or("strata.db"), prefix).await,
    }
}

#[derive(QueryableByName)]
struct LsnRow {
    #[diesel(sql_type = BigInt)]
    lsn: i64,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    now: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    server: String,
}

/// What one probe of a PostgreSQL node read.
pub struct Probe {
    /// Its WAL position (see [`PG_LSN`]).
    pub lsn: i64,
    /// Its clock (`clock_timestamp()`), read at `at` on this process's monotonic clock: the middle
    /// of the query's round trip.
    pub time: chrono::DateTime<chrono::Utc>,
    /// When `time` was read.
    pub at: std::time::Instant,
    /// The server that answered (`host:port`): with several hosts in the URL, the one chosen.
    pub server: String,
}

/// The node's WAL position in bytes: the current write position on a primary, the last replayed
/// position on a standby.
const PG_LSN: &str = r"
SELECT (COALESCE(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
                 '0/0'::pg_lsn) - '0/0'::pg_lsn)::int8 AS lsn, clock_timestamp() AS now,
       coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'local socket') AS server";

/// Probes a PostgreSQL node on a fresh connection (so a busy pool cannot make a healthy node look
/// down); returns its WAL position and its clock.
pub async fn probe_pg(name: &str, url: &str, timeout: Duration) -> Result<Probe> {
    let work = async {
        let mut conn = async { super::pg_connect::PgTarget::parse(url)?.connect().await }
            .await
            .map_err(|e| Error::Connect { node: name.to_owned(), message: e.to_string() })?;
        let sent = std::time::Instant::now();
        let r: LsnRow = diesel::sql_query(PG_LSN).get_result(&mut conn).await?;
        let at = sent + sent.elapsed() / 2;
        Ok(Probe { lsn: r.lsn, time: r.now, at, server: r.server })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Error::Connect { node: name.to_owned(), message: format!("probe timed out after {timeout:?}") }),
    }
}

/// Recent WAL positions of the primary with the time each was seen, to turn a replica's replay
/// position into a time lag. Time-based formulas on the replica alone (now − last replayed commit)
/// report an idle, fully caught-up replica as lagging more and more; comparing with the primary's
/// own history does not.
#[derive(Debug, Default)]
pub struct WalHistory {
    samples: std::collections::VecDeque<(std::time::Instant, i64)>,
}

/// Samples kept: at the default 500 ms probe interval, about 8.5 minutes.
const WAL_HISTORY_LEN: usize = 1024;

impl WalHistory {
    /// Records the primary's position seen at `at`.
    pub fn push(&mut self, at: std::time::Instant, lsn: i64) {
        if self.samples.len() == WAL_HISTORY_LEN {
            self.samples.pop_front();
        }
        self.samples.push_back((at, lsn));
    }

    /// Lag of a replica that has replayed up to `replayed`, as of `now`: zero when it has everything
    /// the primary had at its newest sample, else the time since the oldest sample it still lacks
    /// (a lower bound, exact to one probe interval).
    pub fn lag(&self, replayed: i64, now: std::time::Instant) -> Duration {
        self.samples
            .iter()
            .find(|(_, lsn)| *lsn > replayed)
            .map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::WalHistory;

    #[test]
    fn lag_is_time_since_first_missing_position() {
        let t0 = Instant::now();
        let mut h = WalHistory::default();
        for (i, lsn) in [100, 100, 200, 300].into_iter().enumerate() {
            h.push(t0 + Duration::from_secs(i as u64), lsn);
        }
        let now = t0 + Duration::from_secs(10);
        // Caught up with the newest sample: no lag, however long ago the last write was.
        assert_eq!(h.lag(300, now), Duration::ZERO);
        assert_eq!(h.lag(350, now), Duration::ZERO);
        // Missing position 200, first seen at t0+2s.
        assert_eq!(h.lag(100, now), Duration::from_secs(8));
        assert_eq!(h.lag(250, now), Duration::from_secs(7));
        assert_eq!(h.lag(0, now), Duration::from_secs(10));
    }
}
