//! VACUUM / ANALYZE and the statistics behind recommendations.

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Bool, Text},
};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

use super::{Conn, Result, quote};

/// A user table with its size and dead rows (PostgreSQL).
#[derive(Debug, Clone, QueryableByName)]
pub struct TableInfo {
    /// Schema.
    #[diesel(sql_type = Text)]
    pub schema: String,
    /// Table.
    #[diesel(sql_type = Text)]
    pub table: String,
    /// Heap + indexes + TOAST.
    #[diesel(sql_type = BigInt)]
    pub size: i64,
    /// Dead rows per the statistics.
    #[diesel(sql_type = BigInt)]
    pub dead_rows: i64,
}

/// User tables (all, or those named), PostgreSQL. Partitioned parents are left out (their
/// partitions are listed themselves).
pub async fn pg_tables(conn: &mut Conn, only: &[(String, String)]) -> Result<Vec<TableInfo>> {
    let Conn::Pg(c) = conn else { return Ok(Vec::new()) };
    let c = &mut **c;
    let all: Vec<TableInfo> = diesel::sql_query(
        "SELECT schemaname::text AS schema, relname::text AS table, pg_total_relation_size(relid) AS size,
                n_dead_tup AS dead_rows
           FROM pg_stat_user_tables ORDER BY schemaname, relname",
    )
    .load(c)
    .await?;
    Ok(if only.is_empty() {
        all
    } else {
        all.into_iter().filter(|t| only.iter().any(|(s, n)| *s == t.schema && *n == t.table)).collect()
    })
}

/// Size of one table (found by [`pg_tables`]) now.
pub async fn pg_size(conn: &mut Conn, t: &TableInfo) -> Result<i64> {
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = BigInt)]
        s: i64,
    }
    let Conn::Pg(c) = conn else { return Ok(0) };
    let c = &mut **c;
    let s: S = diesel::sql_query("SELECT coalesce(pg_total_relation_size(to_regclass($1)), 0) AS s")
        .bind::<Text, _>(format!("{}.{}", quote(&t.schema), quote(&t.table)))
        .get_result(c)
        .await?;
    Ok(s.s)
}

/// `VACUUM [FULL] [ANALYZE]` one table found by [`pg_tables`] (a statement of its own: VACUUM
/// cannot run in a transaction).
pub async fn vacuum(conn: &mut Conn, t: &TableInfo, full: bool, analyze: bool) -> Result<()> {
    let Conn::Pg(c) = conn else { return Ok(()) };
    let c = &mut **c;
    let mut opts = Vec::new();
    if full {
        opts.push("FULL");
    }
    if analyze {
        opts.push("ANALYZE");
    }
    let opts = if opts.is_empty() { String::new() } else { format!("({}) ", opts.join(", ")) };
    c.batch_execute(&format!("VACUUM {opts}{}.{}", quote(&t.schema), quote(&t.table))).await?;
    Ok(())
}

/// The server process of this PostgreSQL session (None on SQLite): what [`cancel_backend`] stops.
pub async fn backend_pid(conn: &mut Conn) -> Result<Option<i32>> {
    #[derive(QueryableByName)]
    struct P {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let Conn::Pg(c) = conn else { return Ok(None) };
    let p: P = diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result(&mut **c).await?;
    Ok(Some(p.pid))
}

/// Cancels the statement session `pid` is running (`pg_cancel_backend`): a VACUUM of a big table
/// stops within moments instead of running to its end after its operation was cancelled.
pub async fn cancel_backend(conn: &mut Conn, pid: i32) -> Result<()> {
    let Conn::Pg(c) = conn else { return Ok(()) };
    diesel::sql_query("SELECT pg_cancel_backend($1)")
        .bind::<diesel::sql_types::Integer, _>(pid)
        .execute(&mut **c)
        .await?;
    Ok(())
}

/// SQLite: the file's size (pages × page size).
pub async fn sqlite_size(conn: &mut Conn) -> Result<i64> {
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = BigInt)]
        s: i64,
    }
    let Conn::Sqlite(c) = conn else { return Ok(0) };
    let s: S = diesel::sql_query("SELECT page_count * page_size AS s FROM pragma_page_count(), pragma_page_size()")
        .get_result(c)
        .await?;
    Ok(s.s)
}

