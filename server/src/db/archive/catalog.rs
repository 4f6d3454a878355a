//! The archive catalog: policies (with the run lease they carry), runs and segment manifests. Rows
//! are loaded as their stored columns and converted in `rows`; writes spell the enums
//! back with `as_str`.

use chrono::NaiveDateTime;
use diesel::{OptionalExtension, prelude::*};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::rows::{PolicyColumns, PolicyRow, RunColumns, RunRow, SegmentColumns, SegmentRow, convert};
use crate::{
    db::{Conn, Result},
    db_run,
    model::archive::{RunState, SegmentState},
};

// ---------------------------------------------------------------------------------------------
// Policies and their lease
// ---------------------------------------------------------------------------------------------

macro_rules! policy_values {
    ($t:ident, $p:expr, $key_columns:expr, $filters:expr) => {
        (
            $t::name.eq(&$p.name),
            $t::schema_name.eq(&$p.schema_name),
            $t::table_name.eq(&$p.table_name),
            $t::time_column.eq(&$p.time_column),
            $t::key_columns.eq($key_columns),
            $t::archive_after_secs.eq($p.archive_after_secs),
            $t::delete_after_secs.eq($p.delete_after_secs),
            $t::filters.eq($filters),
            $t::batch_size.eq($p.batch_size),
            $t::mode.eq($p.mode.as_str()),
            $t::updated_at.eq($p.updated_at),
        )
    };
}

/// The policy's JSON columns as stored: key columns, filters.
fn policy_json(p: &PolicyRow) -> (String, String) {
    (
        serde_json::to_string(&p.key_columns).expect("strings serialize"),
        serde_json::to_string(&p.filters).expect("strings serialize"),
    )
}

