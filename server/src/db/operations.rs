//! Long operations' catalog rows: one row per operation (its request, progress and lease) and its
//! results as items paged by sequence number. Every write by the instance running an operation
//! compares its runner id, so an instance that lost the lease records nothing more.

use chrono::NaiveDateTime;
use diesel::{OptionalExtension, prelude::*};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{Conn, Error, Result, is_unique_violation};
use crate::{
    db_run,
    model::operations::{ItemKind, OperationKind, OperationState},
};

/// An operation's catalog row.
#[derive(Debug, Clone)]
pub struct OperationRow {
    /// Id (UUIDv7: sorts by start).
    pub id: String,
    /// Kind.
    pub kind: OperationKind,
    /// What it holds alone while running.
    pub scope: String,
    /// State.
    pub state: OperationState,
    /// The request as JSON.
    pub request: String,
    /// What it works on, for people.
    pub target: String,
    /// The step it is at.
    pub phase: String,
    /// Units done.
    pub done: i64,
    /// Units in all (0: not known yet).
    pub total: i64,
    /// The kind's counters and resume point as JSON.
    pub progress: String,
    /// Items recorded.
    pub items: i64,
    /// The instance (and claim) running it.
    pub runner: Option<String>,
    /// Until when the runner holds it (the database's time).
    pub lease_until: Option<NaiveDateTime>,
    /// A cancel was asked for.
    pub cancel_requested: bool,
    /// Why it failed or stopped.
    pub error: Option<String>,
    /// Started.
    pub started_at: NaiveDateTime,
    /// Last written.
    pub updated_at: NaiveDateTime,
    /// Ended.
    pub finished_at: Option<NaiveDateTime>,
}

/// The columns as read; [`OperationRow`]'s `TryFrom` is the one place their text becomes enums.
#[derive(Queryable)]
struct Stored {
    id: String,
    kind: String,
    scope: String,
    state: String,
    request: String,
    target: String,
    phase: String,
    done: i64,
    total: i64,
    progress: String,
    items: i64,
    runner: Option<String>,
    lease_until: Option<NaiveDateTime>,
    cancel_requested: bool,
    error: Option<String>,
    started_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    finished_at: Option<NaiveDateTime>,
}

impl TryFrom<Stored> for OperationRow {
    type Error = Error;
    fn try_from(r: Stored) -> Result<Self> {
        Ok(OperationRow {
            id: r.id,
            kind: r.kind.parse()?,
            scope: r.scope,
            state: r.state.parse()?,
            request: r.request,
            target: r.target,
            phase: r.phase,
            done: r.done,
            total: r.total,
            progress: r.progress,
            items: r.items,
            runner: r.runner,
            lease_until: r.lease_until,
            cancel_requested: r.cancel_requested,
            error: r.error,
            started_at: r.started_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        })
    }
}

/// One recorded result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Position among the operation's items (from 1).
    pub seq: i64,
    /// What it is.
    pub kind: ItemKind,
    /// The key, id or name.
    pub value: String,
    /// Kind-specific JSON ('' when none).
    pub detail: String,
}

/// An item to record (its sequence number is given when recorded).
#[derive(Debug, Clone)]
pub struct NewItem {
    /// What it is.
    pub kind: ItemKind,
    /// The key, id or name.
    pub value: String,
    /// Kind-specific JSON ('' when none).
    pub detail: String,
}

impl NewItem {
    /// An item without detail.
    pub fn new(kind: ItemKind, value: impl Into<String>) -> Self {
        NewItem { kind, value: value.into(), detail: String::new() }
    }
}

/// A step to record: where the operation is and what it found since the last step.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    /// The step it is at.
    pub phase: &'a str,
    /// Units done.
    pub done: i64,
    /// Units in all (0: not known).
    pub total: i64,
    /// Counters and resume point (JSON).
    pub progress: &'a str,
    /// Results found since the last step.
    pub items: &'a [NewItem],
}

/// Stores a new running operation; `Err(holder)` when another operation of the same scope runs
/// (the unique index `operations_one_running`: one per scope across the fleet).
pub async fn insert(conn: &mut Conn, r: &OperationRow) -> Result<std::result::Result<(), Option<OperationRow>>> {
    let res = db_run!(conn, {
        use schema::operations as t;
        diesel::insert_into(t::table)
            .values((
                t::id.eq(&r.id),
                t::kind.eq(r.kind.as_str()),
                t::scope.eq(&r.scope),
                t::state.eq(r.state.as_str()),
                t::request.eq(&r.request),
                t::target.eq(&r.target),
                t::phase.eq(&r.phase),
                t::done.eq(r.done),
                t::total.eq(r.total),
                t::progress.eq(&r.progress),
                t::items.eq(r.items),
                t::runner.eq(&r.runner),
                t::lease_until.eq(r.lease_until),
                t::cancel_requested.eq(r.cancel_requested),
                t::error.eq(&r.error),
                t::started_at.eq(r.started_at),
                t::updated_at.eq(r.updated_at),
                t::finished_at.eq(r.finished_at),
            ))
            .execute(conn)
            .await
    });
    match res {
        Ok(_) => Ok(Ok(())),
        Err(e) if is_unique_violation(&e) => Ok(Err(running_in(conn, &r.scope).await?)),
        Err(e) => Err(e.into()),
    }
}

