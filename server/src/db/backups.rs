//! Backup catalog rows. A unique partial index allows one `running` backup at a time across
//! instances; a running backup's heartbeat (`updated_at`) tells a live one from an interrupted one.
//! Also the SQLite statements a backup runs: `VACUUM INTO` for a consistent snapshot, and
//! `PRAGMA integrity_check` on the copy read back from the object store.

use std::path::Path;

use chrono::NaiveDateTime;
use diesel::{OptionalExtension, QueryableByName, prelude::*};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};

use super::{Conn, Error, Result, SqliteConn, is_unique_violation};
use crate::{
    db_run,
    model::backup::{BackupFormat, BackupState},
};

/// A backup as stored.
#[derive(Debug, Clone)]
pub struct BackupRow {
    /// Id (UUIDv7).
    pub id: String,
    /// What it holds.
    pub format: BackupFormat,
    /// State.
    pub state: BackupState,
    /// Object key.
    pub object_key: String,
    /// Object size.
    pub size_bytes: i64,
    /// SHA-256 (hex).
    pub sha256: String,
    /// Result of the check.
    pub verification: String,
    /// Failure.
    pub error: Option<String>,
    /// Started.
    pub started_at: NaiveDateTime,
    /// Heartbeat.
    pub updated_at: NaiveDateTime,
    /// Ended.
    pub finished_at: Option<NaiveDateTime>,
}

/// The columns as read; [`BackupRow`]'s `TryFrom` is the one place their text becomes enums.
#[derive(Queryable)]
struct Stored {
    id: String,
    format: String,
    state: String,
    object_key: String,
    size_bytes: i64,
    sha256: String,
    verification: String,
    error: Option<String>,
    started_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    finished_at: Option<NaiveDateTime>,
}

impl TryFrom<Stored> for BackupRow {
    type Error = Error;
    fn try_from(r: Stored) -> Result<Self> {
        Ok(BackupRow {
            id: r.id,
            format: r.format.parse()?,
            state: r.state.parse()?,
            object_key: r.object_key,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            verification: r.verification,
            error: r.error,
            started_at: r.started_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        })
    }
}

/// Marks running backups whose heartbeat is older than `stale_before` as failed (interrupted).
pub async fn fail_stale(conn: &mut Conn, stale_before: NaiveDateTime, now: NaiveDateTime) -> Result<usize> {
    Ok(db_run!(conn, {
        use schema::backups as t;
        diesel::update(
            t::table.filter(t::state.eq(BackupState::Running.as_str())).filter(t::updated_at.lt(stale_before)),
        )
        .set((
            t::state.eq(BackupState::Failed.as_str()),
            t::error.eq(Some("interrupted: its server stopped")),
            t::finished_at.eq(Some(now)),
        ))
        .execute(conn)
        .await?
    }))
}

