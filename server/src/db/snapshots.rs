//! Persistence of metrics snapshots in the catalog (`strata.snapshots` / `strata_snapshots`).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::files::escape_like;
use super::{Conn, Result, stats::TableStats};
use crate::db_run;

/// A stored snapshot.
#[derive(Debug, Clone, Queryable)]
pub struct SnapshotRow {
    /// Id.
    pub id: i64,
    /// When taken (UTC).
    pub taken_at: NaiveDateTime,
    /// Database size.
    pub database_size_bytes: i64,
}

/// Per-table figures of a snapshot.
#[derive(Debug, Clone, Queryable)]
pub struct SnapshotTableRow {
    /// Snapshot id.
    pub snapshot_id: i64,
    /// Schema.
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Total bytes.
    pub total_size_bytes: i64,
    /// Estimated rows.
    pub estimated_rows: i64,
}

/// Stores a snapshot and its tables in one transaction; returns its id.
pub async fn insert(
    conn: &mut Conn,
    taken_at: NaiveDateTime,
    database_size_bytes: i64,
    tables: &[TableStats],
) -> Result<i64> {
    let rows: Vec<(String, String, i64, i64, Option<i64>)> = tables
        .iter()
        .map(|t| (t.schema_name.clone(), t.table_name.clone(), t.total_bytes(), t.rows.unwrap_or(0), t.dead_rows))
        .collect();
    let id = db_run!(conn, {
        conn.transaction(async |conn| {
            let id: i64 = diesel::insert_into(schema::snapshots::table)
                .values((
                    schema::snapshots::taken_at.eq(taken_at),
                    schema::snapshots::database_size_bytes.eq(database_size_bytes),
                ))
                .returning(schema::snapshots::id)
                .get_result(&mut *conn)
                .await?;
            // Row by row inside the transaction: Diesel has no multi-row INSERT for SQLite through
            // the async wrapper, and a database has at most a few thousand tables.
            for (s, t, bytes, n, dead) in &rows {
                diesel::insert_into(schema::snapshot_tables::table)
                    .values((
                        schema::snapshot_tables::snapshot_id.eq(id),
                        schema::snapshot_tables::schema_name.eq(s),
                        schema::snapshot_tables::table_name.eq(t),
                        schema::snapshot_tables::total_size_bytes.eq(bytes),
                        schema::snapshot_tables::estimated_rows.eq(n),
                        schema::snapshot_tables::dead_rows.eq(dead),
                    ))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<_, diesel::result::Error>(id)
        })
        .await?
    });
    Ok(id)
}

/// Snapshots with id below `before_id` (all when None), newest first, at most `limit`, each with its
/// table count.
pub async fn list(conn: &mut Conn, before_id: Option<i64>, limit: i64) -> Result<Vec<(SnapshotRow, i64)>> {
    let rows = db_run!(conn, {
        use schema::{snapshot_tables as st, snapshots as s};
        let mut q =
            s::table.select((s::id, s::taken_at, s::database_size_bytes)).order(s::id.desc()).limit(limit).into_boxed();
        if let Some(b) = before_id {
            q = q.filter(s::id.lt(b));
        }
        let snaps: Vec<SnapshotRow> = q.load(conn).await?;
        let ids: Vec<i64> = snaps.iter().map(|s| s.id).collect();
        let counts: Vec<(i64, i64)> = st::table
            .filter(st::snapshot_id.eq_any(&ids))
            .group_by(st::snapshot_id)
            .select((st::snapshot_id, diesel::dsl::count_star()))
            .load(conn)
            .await?;
        snaps
            .into_iter()
            .map(|s| {
                let n = counts.iter().find(|(id, _)| *id == s.id).map_or(0, |(_, n)| *n);
                (s, n)
            })
            .collect::<Vec<_>>()
    });
    Ok(rows)
}

/// One table of the newest snapshot.
#[derive(Debug, Clone, Queryable)]
pub struct LatestTable {
    /// Schema.
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Total bytes.
    pub total_size_bytes: i64,
    /// Estimated rows.
    pub estimated_rows: i64,
    /// Dead rows, when the backend reports them.
    pub dead_rows: Option<i64>,
}

/// The newest snapshot with its `limit` largest tables (largest first) and how many tables it
/// holds in all; None before the first snapshot.
pub async fn latest(conn: &mut Conn, limit: i64) -> Result<Option<(SnapshotRow, Vec<LatestTable>, i64)>> {
    let out = db_run!(conn, {
        use schema::{snapshot_tables as st, snapshots as s};
        let snap: Option<SnapshotRow> = s::table
            .select((s::id, s::taken_at, s::database_size_bytes))
            .order(s::id.desc())
            .first(conn)
            .await
            .optional()?;
        match snap {
            None => None,
            Some(snap) => {
                let tables: Vec<LatestTable> = st::table
                    .filter(st::snapshot_id.eq(snap.id))
                    .select((st::schema_name, st::table_name, st::total_size_bytes, st::estimated_rows, st::dead_rows))
                    .order((st::total_size_bytes.desc(), st::table_name.asc()))
                    .limit(limit)
                    .load(conn)
                    .await?;
                let count: i64 = st::table.filter(st::snapshot_id.eq(snap.id)).count().get_result(conn).await?;
                Some((snap, tables, count))
            }
        }
    });
    Ok(out)
}

/// Snapshots taken at or after `since`, oldest first, with the tables whose name starts with
/// `prefix`.
pub async fn since(
    conn: &mut Conn,
    since: NaiveDateTime,
    prefix: &str,
) -> Result<(Vec<SnapshotRow>, Vec<SnapshotTableRow>)> {
    let pattern = format!("{}%", escape_like(prefix));
    let out = db_run!(conn, {
        use schema::{snapshot_tables as st, snapshots as s};
        let snaps: Vec<SnapshotRow> = s::table
            .select((s::id, s::taken_at, s::database_size_bytes))
            .filter(s::taken_at.ge(since))
            .order((s::taken_at.asc(), s::id.asc()))
            .load(conn)
            .await?;
        let tables: Vec<SnapshotTableRow> = st::table
            .inner_join(s::table)
            .filter(s::taken_at.ge(since))
            .filter(st::table_name.like(&pattern).escape('\\'))
            .select((st::snapshot_id, st::schema_name, st::table_name, st::total_size_bytes, st::estimated_rows))
            .load(conn)
            .await?;
        (snaps, tables)
    });
    Ok(out)
}