/// The running operation of `scope`, if any.
pub async fn running_in(conn: &mut Conn, scope: &str) -> Result<Option<OperationRow>> {
    let row = db_run!(conn, {
        use schema::operations as t;
        t::table
            .filter(t::scope.eq(scope))
            .filter(t::state.eq(OperationState::Running.as_str()))
            .first::<Stored>(conn)
            .await
            .optional()?
    });
    row.map(OperationRow::try_from).transpose()
}

/// The operation `id`.
pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<OperationRow>> {
    let row = db_run!(conn, {
        use schema::operations as t;
        t::table.filter(t::id.eq(id)).first::<Stored>(conn).await.optional()?
    });
    row.map(OperationRow::try_from).transpose()
}

/// Operations newest first (of one kind when given), those older than `before` (an id) when given.
pub async fn list(
    conn: &mut Conn,
    kind: Option<OperationKind>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<OperationRow>> {
    let rows = db_run!(conn, {
        use schema::operations as t;
        let mut q = t::table.order(t::id.desc()).limit(limit).into_boxed();
        if let Some(k) = kind {
            q = q.filter(t::kind.eq(k.as_str()));
        }
        if let Some(b) = before {
            q = q.filter(t::id.lt(b));
        }
        q.load::<Stored>(conn).await?
    });
    rows.into_iter().map(OperationRow::try_from).collect()
}

/// Records a step of `runner`'s run of operation `id` and extends its lease to `until`, in one
/// transaction. Returns whether a cancel was asked for; None, and nothing written, when another
/// instance holds the operation now (or it ended).
pub async fn record(
    conn: &mut Conn,
    id: &str,
    runner: &str,
    step: &Step<'_>,
    until: NaiveDateTime,
    now: NaiveDateTime,
) -> Result<Option<bool>> {
    let n = step.items.len() as i64;
    let out = db_run!(conn, {
        conn.transaction(async |conn| {
            use schema::{operation_items as i, operations as t};
            // Write first (SQLite takes its write lock with the first write, see db/files.rs).
            let Some((items, cancel)) = diesel::update(
                t::table
                    .filter(t::id.eq(id))
                    .filter(t::runner.eq(runner))
                    .filter(t::state.eq(OperationState::Running.as_str())),
            )
            .set((
                t::phase.eq(step.phase),
                t::done.eq(step.done),
                t::total.eq(step.total),
                t::progress.eq(step.progress),
                t::items.eq(t::items + n),
                t::lease_until.eq(until),
                t::updated_at.eq(now),
            ))
            .returning((t::items, t::cancel_requested))
            .get_result::<(i64, bool)>(&mut *conn)
            .await
            .optional()?
            else {
                return Ok(None);
            };
            // One statement per item: diesel's multi-row insert is not available through the async
            // SQLite wrapper; a step records at most about a thousand, in this one transaction.
            for (k, it) in step.items.iter().enumerate() {
                diesel::insert_into(i::table)
                    .values((
                        i::operation_id.eq(id),
                        i::seq.eq(items - n + 1 + k as i64),
                        i::kind.eq(it.kind.as_str()),
                        i::value.eq(&it.value),
                        i::detail.eq(&it.detail),
                    ))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<_, diesel::result::Error>(Some(cancel))
        })
        .await?
    });
    Ok(out)
}

/// Extends `runner`'s lease on operation `id` to `until`. Returns whether a cancel was asked for;
/// None when another instance holds it now (or it ended).
pub async fn renew(conn: &mut Conn, id: &str, runner: &str, until: NaiveDateTime) -> Result<Option<bool>> {
    let out = db_run!(conn, {
        use schema::operations as t;
        diesel::update(
            t::table
                .filter(t::id.eq(id))
                .filter(t::runner.eq(runner))
                .filter(t::state.eq(OperationState::Running.as_str())),
        )
        .set(t::lease_until.eq(until))
        .returning(t::cancel_requested)
        .get_result::<bool>(conn)
        .await
        .optional()?
    });
    Ok(out)
}

/// Gives up `runner`'s lease on operation `id` (this instance is stopping): it ends `now`, so
/// another instance takes the operation over at its next check.
pub async fn release(conn: &mut Conn, id: &str, runner: &str, now: NaiveDateTime) -> Result<()> {
    db_run!(conn, {
        use schema::operations as t;
        diesel::update(t::table.filter(t::id.eq(id)).filter(t::runner.eq(runner)))
            .set(t::lease_until.eq(now))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Running operations whose runner's lease lapsed by `now`.
pub async fn lapsed(conn: &mut Conn, now: NaiveDateTime) -> Result<Vec<OperationRow>> {
    let rows = db_run!(conn, {
        use schema::operations as t;
        t::table
            .filter(t::state.eq(OperationState::Running.as_str()))
            .filter(t::lease_until.lt(now).or(t::lease_until.is_null()))
            .load::<Stored>(conn)
            .await?
    });
    rows.into_iter().map(OperationRow::try_from).collect()
}

/// Takes the lapsed operation `r` over for `runner` until `until` (compare-and-set on the runner and
/// lease it was read with): true for exactly one of the instances that try.
pub async fn take_over(conn: &mut Conn, r: &OperationRow, runner: &str, until: NaiveDateTime) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::operations as t;
        let mut q = diesel::update(t::table)
            .filter(t::id.eq(&r.id))
            .filter(t::state.eq(OperationState::Running.as_str()))
            .into_boxed();
        q = match &r.runner {
            Some(x) => q.filter(t::runner.eq(x)),
            None => q.filter(t::runner.is_null()),
        };
        q = match r.lease_until {
            Some(x) => q.filter(t::lease_until.eq(x)),
            None => q.filter(t::lease_until.is_null()),
        };
        q.set((t::runner.eq(runner), t::lease_until.eq(until))).execute(conn).await?
    });
    Ok(n == 1)
}

/// Records how `runner`'s run of operation `id` ended; false, and nothing written, when another
/// instance holds it now.
pub async fn finish(
    conn: &mut Conn,
    id: &str,
    runner: &str,
    state: OperationState,
    error: Option<&str>,
    now: NaiveDateTime,
) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::operations as t;
        diesel::update(
            t::table
                .filter(t::id.eq(id))
                .filter(t::runner.eq(runner))
                .filter(t::state.eq(OperationState::Running.as_str())),
        )
        .set((
            t::state.eq(state.as_str()),
            t::error.eq(error),
            // A cancelled operation was asked to be, whether or not that request was recorded
            // before it stopped (a cancel asked of the instance running it stops it at once).
            t::cancel_requested
                .eq(t::cancel_requested.or((state == OperationState::Cancelled).into_sql::<diesel::sql_types::Bool>())),
            t::lease_until.eq(None::<NaiveDateTime>),
            t::updated_at.eq(now),
            t::finished_at.eq(Some(now)),
        ))
        .execute(conn)
        .await?
    });
    Ok(n == 1)
}