/// Stores a new policy.
pub async fn insert_policy(conn: &mut Conn, p: &PolicyRow) -> Result<()> {
    let (keys, filters) = policy_json(p);
    db_run!(conn, {
        use schema::archive_policies as t;
        diesel::insert_into(t::table)
            .values((t::id.eq(&p.id), t::created_at.eq(p.created_at), policy_values!(t, p, &keys, &filters)))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Replaces a policy's settable fields.
pub async fn update_policy(conn: &mut Conn, p: &PolicyRow) -> Result<bool> {
    let (keys, filters) = policy_json(p);
    let n = db_run!(conn, {
        use schema::archive_policies as t;
        diesel::update(t::table.filter(t::id.eq(&p.id)))
            .set(policy_values!(t, p, &keys, &filters))
            .execute(conn)
            .await?
    });
    Ok(n == 1)
}

/// The policy with this id or name.
pub async fn get_policy(conn: &mut Conn, id_or_name: &str) -> Result<Option<PolicyRow>> {
    let row = db_run!(conn, {
        use schema::archive_policies as t;
        t::table
            .filter(t::id.eq(id_or_name).or(t::name.eq(id_or_name)))
            .first::<PolicyColumns>(conn)
            .await
            .optional()?
    });
    row.map(PolicyRow::try_from).transpose()
}

/// Every policy, by name.
pub async fn list_policies(conn: &mut Conn) -> Result<Vec<PolicyRow>> {
    convert(db_run!(conn, {
        use schema::archive_policies as t;
        t::table.order(t::name).load::<PolicyColumns>(conn).await?
    }))
}

/// Deletes a policy unless segments remain or a run holds it. Returns the reason it was kept.
pub async fn delete_policy(conn: &mut Conn, id: &str, now: NaiveDateTime) -> Result<Option<String>> {
    Ok(db_run!(conn, {
        use schema::{archive_policies as p, archive_segments as s};
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            // Write first (see `lock_first` in acquire_lease).
            diesel::update(p::table.filter(p::id.eq(id))).set(p::updated_at.eq(p::updated_at)).execute(&mut *c).await?;
            let busy = p::table
                .filter(p::id.eq(id).and(p::lease_until.gt(now)))
                .select(p::lease_owner)
                .first::<Option<String>>(&mut *c)
                .await
                .optional()?;
            if let Some(owner) = busy {
                return Ok(Some(format!("run {} is working on this policy", owner.unwrap_or_default())));
            }
            let segments: i64 = s::table
                .filter(s::policy_id.eq(id).and(s::state.ne(SegmentState::Restored.as_str())))
                .count()
                .get_result(&mut *c)
                .await?;
            if segments > 0 {
                return Ok(Some(format!(
                    "{segments} archived segments remain; restore them or let retention delete them first"
                )));
            }
            diesel::delete(s::table.filter(s::policy_id.eq(id))).execute(&mut *c).await?;
            diesel::delete(p::table.filter(p::id.eq(id))).execute(&mut *c).await?;
            Ok(None)
        })
        .await?
    }))
}

/// Takes the policy's lease for `run` until `until` when it is free or expired. Returns the run
/// that held an expired lease (to be recorded as interrupted), or Err(holder) when it is busy.
pub async fn acquire_lease(
    conn: &mut Conn,
    policy: &str,
    run: &str,
    until: NaiveDateTime,
    now: NaiveDateTime,
) -> Result<std::result::Result<Option<String>, String>> {
    Ok(db_run!(conn, {
        use schema::archive_policies as p;
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            // lock_first: a write to the policy row before any read. On PostgreSQL it locks the row
            // (serializing lease changes); on SQLite it takes the write lock up front, because a
            // transaction that reads first cannot upgrade to writing once another connection has
            // committed (SQLITE_BUSY at once; the busy timeout does not apply).
            diesel::update(p::table.filter(p::id.eq(policy)))
                .set(p::updated_at.eq(p::updated_at))
                .execute(&mut *c)
                .await?;
            let (owner, lease_until) = p::table
                .filter(p::id.eq(policy))
                .select((p::lease_owner, p::lease_until))
                .first::<(Option<String>, Option<NaiveDateTime>)>(&mut *c)
                .await?;
            if let (Some(o), Some(u)) = (&owner, lease_until)
                && u > now
            {
                return Ok(Err(o.clone()));
            }
            // The compare-and-set makes two instances racing for an expired lease agree on one winner.
            let set = (p::lease_owner.eq(run), p::lease_until.eq(until));
            let n = match &owner {
                Some(o) => {
                    diesel::update(p::table.filter(p::id.eq(policy)).filter(p::lease_owner.eq(o)))
                        .set(set)
                        .execute(&mut *c)
                        .await?
                }
                None => {
                    diesel::update(p::table.filter(p::id.eq(policy)).filter(p::lease_owner.is_null()))
                        .set(set)
                        .execute(&mut *c)
                        .await?
                }
            };
            if n != 1 {
                return Ok(Err(owner.unwrap_or_default()));
            }
            Ok(Ok(owner))
        })
        .await?
    }))
}

/// Extends the lease while `run` still holds it; false when it was lost.
pub async fn renew_lease(conn: &mut Conn, policy: &str, run: &str, until: NaiveDateTime) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::archive_policies as p;
        diesel::update(p::table.filter(p::id.eq(policy)).filter(p::lease_owner.eq(run)))
            .set(p::lease_until.eq(until))
            .execute(conn)
            .await?
    });
    Ok(n == 1)
}

