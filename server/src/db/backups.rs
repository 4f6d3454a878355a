//! Backup catalog rows. A unique partial index allows one `running` backup at a time across
//! instances; a running backup's heartbeat (`updated_at`) tells a live one from an interrupted one.

use chrono::NaiveDateTime;
use diesel::{OptionalExtension, prelude::*};
use diesel_async::RunQueryDsl;

use super::{Conn, Result, is_unique_violation};
use crate::db_run;

/// Running.
pub const RUNNING: &str = "running";
/// Written and checked.
pub const SUCCEEDED: &str = "succeeded";
/// Failed or interrupted.
pub const FAILED: &str = "failed";

/// A backup as stored.
#[derive(Debug, Clone, Queryable)]
pub struct BackupRow {
    /// Id (UUIDv7).
    pub id: String,
    /// `pg_dump` or `sqlite`.
    pub format: String,
    /// State.
    pub state: String,
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

/// Marks running backups whose heartbeat is older than `stale_before` as failed (interrupted).
pub async fn fail_stale(conn: &mut Conn, stale_before: NaiveDateTime, now: NaiveDateTime) -> Result<usize> {
    Ok(db_run!(conn, {
        use schema::backups as t;
        diesel::update(t::table.filter(t::state.eq(RUNNING)).filter(t::updated_at.lt(stale_before)))
            .set((
                t::state.eq(FAILED),
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
                t::format.eq(&b.format),
                t::state.eq(RUNNING),
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
                t::state.eq(&b.state),
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
    Ok(db_run!(conn, {
        use schema::backups as t;
        t::table.filter(t::id.eq(id)).first::<BackupRow>(conn).await.optional()?
    }))
}

/// Backups newest first (ids sort by start), older than `before`.
pub async fn list(conn: &mut Conn, before: Option<&str>, limit: i64) -> Result<Vec<BackupRow>> {
    Ok(db_run!(conn, {
        use schema::backups as t;
        let mut q = t::table.into_boxed();
        if let Some(b) = before {
            q = q.filter(t::id.lt(b));
        }
        q.order(t::id.desc()).limit(limit).load::<BackupRow>(conn).await?
    }))
}

/// Every succeeded backup, newest first (for rotation).
pub async fn succeeded(conn: &mut Conn) -> Result<Vec<BackupRow>> {
    Ok(db_run!(conn, {
        use schema::backups as t;
        t::table.filter(t::state.eq(SUCCEEDED)).order(t::started_at.desc()).load::<BackupRow>(conn).await?
    }))
}

/// Removes a backup's row (after its object).
pub async fn delete(conn: &mut Conn, id: &str) -> Result<()> {
    db_run!(conn, {
        use schema::backups as t;
        diesel::delete(t::table.filter(t::id.eq(id))).execute(conn).await?;
    });
    Ok(())
}