/// SQLite: VACUUM and ANALYZE the whole file.
pub async fn sqlite_vacuum(conn: &mut Conn, analyze: bool) -> Result<()> {
    let Conn::Sqlite(c) = conn else { return Ok(()) };
    c.batch_execute("VACUUM").await?;
    if analyze {
        c.batch_execute("ANALYZE").await?;
    }
    Ok(())
}

/// Scan and row statistics of a user table (PostgreSQL).
#[derive(Debug, Clone, QueryableByName)]
pub struct ScanStats {
    /// Schema.
    #[diesel(sql_type = Text)]
    pub schema: String,
    /// Table.
    #[diesel(sql_type = Text)]
    pub table: String,
    /// Sequential scans.
    #[diesel(sql_type = BigInt)]
    pub seq_scan: i64,
    /// Rows read by sequential scans.
    #[diesel(sql_type = BigInt)]
    pub seq_tup_read: i64,
    /// Index scans.
    #[diesel(sql_type = BigInt)]
    pub idx_scan: i64,
    /// Live rows.
    #[diesel(sql_type = BigInt)]
    pub live_rows: i64,
    /// Dead rows.
    #[diesel(sql_type = BigInt)]
    pub dead_rows: i64,
    /// Heap + indexes + TOAST.
    #[diesel(sql_type = BigInt)]
    pub size: i64,
    /// Partitioned or a partition.
    #[diesel(sql_type = Bool)]
    pub partitioned: bool,
}

/// Every user table's scan statistics.
pub async fn scan_stats(conn: &mut Conn) -> Result<Vec<ScanStats>> {
    let Conn::Pg(c) = conn else { return Ok(Vec::new()) };
    let c = &mut **c;
    Ok(diesel::sql_query(
        "SELECT s.schemaname::text AS schema, s.relname::text AS table, coalesce(s.seq_scan, 0) AS seq_scan,
                coalesce(s.seq_tup_read, 0) AS seq_tup_read, coalesce(s.idx_scan, 0) AS idx_scan,
                s.n_live_tup AS live_rows, s.n_dead_tup AS dead_rows, pg_total_relation_size(s.relid) AS size,
                (c.relispartition OR c.relkind = 'p') AS partitioned
           FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
          WHERE s.schemaname <> 'strata'",
    )
    .load(c)
    .await?)
}

/// An index no scan has used.
#[derive(Debug, Clone, QueryableByName)]
pub struct UnusedIndex {
    /// Schema.
    #[diesel(sql_type = Text)]
    pub schema: String,
    /// Table.
    #[diesel(sql_type = Text)]
    pub table: String,
    /// Index.
    #[diesel(sql_type = Text)]
    pub index: String,
    /// Its size.
    #[diesel(sql_type = BigInt)]
    pub size: i64,
}

/// Indexes with no scan since the statistics were reset, other than unique / primary-key ones
/// (those enforce constraints whether or not they are read).
pub async fn unused_indexes(conn: &mut Conn) -> Result<Vec<UnusedIndex>> {
    let Conn::Pg(c) = conn else { return Ok(Vec::new()) };
    let c = &mut **c;
    Ok(diesel::sql_query(
        "SELECT s.schemaname::text AS schema, s.relname::text AS table, s.indexrelname::text AS index,
                pg_relation_size(s.indexrelid) AS size
           FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
          WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary AND s.schemaname <> 'strata'
          ORDER BY pg_relation_size(s.indexrelid) DESC",
    )
    .load(c)
    .await?)
}