/// Gives the lease up.
pub async fn release_lease(conn: &mut Conn, policy: &str, run: &str) -> Result<()> {
    db_run!(conn, {
        use schema::archive_policies as p;
        diesel::update(p::table.filter(p::id.eq(policy)).filter(p::lease_owner.eq(run)))
            .set((p::lease_owner.eq(None::<String>), p::lease_until.eq(None::<NaiveDateTime>)))
            .execute(conn)
            .await?;
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

/// Stores a new run.
pub async fn insert_run(conn: &mut Conn, r: &RunRow) -> Result<()> {
    db_run!(conn, {
        use schema::archive_runs as t;
        diesel::insert_into(t::table)
            .values((
                t::id.eq(&r.id),
                t::policy_id.eq(&r.policy_id),
                t::kind.eq(r.kind.as_str()),
                t::state.eq(r.state.as_str()),
                t::cutoff.eq(r.cutoff),
                t::rows_done.eq(r.rows_done),
                t::rows_skipped.eq(r.rows_skipped),
                t::segments_done.eq(r.segments_done),
                t::raw_bytes.eq(r.raw_bytes),
                t::compressed_bytes.eq(r.compressed_bytes),
                t::longest_txn_ms.eq(r.longest_txn_ms),
                t::cancel_requested.eq(r.cancel_requested),
                t::error.eq(&r.error),
                t::started_at.eq(r.started_at),
                t::updated_at.eq(r.updated_at),
                t::finished_at.eq(r.finished_at),
            ))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// The run `id`.
pub async fn get_run(conn: &mut Conn, id: &str) -> Result<Option<RunRow>> {
    let row = db_run!(conn, {
        use schema::archive_runs as t;
        t::table.filter(t::id.eq(id)).first::<RunColumns>(conn).await.optional()?
    });
    row.map(RunRow::try_from).transpose()
}

/// Runs newest first (ids sort by start), optionally of one policy, older than `before`.
pub async fn list_runs(conn: &mut Conn, policy: Option<&str>, before: Option<&str>, limit: i64) -> Result<Vec<RunRow>> {
    convert(db_run!(conn, {
        use schema::archive_runs as t;
        let mut q = t::table.into_boxed();
        if let Some(p) = policy {
            q = q.filter(t::policy_id.eq(p));
        }
        if let Some(b) = before {
            q = q.filter(t::id.lt(b));
        }
        q.order(t::id.desc()).limit(limit).load::<RunColumns>(conn).await?
    }))
}

/// Progress of one batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Rows.
    pub rows: i64,
    /// Rows skipped.
    pub skipped: i64,
    /// Segments.
    pub segments: i64,
    /// Raw bytes.
    pub raw: i64,
    /// Compressed bytes.
    pub compressed: i64,
    /// This batch's transaction time.
    pub txn_ms: i64,
}

/// Counts progress, inside a batch's transaction or on its own (restore and retention count per
/// segment). Returns whether a cancel was requested (true when the run is gone).
pub async fn add_progress(conn: &mut Conn, run: &str, p: &Progress, now: NaiveDateTime) -> Result<bool> {
    Ok(db_run!(conn, {
        use schema::archive_runs as t;
        let cancel: Option<bool> = diesel::update(t::table.filter(t::id.eq(run)))
            .set((
                t::rows_done.eq(t::rows_done + p.rows),
                t::rows_skipped.eq(t::rows_skipped + p.skipped),
                t::segments_done.eq(t::segments_done + p.segments),
                t::raw_bytes.eq(t::raw_bytes + p.raw),
                t::compressed_bytes.eq(t::compressed_bytes + p.compressed),
                t::updated_at.eq(now),
            ))
            .returning(t::cancel_requested)
            .get_result(conn)
            .await
            .optional()?;
        if p.txn_ms > 0 {
            diesel::update(t::table.filter(t::id.eq(run)).filter(t::longest_txn_ms.lt(p.txn_ms)))
                .set(t::longest_txn_ms.eq(p.txn_ms))
                .execute(conn)
                .await?;
        }
        cancel.unwrap_or(true)
    }))
}

/// Ends a run (only if still running).
pub async fn finish_run(
    conn: &mut Conn,
    id: &str,
    state: RunState,
    error: Option<&str>,
    now: NaiveDateTime,
) -> Result<()> {
    db_run!(conn, {
        use schema::archive_runs as t;
        diesel::update(t::table.filter(t::id.eq(id)).filter(t::state.eq(RunState::Running.as_str())))
            .set((t::state.eq(state.as_str()), t::error.eq(error), t::updated_at.eq(now), t::finished_at.eq(Some(now))))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Asks a run to stop. False when no such run exists.
pub async fn request_cancel(conn: &mut Conn, id: &str) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::archive_runs as t;
        diesel::update(t::table.filter(t::id.eq(id))).set(t::cancel_requested.eq(true)).execute(conn).await?
    });
    Ok(n == 1)
}

/// Runs still marked running whose policy lease is gone or expired: their server went away. One
/// statement, so it sees one consistent state: a run that ends meanwhile (state written before its
/// lease is released) is never reported.
pub async fn orphaned_runs(conn: &mut Conn, now: NaiveDateTime) -> Result<Vec<String>> {
    Ok(db_run!(conn, {
        use diesel::dsl::{exists, not};
        use schema::{archive_policies as p, archive_runs as r};
        r::table
            .filter(r::state.eq(RunState::Running.as_str()))
            .filter(not(exists(
                p::table
                    .filter(p::id.eq(r::policy_id))
                    .filter(p::lease_owner.eq(r::id.nullable()))
                    .filter(p::lease_until.gt(now)),
            )))
            .select(r::id)
            .load::<String>(conn)
            .await?
    }))
}

// ---------------------------------------------------------------------------------------------
// Segments
// ---------------------------------------------------------------------------------------------

/// A segment about to be written: its manifest is stored before its object.
#[derive(Debug, Clone, Copy)]
pub struct PendingSegment<'a> {
    /// Id.
    pub id: &'a str,
    /// Policy.
    pub policy_id: &'a str,
    /// Run writing it.
    pub run_id: &'a str,
    /// The table's columns, as "name type".
    pub columns: &'a [String],
    /// Now.
    pub created_at: NaiveDateTime,
}

/// Stores a segment manifest in state pending, before its object is written.
pub async fn insert_pending_segment(conn: &mut Conn, s: &PendingSegment<'_>) -> Result<()> {
    let column_list = serde_json::to_string(s.columns).expect("strings serialize");
    db_run!(conn, {
        use schema::archive_segments as t;
        diesel::insert_into(t::table)
            .values((
                t::id.eq(s.id),
                t::policy_id.eq(s.policy_id),
                t::run_id.eq(s.run_id),
                t::object_key.eq(""),
                t::state.eq(SegmentState::Pending.as_str()),
                t::row_count.eq(0i64),
                t::raw_bytes.eq(0i64),
                t::compressed_bytes.eq(0i64),
                t::sha256.eq(""),
                t::first_key.eq(""),
                t::last_key.eq(""),
                t::min_time.eq(None::<NaiveDateTime>),
                t::max_time.eq(None::<NaiveDateTime>),
                t::column_list.eq(&column_list),
                t::created_at.eq(s.created_at),
                t::restored_at.eq(None::<NaiveDateTime>),
            ))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Removes a manifest row.
pub async fn delete_segment(conn: &mut Conn, id: &str) -> Result<()> {
    db_run!(conn, {
        use schema::archive_segments as t;
        diesel::delete(t::table.filter(t::id.eq(id))).execute(conn).await?;
    });
    Ok(())
}

/// Segments of a policy in `states`, oldest rows first.
pub async fn segments(
    conn: &mut Conn,
    policy: &str,
    states: &[SegmentState],
    offset: i64,
    limit: i64,
) -> Result<Vec<SegmentRow>> {
    let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    convert(db_run!(conn, {
        use schema::archive_segments as t;
        t::table
            .filter(t::policy_id.eq(policy).and(t::state.eq_any(&states[..])))
            .order((t::min_time.asc(), t::id.asc()))
            .offset(offset)
            .limit(limit)
            .load::<SegmentColumns>(conn)
            .await?
    }))
}

/// A page of the policy's segments in `states` after segment id `after` (id order), at most
/// `limit`, those whose newest row is older than `due_before` when given (retention). Callers page
/// through a policy's segments this way instead of holding them all.
pub async fn segments_page(
    conn: &mut Conn,
    policy: &str,
    states: &[SegmentState],
    due_before: Option<NaiveDateTime>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<SegmentRow>> {
    let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    convert(db_run!(conn, {
        use schema::archive_segments as t;
        let mut q = t::table
            .filter(t::policy_id.eq(policy).and(t::state.eq_any(&states[..])))
            .order(t::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(b) = due_before {
            q = q.filter(t::max_time.lt(b));
        }
        if let Some(a) = after {
            q = q.filter(t::id.gt(a));
        }
        q.load::<SegmentColumns>(conn).await?
    }))
}

/// Where a walk through a policy's committed segments, oldest rows first, has got to: first the
/// segments without row times (by id), then the others by (oldest row, id). Both orders follow an
/// index, so each page is read without sorting the policy's segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeOrder {
    /// Among the segments without row times, after this id (None: from the first).
    Untimed(Option<String>),
    /// Among the others, after this (oldest row, id) (None: from the first).
    Timed(Option<(NaiveDateTime, String)>),
}

/// A page of the policy's committed segments at `at` (see [`TimeOrder`]), at most `limit`; the
/// timed ones only if they overlap [`from`, `to`) (either unbounded when None).
pub async fn committed_segments_page(
    conn: &mut Conn,
    policy: &str,
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
    at: &TimeOrder,
    limit: i64,
) -> Result<Vec<SegmentRow>> {
    let committed = SegmentState::Committed.as_str();
    convert(db_run!(conn, {
        use schema::archive_segments as t;
        let mut q = t::table.filter(t::policy_id.eq(policy).and(t::state.eq(committed))).limit(limit).into_boxed();
        match at {
            TimeOrder::Untimed(after) => {
                q = q.filter(t::min_time.is_null()).order(t::id.asc());
                if let Some(a) = after {
                    q = q.filter(t::id.gt(a.clone()));
                }
            }
            TimeOrder::Timed(after) => {
                q = q.filter(t::min_time.is_not_null()).order((t::min_time.asc(), t::id.asc()));
                if let Some((m, id)) = after {
                    q = q.filter(t::min_time.gt(*m).or(t::min_time.eq(*m).and(t::id.gt(id.clone()))));
                }
                if let Some(f) = from {
                    q = q.filter(t::max_time.ge(f));
                }
                if let Some(to) = to {
                    q = q.filter(t::min_time.lt(to));
                }
            }
        }
        q.load::<SegmentColumns>(conn).await?
    }))
}

/// Segments by id (any policy; the caller checks).
pub async fn segments_by_id(conn: &mut Conn, ids: &[String]) -> Result<Vec<SegmentRow>> {
    convert(db_run!(conn, {
        use schema::archive_segments as t;
        t::table.filter(t::id.eq_any(ids)).order((t::min_time.asc(), t::id.asc())).load::<SegmentColumns>(conn).await?
    }))
}

/// Moves a pending segment to `discarding`; false when it is no longer pending (it committed).
pub async fn discard_pending(conn: &mut Conn, id: &str) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::archive_segments as t;
        diesel::update(t::table.filter(t::id.eq(id)).filter(t::state.eq(SegmentState::Pending.as_str())))
            .set(t::state.eq(SegmentState::Discarding.as_str()))
            .execute(conn)
            .await?
    });
    Ok(n == 1)
}

/// Sets a segment's state (retention marks `deleting` before the object goes).
pub async fn set_segment_state(conn: &mut Conn, id: &str, state: SegmentState) -> Result<()> {
    db_run!(conn, {
        use schema::archive_segments as t;
        diesel::update(t::table.filter(t::id.eq(id))).set(t::state.eq(state.as_str())).execute(conn).await?;
    });
    Ok(())
}