/// Asks operation `id` to stop. One that no instance holds any more (its lease lapsed) ends
/// cancelled at once; a held one ends when its runner next looks (within a third of the lease).
/// None when there is no such operation.
pub async fn request_cancel(conn: &mut Conn, id: &str, now: NaiveDateTime) -> Result<Option<OperationRow>> {
    db_run!(conn, {
        use schema::operations as t;
        let running = || t::table.filter(t::id.eq(id)).filter(t::state.eq(OperationState::Running.as_str()));
        diesel::update(running()).set(t::cancel_requested.eq(true)).execute(&mut *conn).await?;
        diesel::update(running().filter(t::lease_until.lt(now).or(t::lease_until.is_null())))
            .set((
                t::state.eq(OperationState::Cancelled.as_str()),
                t::error.eq("cancelled on request (no instance was running it)"),
                t::lease_until.eq(None::<NaiveDateTime>),
                t::updated_at.eq(now),
                t::finished_at.eq(Some(now)),
            ))
            .execute(&mut *conn)
            .await?;
    });
    get(conn, id).await
}

/// Items of operation `id` after sequence number `after`, up to `limit`.
pub async fn items(conn: &mut Conn, id: &str, after: i64, limit: i64) -> Result<Vec<Item>> {
    let rows = db_run!(conn, {
        use schema::operation_items as i;
        i::table
            .filter(i::operation_id.eq(id))
            .filter(i::seq.gt(after))
            .order(i::seq)
            .limit(limit)
            .select((i::seq, i::kind, i::value, i::detail))
            .load::<(i64, String, String, String)>(conn)
            .await?
    });
    rows.into_iter().map(|(seq, kind, value, detail)| Ok(Item { seq, kind: kind.parse()?, value, detail })).collect()
}

/// Deletes operations that ended before `before`, with their items. Returns how many went.
pub async fn prune(conn: &mut Conn, before: NaiveDateTime) -> Result<usize> {
    // Read first: nothing to prune is the usual case, and a write would wait for the database's
    // write lock (SQLite) while holding a pooled connection.
    let due: i64 = db_run!(conn, {
        use schema::operations as t;
        t::table.filter(t::finished_at.lt(before)).count().get_result(conn).await?
    });
    if due == 0 {
        return Ok(0);
    }
    let n = db_run!(conn, {
        conn.transaction(async |conn| {
            use schema::{operation_items as i, operations as t};
            let ended = t::table.filter(t::finished_at.lt(before)).select(t::id);
            diesel::delete(i::table.filter(i::operation_id.eq_any(ended))).execute(&mut *conn).await?;
            diesel::delete(t::table.filter(t::finished_at.lt(before))).execute(&mut *conn).await
        })
        .await?
    });
    Ok(n)
}