/// Stores a running backup; false when another one is running (the unique index says so).
pub async fn insert_running(conn: &mut Conn, b: &BackupRow) -> Result<bool> {
    let r = db_run!(conn, {
        use schema::backups as t;
        diesel::insert_into(t::table)
            .values((
                t::id.eq(&b.id),
                t::format.eq(b.format.as_str()),
                t::state.eq(BackupState::Running.as_str()),
                t::object_key.eq(&b.object_key),
                t::size_bytes.eq(0i64),
                t::sha256.eq(""),
                t::verification.eq(""),
                t::error.eq(None::<String>),
                t::started_at.eq(b.started_at),
                t::updated_at.eq(b.started_at),
                t::finished_at.eq(None::<NaiveDateTime>),
            ))
            .execute(conn)
            .await
    });
    match r {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Records that a running backup is alive.
pub async fn heartbeat(conn: &mut Conn, id: &str, now: NaiveDateTime) -> Result<()> {
    db_run!(conn, {
        use schema::backups as t;
        diesel::update(t::table.filter(t::id.eq(id))).set(t::updated_at.eq(now)).execute(conn).await?;
    });
    Ok(())
}

/// Ends a backup.
pub async fn finish(conn: &mut Conn, b: &BackupRow, now: NaiveDateTime) -> Result<()> {
    db_run!(conn, {
        use schema::backups as t;
        diesel::update(t::table.filter(t::id.eq(&b.id)))
            .set((
                t::state.eq(b.state.as_str()),
                t::size_bytes.eq(b.size_bytes),
                t::sha256.eq(&b.sha256),
                t::verification.eq(&b.verification),
                t::error.eq(&b.error),
                t::updated_at.eq(now),
                t::finished_at.eq(Some(now)),
            ))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// A backup by id.
pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<BackupRow>> {
    let row = db_run!(conn, {
        use schema::backups as t;
        t::table.filter(t::id.eq(id)).first::<Stored>(conn).await.optional()?
    });
    row.map(BackupRow::try_from).transpose()
}

/// Backups newest first (ids sort by start), older than `before`.
pub async fn list(conn: &mut Conn, before: Option<&str>, limit: i64) -> Result<Vec<BackupRow>> {
    let rows = db_run!(conn, {
        use schema::backups as t;
        let mut q = t::table.into_boxed();
        if let Some(b) = before {
            q = q.filter(t::id.lt(b));
        }
        q.order(t::id.desc()).limit(limit).load::<Stored>(conn).await?
    });
    rows.into_iter().map(BackupRow::try_from).collect()
}

/// Every succeeded backup, newest first (for rotation).
pub async fn succeeded(conn: &mut Conn) -> Result<Vec<BackupRow>> {
    let rows = db_run!(conn, {
        use schema::backups as t;
        t::table
            .filter(t::state.eq(BackupState::Succeeded.as_str()))
            .order(t::started_at.desc())
            .load::<Stored>(conn)
            .await?
    });
    rows.into_iter().map(BackupRow::try_from).collect()
}

/// Removes a backup's row (after its object).
pub async fn delete(conn: &mut Conn, id: &str) -> Result<()> {
    db_run!(conn, {
        use schema::backups as t;
        diesel::delete(t::table.filter(t::id.eq(id))).execute(conn).await?;
    });
    Ok(())
}

/// SQLite: writes a consistent snapshot of the database to `snapshot` (`VACUUM INTO`).
pub async fn sqlite_snapshot(conn: &mut Conn, snapshot: &Path) -> Result<()> {
    let sql = format!("VACUUM INTO '{}'", snapshot.display().to_string().replace('\'', "''"));
    match conn {
        Conn::Sqlite(c) => c.batch_execute(&sql).await?,
        Conn::Pg(_) => return Err(Error::Unsupported("not SQLite".into())),
    }
    Ok(())
}

/// What SQLite says of a database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// `integrity_check` found nothing wrong.
    Ok,
    /// The file does not open as a database (the message says why).
    DoesNotOpen(String),
    /// `integrity_check` itself failed (the message says why).
    CheckFailed(String),
    /// `integrity_check` found problems: its findings, joined by "; ".
    Damaged(String),
}

/// SQLite: opens the database file at `path` on a connection of its own and runs
/// `PRAGMA integrity_check` on it.
pub async fn sqlite_integrity(path: &Path) -> Integrity {
    #[derive(QueryableByName)]
    struct Check {
        #[diesel(sql_type = diesel::sql_types::Text)]
        integrity_check: String,
    }
    let mut c = match SqliteConn::establish(&path.display().to_string()).await {
        Ok(c) => c,
        Err(e) => return Integrity::DoesNotOpen(e.to_string()),
    };
    let rows: Vec<Check> = match diesel::sql_query("PRAGMA integrity_check").load(&mut c).await {
        Ok(rows) => rows,
        Err(e) => return Integrity::CheckFailed(e.to_string()),
    };
    let verdict = rows.into_iter().map(|r| r.integrity_check).collect::<Vec<_>>().join("; ");
    if verdict == "ok" { Integrity::Ok } else { Integrity::Damaged(verdict) }
}

/// PostgreSQL: the server's major version (`server_version_num` 150004 → 15); None on SQLite.
pub async fn pg_server_major(conn: &mut Conn) -> Result<Option<u32>> {
    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        v: i32,
    }
    match conn {
        Conn::Pg(c) => {
            let row: Version = diesel::sql_query("SELECT current_setting('server_version_num')::int4 AS v")
                .get_result(&mut **c)
                .await?;
            Ok(Some((row.v / 10_000) as u32))
        }
        Conn::Sqlite(_) => Ok(None),
    }
}
