//! Archival persistence: the catalog (policies with their run lease, runs, segment manifests) and
//! the SQL run against the application's table.
//!
//! Application SQL is generated once per run from identifiers resolved against the live schema
//! ([`resolve`]) and quoted; every value a client supplied (filter values, cutoff, cursor keys)
//! travels in one JSON bind parameter, never in SQL text.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::{
    OptionalExtension, QueryableByName,
    prelude::*,
    sql_types::{BigInt, Bool, Nullable, Text},
};
use diesel_async::{AsyncConnection, RunQueryDsl, TransactionManager};

use super::{Conn, Error, Result, quote};
use crate::db_run;

/// Run states as stored.
pub mod state {
    /// Working.
    pub const RUNNING: &str = "running";
    /// Finished.
    pub const SUCCEEDED: &str = "succeeded";
    /// Stopped by an error or interrupted.
    pub const FAILED: &str = "failed";
    /// Stopped on request.
    pub const CANCELLED: &str = "cancelled";
    /// Segment being written.
    pub const PENDING: &str = "pending";
    /// Segment holds rows no longer in the table.
    pub const COMMITTED: &str = "committed";
    /// Segment's rows are back in the table.
    pub const RESTORED: &str = "restored";
    /// Segment's object is being deleted by retention.
    pub const DELETING: &str = "deleting";
    /// Pending segment of a failed or interrupted batch, being removed.
    pub const DISCARDING: &str = "discarding";
}

// ---------------------------------------------------------------------------------------------
// Catalog rows
// ---------------------------------------------------------------------------------------------

/// A policy as stored.
#[derive(Debug, Clone, Queryable)]
pub struct PolicyRow {
    /// Id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Schema of the table.
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Time column.
    pub time_column: String,
    /// JSON array of key column names.
    pub key_columns: String,
    /// Rows older than this many seconds are due.
    pub archive_after_secs: i64,
    /// Segments older than this many seconds are deleted.
    pub delete_after_secs: Option<i64>,
    /// JSON array of filters.
    pub filters: String,
    /// Rows per batch.
    pub batch_size: i64,
    /// `archive` or `purge`.
    pub mode: String,
    /// Run holding the lease.
    pub lease_owner: Option<String>,
    /// Lease expiry.
    pub lease_until: Option<NaiveDateTime>,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Updated.
    pub updated_at: NaiveDateTime,
}

/// A run as stored.
#[derive(Debug, Clone, Queryable)]
pub struct RunRow {
    /// Id (UUIDv7: sorts by start time).
    pub id: String,
    /// Policy.
    pub policy_id: String,
    /// `archive`, `purge`, `restore`, `retention`.
    pub kind: String,
    /// See [`state`].
    pub state: String,
    /// Rows older than this were due.
    pub cutoff: Option<NaiveDateTime>,
    /// Rows handled.
    pub rows_done: i64,
    /// Rows skipped (restore).
    pub rows_skipped: i64,
    /// Segments handled.
    pub segments_done: i64,
    /// Raw bytes.
    pub raw_bytes: i64,
    /// Compressed bytes.
    pub compressed_bytes: i64,
    /// Longest batch transaction in milliseconds.
    pub longest_txn_ms: i64,
    /// Cancel asked for.
    pub cancel_requested: bool,
    /// Failure.
    pub error: Option<String>,
    /// Started.
    pub started_at: NaiveDateTime,
    /// Last progress.
    pub updated_at: NaiveDateTime,
    /// Ended.
    pub finished_at: Option<NaiveDateTime>,
}

/// A segment manifest as stored.
#[derive(Debug, Clone, Queryable)]
pub struct SegmentRow {
    /// Id.
    pub id: String,
    /// Policy.
    pub policy_id: String,
    /// Run that wrote it.
    pub run_id: String,
    /// Object key.
    pub object_key: String,
    /// See [`state`].
    pub state: String,
    /// Rows.
    pub row_count: i64,
    /// JSON Lines bytes.
    pub raw_bytes: i64,
    /// Object bytes.
    pub compressed_bytes: i64,
    /// SHA-256 of the object (hex).
    pub sha256: String,
    /// First key (JSON array).
    pub first_key: String,
    /// Last key (JSON array).
    pub last_key: String,
    /// Oldest row time.
    pub min_time: Option<NaiveDateTime>,
    /// Newest row time.
    pub max_time: Option<NaiveDateTime>,
    /// JSON array of "name type".
    pub column_list: String,
    /// Created (committed).
    pub created_at: NaiveDateTime,
    /// Restored.
    pub restored_at: Option<NaiveDateTime>,
}

macro_rules! policy_values {
    ($t:ident, $p:expr) => {
        (
            $t::name.eq(&$p.name),
            $t::schema_name.eq(&$p.schema_name),
            $t::table_name.eq(&$p.table_name),
            $t::time_column.eq(&$p.time_column),
            $t::key_columns.eq(&$p.key_columns),
            $t::archive_after_secs.eq($p.archive_after_secs),
            $t::delete_after_secs.eq($p.delete_after_secs),
            $t::filters.eq(&$p.filters),
            $t::batch_size.eq($p.batch_size),
            $t::mode.eq(&$p.mode),
            $t::updated_at.eq($p.updated_at),
        )
    };
}

/// Stores a new policy.
pub async fn insert_policy(conn: &mut Conn, p: &PolicyRow) -> Result<()> {
    db_run!(conn, {
        use schema::archive_policies as t;
        diesel::insert_into(t::table)
            .values((t::id.eq(&p.id), t::created_at.eq(p.created_at), policy_values!(t, p)))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Replaces a policy's settable fields.
pub async fn update_policy(conn: &mut Conn, p: &PolicyRow) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::archive_policies as t;
        diesel::update(t::table.filter(t::id.eq(&p.id))).set(policy_values!(t, p)).execute(conn).await?
    });
    Ok(n == 1)
}

/// The policy with this id or name.
pub async fn get_policy(conn: &mut Conn, id_or_name: &str) -> Result<Option<PolicyRow>> {
    Ok(db_run!(conn, {
        use schema::archive_policies as t;
        t::table.filter(t::id.eq(id_or_name).or(t::name.eq(id_or_name))).first::<PolicyRow>(conn).await.optional()?
    }))
}

/// Every policy, by name.
pub async fn list_policies(conn: &mut Conn) -> Result<Vec<PolicyRow>> {
    Ok(db_run!(conn, {
        use schema::archive_policies as t;
        t::table.order(t::name).load::<PolicyRow>(conn).await?
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
                .filter(s::policy_id.eq(id).and(s::state.ne(state::RESTORED)))
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

/// Stores a new run.
pub async fn insert_run(conn: &mut Conn, r: &RunRow) -> Result<()> {
    db_run!(conn, {
        use schema::archive_runs as t;
        diesel::insert_into(t::table)
            .values((
                t::id.eq(&r.id),
                t::policy_id.eq(&r.policy_id),
                t::kind.eq(&r.kind),
                t::state.eq(&r.state),
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
    Ok(db_run!(conn, {
        use schema::archive_runs as t;
        t::table.filter(t::id.eq(id)).first::<RunRow>(conn).await.optional()?
    }))
}

/// Runs newest first (ids sort by start), optionally of one policy, older than `before`.
pub async fn list_runs(conn: &mut Conn, policy: Option<&str>, before: Option<&str>, limit: i64) -> Result<Vec<RunRow>> {
    Ok(db_run!(conn, {
        use schema::archive_runs as t;
        let mut q = t::table.into_boxed();
        if let Some(p) = policy {
            q = q.filter(t::policy_id.eq(p));
        }
        if let Some(b) = before {
            q = q.filter(t::id.lt(b));
        }
        q.order(t::id.desc()).limit(limit).load::<RunRow>(conn).await?
    }))
}

/// Records progress outside a batch transaction (restore and retention count per segment).
pub async fn add_progress(conn: &mut Conn, run: &str, p: &Progress, now: NaiveDateTime) -> Result<bool> {
    Ok(db_run!(conn, { add_progress_on(conn, run, p, now).await? }))
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

macro_rules! add_progress_body {
    ($conn:ident, $run:ident, $p:ident, $now:ident) => {{
        use schema::archive_runs as t;
        let cancel: Option<bool> = diesel::update(t::table.filter(t::id.eq($run)))
            .set((
                t::rows_done.eq(t::rows_done + $p.rows),
                t::rows_skipped.eq(t::rows_skipped + $p.skipped),
                t::segments_done.eq(t::segments_done + $p.segments),
                t::raw_bytes.eq(t::raw_bytes + $p.raw),
                t::compressed_bytes.eq(t::compressed_bytes + $p.compressed),
                t::updated_at.eq($now),
            ))
            .returning(t::cancel_requested)
            .get_result($conn)
            .await
            .optional()?;
        if $p.txn_ms > 0 {
            diesel::update(t::table.filter(t::id.eq($run)).filter(t::longest_txn_ms.lt($p.txn_ms)))
                .set(t::longest_txn_ms.eq($p.txn_ms))
                .execute($conn)
                .await?;
        }
        Ok::<bool, diesel::result::Error>(cancel.unwrap_or(true))
    }};
}

async fn add_progress_on<C>(conn: &mut C, run: &str, p: &Progress, now: NaiveDateTime) -> QueryResult<bool>
where
    C: ProgressConn,
{
    C::add_progress(conn, run, p, now).await
}

/// Backend-specific progress update (the body is the same; the schema module differs).
trait ProgressConn: AsyncConnection {
    async fn add_progress(conn: &mut Self, run: &str, p: &Progress, now: NaiveDateTime) -> QueryResult<bool>;
}

impl ProgressConn for diesel_async::AsyncPgConnection {
    async fn add_progress(conn: &mut Self, run: &str, p: &Progress, now: NaiveDateTime) -> QueryResult<bool> {
        use super::schema::pg as schema;
        add_progress_body!(conn, run, p, now)
    }
}

impl ProgressConn for super::SqliteConn {
    async fn add_progress(conn: &mut Self, run: &str, p: &Progress, now: NaiveDateTime) -> QueryResult<bool> {
        use super::schema::sqlite as schema;
        add_progress_body!(conn, run, p, now)
    }
}

/// Ends a run (only if still running).
pub async fn finish_run(conn: &mut Conn, id: &str, st: &str, error: Option<&str>, now: NaiveDateTime) -> Result<()> {
    db_run!(conn, {
        use schema::archive_runs as t;
        diesel::update(t::table.filter(t::id.eq(id)).filter(t::state.eq(state::RUNNING)))
            .set((t::state.eq(st), t::error.eq(error), t::updated_at.eq(now), t::finished_at.eq(Some(now))))
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
            .filter(r::state.eq(state::RUNNING))
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

/// Stores a segment manifest in state pending, before its object is written.
pub async fn insert_pending_segment(conn: &mut Conn, s: &SegmentRow) -> Result<()> {
    db_run!(conn, {
        use schema::archive_segments as t;
        diesel::insert_into(t::table)
            .values((
                t::id.eq(&s.id),
                t::policy_id.eq(&s.policy_id),
                t::run_id.eq(&s.run_id),
                t::object_key.eq(&s.object_key),
                t::state.eq(state::PENDING),
                t::row_count.eq(0i64),
                t::raw_bytes.eq(0i64),
                t::compressed_bytes.eq(0i64),
                t::sha256.eq(""),
                t::first_key.eq(""),
                t::last_key.eq(""),
                t::min_time.eq(None::<NaiveDateTime>),
                t::max_time.eq(None::<NaiveDateTime>),
                t::column_list.eq(&s.column_list),
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
    states: &[&str],
    offset: i64,
    limit: i64,
) -> Result<Vec<SegmentRow>> {
    Ok(db_run!(conn, {
        use schema::archive_segments as t;
        t::table
            .filter(t::policy_id.eq(policy).and(t::state.eq_any(states)))
            .order((t::min_time.asc(), t::id.asc()))
            .offset(offset)
            .limit(limit)
            .load::<SegmentRow>(conn)
            .await?
    }))
}

/// Segments by id (any policy; the caller checks).
pub async fn segments_by_id(conn: &mut Conn, ids: &[String]) -> Result<Vec<SegmentRow>> {
    Ok(db_run!(conn, {
        use schema::archive_segments as t;
        t::table.filter(t::id.eq_any(ids)).order((t::min_time.asc(), t::id.asc())).load::<SegmentRow>(conn).await?
    }))
}

/// Moves a pending segment to `discarding`; false when it is no longer pending (it committed).
pub async fn discard_pending(conn: &mut Conn, id: &str) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::archive_segments as t;
        diesel::update(t::table.filter(t::id.eq(id)).filter(t::state.eq(state::PENDING)))
            .set(t::state.eq(state::DISCARDING))
            .execute(conn)
            .await?
    });
    Ok(n == 1)
}

/// Sets a segment's state (retention marks `deleting` before the object goes).
pub async fn set_segment_state(conn: &mut Conn, id: &str, st: &str) -> Result<()> {
    db_run!(conn, {
        use schema::archive_segments as t;
        diesel::update(t::table.filter(t::id.eq(id))).set(t::state.eq(st)).execute(conn).await?;
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The application table
// ---------------------------------------------------------------------------------------------

/// How a time column holds time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    /// PostgreSQL timestamptz / timestamp / date, or SQLite text timestamps.
    Timestamp,
    /// Integer Unix seconds.
    UnixSeconds,
}

/// A validated filter: column checked, values kept for the JSON parameter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilterSpec {
    /// Column.
    pub column: String,
    /// `=`, `<>`, `<`, `<=`, `>`, `>=`, `in`, `not in`, `is null`, `is not null`.
    pub op: String,
    /// Values (as text).
    pub values: Vec<String>,
}

/// The allowed operators and how many values each takes (None: one or more).
pub const OPERATORS: &[(&str, Option<usize>)] = &[
    ("=", Some(1)),
    ("<>", Some(1)),
    ("<", Some(1)),
    ("<=", Some(1)),
    (">", Some(1)),
    (">=", Some(1)),
    ("in", None),
    ("not in", None),
    ("is null", Some(0)),
    ("is not null", Some(0)),
];

/// A column of the application table.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    /// Name.
    pub name: String,
    /// Type as the database names it.
    pub ty: String,
    /// Generated (never inserted).
    pub generated: bool,
}

/// SQL for one policy's table, generated from resolved identifiers. Every statement takes one
/// JSON text parameter.
#[derive(Debug, Clone)]
pub struct TableSql {
    /// Columns at resolve time.
    pub columns: Vec<ColumnInfo>,
    /// How the time column holds time.
    pub time_kind: TimeKind,
    /// Due rows from the start: `doc`, `key`, `ts`; params `{cutoff, f, limit}`.
    select_first: String,
    /// Due rows after a key: params also `after`.
    select_after: String,
    /// PostgreSQL: due rows after a key and up to another: params also `upto`.
    select_between: Option<String>,
    /// PostgreSQL: the key of the last due row (by key), `key`.
    last_due_key: Option<String>,
    /// Deletes the selected rows: by `ctid` array on PostgreSQL, by JSON array of keys on SQLite.
    delete_keys: String,
    /// Deletes up to `limit` due rows.
    purge: String,
    /// Counts due rows: `rows`, `bytes`, `min_ts`, `max_ts`.
    plan: String,
    /// Inserts rows of a JSON array of row documents unless their key exists.
    restore: String,
    /// PostgreSQL: how a row's document is put together from what the select returns.
    doc: Option<DocPlan>,
}

/// How strata writes a PostgreSQL row as the JSON `row_to_json` would, byte for byte, while
/// PostgreSQL escapes none of the text and builds no JSON it does not have to: `row_to_json` escapes
/// strings one character at a time (`escape_json` was 9 % of all CPU during an archive run). Every
/// column arrives as its own result column in the binary protocol: text raw (escaped here),
/// integers and booleans in binary (written here), every other type as `to_json(column)`,
/// PostgreSQL's own JSON for it. The row's time and location arrive in binary too.
#[derive(Debug, Clone)]
struct DocPlan {
    /// Per column in table order: `"name":` and how its value arrives.
    columns: Vec<(String, Render)>,
    /// Positions of the key columns among `columns`.
    keys: Vec<usize>,
    /// Counts the table's columns, to notice one added during a run (it would be missing from the
    /// documents).
    count_columns: String,
}

/// How one column's value arrives from the select and becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    /// Text as stored; written as a JSON string.
    Text,
    /// A binary `smallint`/`integer`/`bigint`; written as a number.
    Int,
    /// A binary `boolean`.
    Bool,
    /// `to_json(column)::text`: already JSON.
    Json,
}

impl Render {
    fn of(ty: &str) -> Self {
        match ty {
            "text" => Render::Text,
            t if t.starts_with("character varying") => Render::Text,
            "smallint" | "integer" | "bigint" => Render::Int,
            "boolean" => Render::Bool,
            _ => Render::Json,
        }
    }
}

impl DocPlan {
    /// The select's leading result columns: the table's columns in order, then the row's time and
    /// its location.
    fn select_list(columns: &[ColumnInfo], time: &str) -> String {
        let mut list: Vec<String> = columns
            .iter()
            .map(|c| match Render::of(&c.ty) {
                Render::Json => format!("to_json(t.{})::text", quote(&c.name)),
                _ => format!("t.{}", quote(&c.name)),
            })
            .collect();
        list.push(format!("t.{}", quote(time)));
        list.push("t.ctid".into());
        list.join(", ")
    }

    fn new(columns: &[ColumnInfo], keys: &[ColumnInfo], table: &str) -> Self {
        Self {
            columns: columns
                .iter()
                .map(|c| (format!("{}:", serde_json::Value::from(c.name.as_str())), Render::of(&c.ty)))
                .collect(),
            keys: keys.iter().filter_map(|k| columns.iter().position(|c| c.name == k.name)).collect(),
            count_columns: format!(
                "SELECT count(*)::int8 AS n FROM pg_attribute
                  WHERE attrelid = {}::regclass AND attnum > 0 AND NOT attisdropped",
                sql_string(table)
            ),
        }
    }

    /// Appends the row's document, identical to `row_to_json(t)::text`, to `out`.
    fn document(&self, row: &PgRawRow, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        if row.fields.len() != self.columns.len() + 2 {
            return Err(format!(
                "the select returned {} values for the table's {} columns",
                row.fields.len().saturating_sub(2),
                self.columns.len()
            ));
        }
        out.push(b'{');
        for (i, (prefix, render)) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(prefix.as_bytes());
            render_value(*render, row.field(i), out)?;
        }
        out.push(b'}');
        Ok(())
    }

    /// The row's key as `json_build_array(keys…)::text` writes it.
    fn key(&self, row: &PgRawRow) -> std::result::Result<String, String> {
        let mut out = vec![b'['];
        for (n, &i) in self.keys.iter().enumerate() {
            if n > 0 {
                out.extend_from_slice(b", ");
            }
            render_value(self.columns[i].1, row.field(i), &mut out)?;
        }
        out.push(b']');
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    /// The row's time in Unix microseconds (None for NULL and ±infinity), from its binary value.
    fn time(&self, row: &PgRawRow) -> std::result::Result<Option<i64>, String> {
        const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
        let (oid, value) = row.typed(self.columns.len());
        let Some(v) = value else { return Ok(None) };
        Ok(match (oid, v.len()) {
            // timestamptz and timestamp: microseconds since 2000-01-01 (a timestamp without time
            // zone counts as UTC, as `extract(epoch …)` does).
            (1184 | 1114, 8) => match i64::from_be_bytes(v.try_into().expect("8 bytes")) {
                i64::MAX | i64::MIN => None,
                us => us.checked_add(PG_EPOCH_MICROS),
            },
            // date: days since 2000-01-01.
            (1082, 4) => match i32::from_be_bytes(v.try_into().expect("4 bytes")) {
                i32::MAX | i32::MIN => None,
                d => Some(i64::from(d) * 86_400_000_000 + PG_EPOCH_MICROS),
            },
            // Unix seconds.
            (20 | 23 | 21, _) => int_value(v)?.checked_mul(1_000_000),
            _ => return Err(format!("time column arrived as type oid {oid} ({} bytes)", v.len())),
        })
    }

    /// The row's `ctid` as `tid` text, from its binary value (block number, line pointer).
    fn location(&self, row: &PgRawRow, out: &mut String) -> std::result::Result<(), String> {
        match row.field(self.columns.len() + 1) {
            Some(v) if v.len() == 6 => {
                let block = u32::from_be_bytes(v[..4].try_into().expect("4 bytes"));
                let item = u16::from_be_bytes(v[4..].try_into().expect("2 bytes"));
                use std::fmt::Write as _;
                let _ = write!(out, "\"({block},{item})\"");
                Ok(())
            }
            _ => Err("the row's ctid did not arrive".into()),
        }
    }
}

/// A big-endian binary integer of 2, 4 or 8 bytes.
fn int_value(v: &[u8]) -> std::result::Result<i64, String> {
    Ok(match v.len() {
        2 => i64::from(i16::from_be_bytes(v.try_into().expect("2 bytes"))),
        4 => i64::from(i32::from_be_bytes(v.try_into().expect("4 bytes"))),
        8 => i64::from_be_bytes(v.try_into().expect("8 bytes")),
        n => return Err(format!("an integer of {n} bytes")),
    })
}

fn render_value(render: Render, value: Option<&[u8]>, out: &mut Vec<u8>) -> std::result::Result<(), String> {
    let Some(v) = value else {
        out.extend_from_slice(b"null");
        return Ok(());
    };
    match render {
        Render::Text => push_json_string(out, v),
        Render::Json => out.extend_from_slice(v),
        Render::Int => out.extend_from_slice(itoa::Buffer::new().format(int_value(v)?).as_bytes()),
        Render::Bool => out.extend_from_slice(if v == [0] { b"false" } else { b"true" }),
    }
    Ok(())
}

/// Appends `s` as a JSON string escaped exactly as PostgreSQL's `escape_json` does (and
/// serde_json): `"`, `\` and the control characters, as `\b \f \n \r \t` or `\u00xx`. Text in
/// archived rows rarely needs any of that, so it is checked 32 bytes at a time (a loop the compiler
/// turns into vector instructions) and copied in runs.
fn push_json_string(out: &mut Vec<u8>, s: &[u8]) {
    const WIDE: usize = 32;
    let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    out.reserve(s.len() + 2);
    out.push(b'"');
    let (mut start, mut i) = (0, 0);
    while i < s.len() {
        if let Some(w) = s.get(i..i + WIDE)
            && !w.iter().fold(false, |any, &b| any | special(b))
        {
            i += WIDE;
            continue;
        }
        let b = s[i];
        i += 1;
        if !special(b) {
            continue;
        }
        out.extend_from_slice(&s[start..i - 1]);
        start = i;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
        }
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// A row of the PostgreSQL select, as the binary values it arrived with.
struct PgRawRow {
    /// All values, back to back.
    bytes: Vec<u8>,
    /// Per value: its type oid and its range in `bytes`, or None for NULL.
    fields: Vec<(u32, Option<(u32, u32)>)>,
}

impl PgRawRow {
    fn field(&self, i: usize) -> Option<&[u8]> {
        self.typed(i).1
    }

    fn typed(&self, i: usize) -> (u32, Option<&[u8]>) {
        let Some(&(oid, range)) = self.fields.get(i) else { return (0, None) };
        (oid, range.map(|(start, end)| &self.bytes[start as usize..end as usize]))
    }
}

impl QueryableByName<diesel::pg::Pg> for PgRawRow {
    fn build<'a>(row: &impl diesel::row::NamedRow<'a, diesel::pg::Pg>) -> diesel::deserialize::Result<Self> {
        use diesel::row::{Field, Row};
        let n = row.field_count();
        let mut out = PgRawRow { bytes: Vec::with_capacity(1024), fields: Vec::with_capacity(n) };
        for i in 0..n {
            let field = Row::get(row, i).ok_or("a result column went missing")?;
            match field.value() {
                None => out.fields.push((0, None)),
                Some(v) => {
                    let start = u32::try_from(out.bytes.len())?;
                    out.bytes.extend_from_slice(v.as_bytes());
                    out.fields.push((v.get_oid().get(), Some((start, u32::try_from(out.bytes.len())?))));
                }
            }
        }
        Ok(out)
    }
}

/// Loads a batch's due rows, as the segment will hold them.
trait LoadDue {
    async fn load_due(&mut self, sql: &TableSql, select: &str, params: &str, out: &mut DueRows) -> Result<()>;
}

impl LoadDue for diesel_async::AsyncPgConnection {
    async fn load_due(&mut self, sql: &TableSql, select: &str, params: &str, out: &mut DueRows) -> Result<()> {
        let plan = sql.doc.as_ref().ok_or_else(|| Error::Unsupported("no document plan for PostgreSQL".into()))?;
        let rows: Vec<PgRawRow> = diesel::sql_query(select).bind::<Text, _>(params).load(self).await?;
        let (Some(first), Some(last)) = (rows.as_slice().first(), rows.as_slice().last()) else { return Ok(()) };
        // The rows are locked, and with them the table against ALTER TABLE: what the catalog says
        // now holds until this transaction ends.
        let n = diesel::sql_query(&plan.count_columns).get_result::<Count>(self).await?.n;
        if n as usize != plan.columns.len() {
            return Err(Error::Unsupported(format!(
                "the table now has {n} columns, not the {} this run started with: run again",
                plan.columns.len()
            )));
        }
        out.first_key = plan.key(first).map_err(Error::Unsupported)?;
        out.last_key = plan.key(last).map_err(Error::Unsupported)?;
        let row_bytes: usize = rows.iter().map(|r| r.bytes.len() + r.bytes.len() / 16 + 64).sum();
        out.jsonl.reserve(row_bytes);
        out.targets.reserve(rows.len() * 16 + 2);
        out.targets.push('{');
        for (i, r) in rows.iter().enumerate() {
            plan.document(r, &mut out.jsonl).map_err(Error::Unsupported)?;
            out.jsonl.push(b'\n');
            if let Some(ts) = plan.time(r).map_err(Error::Unsupported)? {
                out.min_ts = Some(out.min_ts.map_or(ts, |m| m.min(ts)));
                out.max_ts = Some(out.max_ts.map_or(ts, |m| m.max(ts)));
            }
            if i > 0 {
                out.targets.push(',');
            }
            plan.location(r, &mut out.targets).map_err(Error::Unsupported)?;
        }
        out.targets.push('}');
        out.count = rows.len();
        // Text arrives in the database's encoding converted to UTF-8 by the server; checked once
        // over the whole batch, not per value.
        std::str::from_utf8(&out.jsonl).map_err(|e| Error::Unsupported(format!("a row is not UTF-8: {e}")))?;
        Ok(())
    }
}

impl LoadDue for super::SqliteConn {
    async fn load_due(&mut self, _sql: &TableSql, select: &str, params: &str, out: &mut DueRows) -> Result<()> {
        let rows: Vec<SqliteDueRow> = diesel::sql_query(select).bind::<Text, _>(params).load(self).await?;
        let (Some(first), Some(last)) = (rows.as_slice().first(), rows.as_slice().last()) else { return Ok(()) };
        (out.first_key, out.last_key) = (first.key.clone(), last.key.clone());
        out.targets = format!("[{}]", rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>().join(","));
        for r in &rows {
            out.jsonl.extend_from_slice(r.doc.as_bytes());
            out.jsonl.push(b'\n');
        }
        out.min_ts = rows.iter().filter_map(|r| r.ts).min();
        out.max_ts = rows.iter().filter_map(|r| r.ts).max();
        out.count = rows.len();
        Ok(())
    }
}

/// One due row as the SQLite select returns it.
#[derive(Debug, Clone, QueryableByName)]
struct SqliteDueRow {
    /// The row as a JSON object.
    #[diesel(sql_type = Text)]
    doc: String,
    /// Its key as a JSON array.
    #[diesel(sql_type = Text)]
    key: String,
    /// Its time in Unix microseconds.
    #[diesel(sql_type = Nullable<BigInt>)]
    ts: Option<i64>,
}

/// A batch's due rows, as the segment holds them.
#[derive(Debug, Default)]
pub struct DueRows {
    /// The rows' documents as JSON Lines (each line ends with a newline), in key order.
    pub jsonl: Vec<u8>,
    /// How many rows.
    pub count: usize,
    /// The first row's key, as a JSON array.
    pub first_key: String,
    /// The last row's key (the next batch starts after it).
    pub last_key: String,
    /// Oldest row time (Unix microseconds).
    pub min_ts: Option<i64>,
    /// Newest row time.
    pub max_ts: Option<i64>,
    /// What the delete takes: the rows' locations as a `tid[]` literal (PostgreSQL; they cannot
    /// move while the rows are locked) or their keys as a JSON array (SQLite).
    targets: String,
}

impl DueRows {
    /// An empty batch whose documents go into `buffer` (cleared; its capacity is reused).
    pub fn with_buffer(mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        Self { jsonl: buffer, ..Default::default() }
    }
}

/// What PlanArchive reports.
#[derive(Debug, Clone, QueryableByName)]
pub struct PlanRow {
    /// Rows due.
    #[diesel(sql_type = BigInt)]
    pub rows: i64,
    /// Their size.
    #[diesel(sql_type = BigInt)]
    pub bytes: i64,
    /// Oldest (Unix microseconds).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub min_ts: Option<i64>,
    /// Newest.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub max_ts: Option<i64>,
}

#[derive(QueryableByName)]
struct PgColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    ty: String,
    #[diesel(sql_type = Bool)]
    generated: bool,
}

#[derive(QueryableByName)]
struct SqliteColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    ty: String,
    #[diesel(sql_type = BigInt)]
    hidden: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What to resolve: the policy's identifiers.
#[derive(Debug, Clone)]
pub struct TableSpec<'a> {
    /// Schema.
    pub schema_name: &'a str,
    /// Table.
    pub table_name: &'a str,
    /// Time column.
    pub time_column: &'a str,
    /// Key columns.
    pub key_columns: &'a [String],
    /// Filters.
    pub filters: &'a [FilterSpec],
}

/// Checks the table, columns and filter values against the live schema and builds the SQL.
/// `Ok(Err(reason))` names what is wrong (INVALID_ARGUMENT for the caller).
pub async fn resolve(conn: &mut Conn, spec: &TableSpec<'_>) -> Result<std::result::Result<TableSql, String>> {
    match conn {
        Conn::Pg(c) => resolve_pg(c, spec).await,
        Conn::Sqlite(c) => resolve_sqlite(c, spec).await,
    }
}

fn find<'c>(columns: &'c [ColumnInfo], name: &str, table: &str) -> std::result::Result<&'c ColumnInfo, String> {
    columns.iter().find(|c| c.name == name).ok_or_else(|| format!("column {name:?} does not exist in {table}"))
}

fn filter_arity(f: &FilterSpec) -> std::result::Result<(), String> {
    let Some((_, n)) = OPERATORS.iter().find(|(op, _)| *op == f.op) else {
        return Err(format!("unknown filter operator {:?}", f.op));
    };
    match n {
        Some(n) if f.values.len() != *n => {
            Err(format!("filter on {:?} with {:?} takes {n} value(s), got {}", f.column, f.op, f.values.len()))
        }
        None if f.values.is_empty() => {
            Err(format!("filter on {:?} with {:?} needs at least one value", f.column, f.op))
        }
        _ => Ok(()),
    }
}

async fn resolve_pg(
    c: &mut diesel_async::AsyncPgConnection,
    spec: &TableSpec<'_>,
) -> Result<std::result::Result<TableSql, String>> {
    let columns: Vec<ColumnInfo> = diesel::sql_query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS ty, a.attgenerated <> '' AS generated
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind::<Text, _>(spec.schema_name)
    .bind::<Text, _>(spec.table_name)
    .load::<PgColumn>(c)
    .await?
    .into_iter()
    .map(|c| ColumnInfo { name: c.name, ty: c.ty, generated: c.generated })
    .collect();
    let table = format!("{}.{}", spec.schema_name, spec.table_name);
    if columns.is_empty() {
        return Ok(Err(format!("table {table} does not exist")));
    }
    let time = match find(&columns, spec.time_column, &table) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let time_kind = match time.ty.as_str() {
        "timestamp with time zone" | "timestamp without time zone" | "date" => TimeKind::Timestamp,
        "bigint" | "integer" => TimeKind::UnixSeconds,
        t if t.starts_with("timestamp") => TimeKind::Timestamp,
        other => {
            return Ok(Err(format!(
                "time column {:?} has type {other}; expected a timestamp, date or integer Unix seconds",
                spec.time_column
            )));
        }
    };
    let mut keys = Vec::new();
    for k in spec.key_columns {
        match find(&columns, k, &table) {
            Ok(c) if matches!(c.ty.as_str(), "json" | "jsonb" | "xml") => {
                return Ok(Err(format!("key column {k:?} has type {} which cannot identify rows", c.ty)));
            }
            Ok(c) => keys.push(c.clone()),
            Err(e) => return Ok(Err(e)),
        }
    }
    for (i, f) in spec.filters.iter().enumerate() {
        if let Err(e) = filter_arity(f) {
            return Ok(Err(e));
        }
        let col = match find(&columns, &f.column, &table) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        // Each value must be acceptable to the column's type now, not fail every run later.
        for v in &f.values {
            let check = format!("SELECT CAST($1 AS {})", col.ty);
            if let Err(e) = diesel::sql_query(&check).bind::<Text, _>(v).execute(c).await {
                return Ok(Err(format!("filter {i} value {v:?} is not a valid {}: {e}", col.ty)));
            }
        }
    }

    let t = format!("{}.{}", quote(spec.schema_name), quote(spec.table_name));
    let tc = format!("t.{}", quote(spec.time_column));
    let p = "$1::json";
    let cast = |expr: &str, ty: &str| format!("CAST(({expr}) AS {ty})");
    // Values taken from the JSON parameter are scalar subqueries: PostgreSQL then evaluates them
    // once per statement (an InitPlan) instead of parsing the parameter again for every row
    // scanned (measured: the per-row cast of the cutoff alone was ~3 % of a run's CPU).
    let once = |expr: String| format!("(SELECT {expr})");
    let cutoff = format!("{tc} < {}", once(cast(&format!("{p}->>'cutoff'"), &time.ty)));
    let mut conds = vec![cutoff];
    for (i, f) in spec.filters.iter().enumerate() {
        let col = find(&columns, &f.column, &table).expect("checked above");
        let c = format!("t.{}", quote(&f.column));
        let one = once(cast(&format!("{p}->'f'->{i}->>0"), &col.ty));
        let many = format!("SELECT {} FROM json_array_elements_text({p}->'f'->{i}) x", cast("x", &col.ty));
        conds.push(match f.op.as_str() {
            "in" => format!("{c} IN ({many})"),
            "not in" => format!("{c} NOT IN ({many})"),
            "is null" => format!("{c} IS NULL"),
            "is not null" => format!("{c} IS NOT NULL"),
            op => format!("{c} {op} {one}"),
        });
    }
    let due = conds.join(" AND ");
    let key_cols = keys.iter().map(|k| format!("t.{}", quote(&k.name))).collect::<Vec<_>>().join(", ");
    let key_tuple = format!("({key_cols})");
    let key_of = |name: &str| {
        format!(
            "({})",
            keys.iter()
                .enumerate()
                .map(|(i, k)| cast(&format!("{p}->'{name}'->>{i}"), &k.ty))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let (after, upto) = (key_of("after"), key_of("upto"));
    let ts = match time_kind {
        TimeKind::Timestamp => format!("(extract(epoch FROM {tc}) * 1000000)::int8"),
        TimeKind::UnixSeconds => format!("({tc}::int8 * 1000000)"),
    };
    let values = DocPlan::select_list(&columns, &time.name);
    let select = |extra: &str| {
        format!(
            "SELECT {values} FROM {t} t WHERE {due}{extra} ORDER BY {key_cols} LIMIT ({p}->>'limit')::int8
               FOR UPDATE OF t SKIP LOCKED"
        )
    };
    let insert_cols: Vec<String> = columns.iter().filter(|c| !c.generated).map(|c| quote(&c.name)).collect();
    let key_match = keys.iter().map(|k| format!("x.{q} = r.{q}", q = quote(&k.name))).collect::<Vec<_>>().join(" AND ");
    Ok(Ok(TableSql {
        time_kind,
        select_first: select(""),
        select_after: select(&format!(" AND {key_tuple} > {after}")),
        select_between: Some(select(&format!(" AND {key_tuple} > {after} AND {key_tuple} <= {upto}"))),
        // Backwards along the key, as an index on it is ordered (rows whose key has a NULL are never
        // archived: no cursor passes them).
        last_due_key: Some(format!(
            "SELECT json_build_array({key_cols})::text AS key FROM {t} t
              WHERE {due} AND {not_null} ORDER BY {desc} LIMIT 1",
            not_null =
                keys.iter().map(|k| format!("t.{} IS NOT NULL", quote(&k.name))).collect::<Vec<_>>().join(" AND "),
            desc = keys.iter().map(|k| format!("t.{} DESC", quote(&k.name))).collect::<Vec<_>>().join(", "),
        )),
        // The batch's rows are locked FOR UPDATE, so their ctids are stable until commit: a TID scan
        // deletes them without an index lookup per row. The array goes through a scalar subquery so
        // the planner does not estimate the selectivity of each of its 10 000 elements.
        delete_keys: format!("DELETE FROM {t} WHERE ctid = ANY(CAST((SELECT $1::tid[]) AS tid[]))"),
        purge: format!(
            "DELETE FROM {t} d WHERE ({dk}) IN (SELECT {key_cols} FROM {t} t WHERE {due} ORDER BY {key_cols}
              LIMIT ({p}->>'limit')::int8 FOR UPDATE OF t SKIP LOCKED)",
            dk = keys.iter().map(|k| format!("d.{}", quote(&k.name))).collect::<Vec<_>>().join(", ")
        ),
        plan: format!(
            "SELECT count(*)::int8 AS rows, COALESCE(sum(pg_column_size(t.*)), 0)::int8 AS bytes,
                    min({ts})::int8 AS min_ts, max({ts})::int8 AS max_ts FROM {t} t WHERE {due}"
        ),
        // OVERRIDING SYSTEM VALUE: identity columns GENERATED ALWAYS get their archived values back.
        // The NOT EXISTS makes a restore idempotent even on tables without a unique key.
        restore: format!(
            "INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE
             SELECT {rcols} FROM json_populate_recordset(NULL::{t}, {p}) r
              WHERE NOT EXISTS (SELECT 1 FROM {t} x WHERE {key_match})
             ON CONFLICT DO NOTHING",
            cols = insert_cols.join(", "),
            rcols = insert_cols.iter().map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", "),
        ),
        doc: Some(DocPlan::new(&columns, &keys, &t)),
        columns,
    }))
}

async fn resolve_sqlite(
    c: &mut super::SqliteConn,
    spec: &TableSpec<'_>,
) -> Result<std::result::Result<TableSql, String>> {
    let table = format!("{}.{}", spec.schema_name, spec.table_name);
    // An unknown schema name is an error from SQLite, reported like a missing table.
    let exists = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM {}.sqlite_schema WHERE type = 'table' AND name = ?",
        quote(spec.schema_name)
    ))
    .bind::<Text, _>(spec.table_name)
    .get_result::<Count>(c)
    .await
    .map(|r| r.n)
    .unwrap_or(0);
    if exists == 0 {
        return Ok(Err(format!("table {table} does not exist")));
    }
    let columns: Vec<ColumnInfo> =
        diesel::sql_query("SELECT name, type AS ty, hidden FROM pragma_table_xinfo(?, ?) ORDER BY cid")
            .bind::<Text, _>(spec.table_name)
            .bind::<Text, _>(spec.schema_name)
            .load::<SqliteColumn>(c)
            .await?
            .into_iter()
            // hidden: 1 for virtual-table hidden columns, 2/3 for generated columns.
            .map(|c| ColumnInfo { name: c.name, ty: c.ty, generated: c.hidden != 0 })
            .collect();
    if let Some(bad) = columns.iter().find(|c| c.name.contains('"')) {
        return Ok(Err(format!("column {:?}: names with '\"' cannot be archived on SQLite", bad.name)));
    }
    let time = match find(&columns, spec.time_column, &table) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    // SQLite's type affinity rules: a declared type containing "INT" is an integer column.
    let time_kind =
        if time.ty.to_ascii_uppercase().contains("INT") { TimeKind::UnixSeconds } else { TimeKind::Timestamp };
    let mut keys = Vec::new();
    for k in spec.key_columns {
        match find(&columns, k, &table) {
            Ok(c) => keys.push(c.clone()),
            Err(e) => return Ok(Err(e)),
        }
    }
    for f in spec.filters {
        if let Err(e) = filter_arity(f) {
            return Ok(Err(e));
        }
        if let Err(e) = find(&columns, &f.column, &table) {
            return Ok(Err(e));
        }
    }

    let t = format!("{}.{}", quote(spec.schema_name), quote(spec.table_name));
    let tc = format!("t.{}", quote(spec.time_column));
    let p = "?1";
    let cutoff = match time_kind {
        TimeKind::UnixSeconds => format!("{tc} < json_extract({p}, '$.cutoff')"),
        TimeKind::Timestamp => format!("julianday({tc}) < julianday(json_extract({p}, '$.cutoff'))"),
    };
    let mut conds = vec![cutoff];
    for (i, f) in spec.filters.iter().enumerate() {
        let c = format!("t.{}", quote(&f.column));
        // A bound value has no affinity, so SQLite compares it with the column's affinity applied.
        let one = format!("json_extract({p}, '$.f[{i}][0]')");
        let many = format!("SELECT value FROM json_each({p}, '$.f[{i}]')");
        conds.push(match f.op.as_str() {
            "in" => format!("{c} IN ({many})"),
            "not in" => format!("{c} NOT IN ({many})"),
            "is null" => format!("{c} IS NULL"),
            "is not null" => format!("{c} IS NOT NULL"),
            op => format!("{c} {op} {one}"),
        });
    }
    let due = conds.join(" AND ");
    let key_cols = keys.iter().map(|k| format!("t.{}", quote(&k.name))).collect::<Vec<_>>().join(", ");
    let key_tuple = format!("({key_cols})");
    let after = format!(
        "({})",
        (0..keys.len()).map(|i| format!("json_extract({p}, '$.after[{i}]')")).collect::<Vec<_>>().join(", ")
    );
    let ts = match time_kind {
        TimeKind::UnixSeconds => format!("({tc} * 1000000)"),
        TimeKind::Timestamp => format!("CAST(round((julianday({tc}) - 2440587.5) * 86400000000.0) AS INTEGER)"),
    };
    // JSON cannot hold BLOBs: they become {"$blob": hex}. REALs are printed with 17 significant
    // digits so they round-trip exactly (SQLite's own JSON rendering keeps 15).
    let doc = format!(
        "json_object({})",
        columns
            .iter()
            .map(|col| {
                let v = format!("t.{}", quote(&col.name));
                format!(
                    "{}, CASE typeof({v}) WHEN 'blob' THEN json_object('$blob', hex({v})) \
                     WHEN 'real' THEN json(printf('%!.17g', {v})) ELSE {v} END",
                    sql_string(&col.name)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let select = |extra: &str| {
        format!(
            "SELECT {doc} AS doc, json_array({key_cols}) AS key, {ts} AS ts
               FROM {t} t WHERE {due}{extra} ORDER BY {key_cols} LIMIT json_extract({p}, '$.limit')"
        )
    };
    let field = |src: &str, name: &str| format!("json_extract({src}, '$.\"{name}\"')");
    let decode = |src: &str, name: &str| {
        format!(
            "CASE json_type({src}, '$.\"{name}\"') WHEN 'object' THEN unhex(json_extract({src}, '$.\"{name}\".\"$blob\"')) \
             ELSE {} END",
            field(src, name)
        )
    };
    let insert_cols: Vec<&ColumnInfo> = columns.iter().filter(|c| !c.generated).collect();
    let key_match = keys
        .iter()
        .map(|k| format!("x.{} = {}", quote(&k.name), decode("r.value", &k.name)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let key_of = (0..keys.len()).map(|i| format!("json_extract(value, '$[{i}]')")).collect::<Vec<_>>().join(", ");
    let dk = keys.iter().map(|k| quote(&k.name)).collect::<Vec<_>>().join(", ");
    Ok(Ok(TableSql {
        time_kind,
        select_first: select(""),
        select_after: select(&format!(" AND {key_tuple} > {after}")),
        select_between: None,
        last_due_key: None,
        delete_keys: format!("DELETE FROM {t} WHERE ({dk}) IN (SELECT {key_of} FROM json_each({p}))"),
        purge: format!(
            "DELETE FROM {t} WHERE ({dk}) IN (SELECT {key_cols} FROM {t} t WHERE {due} ORDER BY {key_cols}
              LIMIT json_extract({p}, '$.limit'))"
        ),
        plan: format!(
            "SELECT count(*) AS rows, COALESCE(sum(length({doc})), 0) AS bytes, min({ts}) AS min_ts,
                    max({ts}) AS max_ts FROM {t} t WHERE {due}"
        ),
        restore: format!(
            "INSERT INTO {t} ({cols}) SELECT {vals} FROM json_each({p}) r
              WHERE NOT EXISTS (SELECT 1 FROM {t} x WHERE {key_match}) ON CONFLICT DO NOTHING",
            cols = insert_cols.iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(", "),
            vals = insert_cols.iter().map(|c| decode("r.value", &c.name)).collect::<Vec<_>>().join(", "),
        ),
        doc: None,
        columns,
    }))
}

/// The JSON parameter of the due-row statements.
pub fn params(
    sql: &TableSql,
    cutoff: DateTime<Utc>,
    filters: &[FilterSpec],
    after: Option<&serde_json::Value>,
    upto: Option<&serde_json::Value>,
    limit: i64,
) -> String {
    let cutoff = match sql.time_kind {
        TimeKind::Timestamp => serde_json::Value::from(cutoff.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string()),
        TimeKind::UnixSeconds => serde_json::Value::from(cutoff.timestamp()),
    };
    let f: Vec<&Vec<String>> = filters.iter().map(|f| &f.values).collect();
    serde_json::json!({ "cutoff": cutoff, "f": f, "after": after, "upto": upto, "limit": limit }).to_string()
}

/// The key (a JSON array) of the last row due now, in key order, when the backend can say it
/// (PostgreSQL); None when nothing is due or it cannot.
///
/// Why: a batch reads along the key until it has its rows, so the run's last batch, which never
/// fills up, reads every row after the last due one: the whole newer part of the table, alone at the
/// end of the run (measured: 0.3 s of a 2.5 s run over 1M rows). Asked while the first batches
/// work, this costs the same reading, but beside them instead of after them, and lets the last
/// batch stop at that key. Rows that become due later are the next run's.
pub async fn last_due_key(conn: &mut Conn, sql: &TableSql, params: &str) -> Result<Option<String>> {
    #[derive(QueryableByName)]
    struct Key {
        #[diesel(sql_type = Text)]
        key: String,
    }
    let Some(query) = &sql.last_due_key else { return Ok(None) };
    Ok(db_run!(conn, {
        diesel::sql_query(query).bind::<Text, _>(params).get_result::<Key>(conn).await.optional()?.map(|k| k.key)
    }))
}

/// Counts what a run would move.
pub async fn plan(conn: &mut Conn, sql: &TableSql, params: &str) -> Result<PlanRow> {
    Ok(db_run!(conn, { diesel::sql_query(&sql.plan).bind::<Text, _>(params).get_result::<PlanRow>(conn).await? }))
}

async fn begin<C: AsyncConnection>(c: &mut C) -> QueryResult<()> {
    C::TransactionManager::begin_transaction(c).await
}
async fn commit<C: AsyncConnection>(c: &mut C) -> QueryResult<()> {
    C::TransactionManager::commit_transaction(c).await
}
async fn rollback<C: AsyncConnection>(c: &mut C) {
    // A failed rollback leaves the connection marked broken; the pool then discards it.
    let _ = C::TransactionManager::rollback_transaction(c).await;
}

/// The identity of one batch.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    /// The table's SQL.
    pub sql: &'a TableSql,
    /// JSON parameter of the select.
    pub params: String,
    /// Whether `params` carries a cursor.
    pub after: bool,
    /// Whether `params` also carries the last key to read (`upto`).
    pub upto: bool,
    /// Policy (its lease is checked and renewed first, inside the transaction).
    pub policy_id: &'a str,
    /// Run.
    pub run_id: &'a str,
    /// The pending segment this batch fills.
    pub segment_id: &'a str,
    /// New lease expiry.
    pub lease_until: NaiveDateTime,
    /// Now.
    pub now: NaiveDateTime,
}

/// What the service reports about a written and verified segment.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// JSON Lines bytes.
    pub raw_bytes: i64,
    /// Object bytes.
    pub compressed_bytes: i64,
    /// SHA-256 of the object.
    pub sha256: String,
    /// Where the object was written.
    pub object_key: String,
    /// Oldest row.
    pub min_time: Option<NaiveDateTime>,
    /// Newest row.
    pub max_time: Option<NaiveDateTime>,
}

/// How a batch ended.
#[derive(Debug)]
pub enum BatchOutcome {
    /// No due rows left (after the cursor).
    Empty,
    /// The pending segment was discarded (another run took the policy over); nothing was changed.
    LeaseLost,
    /// Rows moved and the segment committed.
    Committed {
        /// Rows moved.
        rows: usize,
        /// The last row's key (the next batch starts after it).
        last_key: String,
        /// A cancel was requested meanwhile.
        cancel_requested: bool,
        /// Time inside the transaction.
        txn: std::time::Duration,
        /// Where the time went.
        phases: Phases,
    },
}

/// Time spent in each phase of an archive batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Locking and reading the rows as JSON.
    pub select: std::time::Duration,
    /// Writing and verifying the segment.
    pub seal: std::time::Duration,
    /// Deleting the rows and recording the segment, through commit.
    pub finish: std::time::Duration,
}

/// Errors of a batch: the database's or the sealing callback's.
#[derive(Debug)]
pub enum BatchError<E> {
    /// Database.
    Db(Error),
    /// The callback.
    Seal(E),
}

impl<E> From<diesel::result::Error> for BatchError<E> {
    fn from(e: diesel::result::Error) -> Self {
        BatchError::Db(e.into())
    }
}

/// One archive batch, as one transaction: renew the lease (on SQLite this also takes the write
/// lock), lock the next due rows, hand them to `seal` (which writes and verifies the segment), delete
/// exactly those rows, mark the segment committed and count the progress. Any failure rolls
/// everything back: the rows stay and the segment stays pending (garbage for the next run).
///
/// The documents are written into `buffer` (its capacity reused), which `seal` may take.
pub async fn archive_batch<E, F>(
    conn: &mut Conn,
    b: &Batch<'_>,
    buffer: Vec<u8>,
    seal: F,
) -> Result<BatchOutcome, BatchError<E>>
where
    F: AsyncFnOnce(&mut DueRows) -> Result<Sealed, E>,
{
    db_run!(conn, {
        let started = std::time::Instant::now();
        begin(conn).await?;
        let out = archive_batch_in(conn, b, buffer, seal, started).await;
        match out {
            Ok(BatchOutcome::Committed { rows, last_key, cancel_requested, mut phases, .. }) => {
                let t = std::time::Instant::now();
                commit(conn).await?;
                phases.finish += t.elapsed();
                Ok(BatchOutcome::Committed { rows, last_key, cancel_requested, txn: started.elapsed(), phases })
            }
            other => {
                rollback(conn).await;
                other
            }
        }
    })
}

macro_rules! archive_batch_body {
    ($conn:ident, $b:ident, $buffer:ident, $seal:ident, $started:ident) => {{
        use schema::archive_segments as s;
        // The fence: the pending segment must still be ours. A run that took the policy over
        // discards pending segments by moving them out of `pending` first, so either it waits for
        // this transaction (row lock) and then leaves the committed segment alone, or this batch
        // sees its segment gone and changes nothing. On SQLite this write also takes the database's
        // write lock before any row is read.
        let ours = diesel::update(s::table.filter(s::id.eq($b.segment_id)).filter(s::state.eq(state::PENDING)))
            .set(s::created_at.eq($b.now))
            .execute(&mut *$conn)
            .await?;
        if ours != 1 {
            return Ok(BatchOutcome::LeaseLost);
        }
        let select = match (&$b.sql.select_between, $b.after, $b.upto) {
            (Some(between), true, true) => between,
            (_, true, _) => &$b.sql.select_after,
            (_, false, _) => &$b.sql.select_first,
        };
        let mut rows = DueRows::with_buffer($buffer);
        $conn.load_due(&$b.sql, select, &$b.params, &mut rows).await.map_err(BatchError::Db)?;
        let mut phases = Phases { select: $started.elapsed(), ..Default::default() };
        if rows.count == 0 {
            return Ok(BatchOutcome::Empty);
        }
        let t = std::time::Instant::now();
        let sealed = $seal(&mut rows).await.map_err(BatchError::Seal)?;
        phases.seal = t.elapsed();
        let t = std::time::Instant::now();
        let deleted =
            diesel::sql_query(&$b.sql.delete_keys).bind::<Text, _>(&rows.targets).execute(&mut *$conn).await?;
        if deleted != rows.count {
            // Locked rows cannot vanish; if they did, nothing of this batch may stick.
            return Err(BatchError::Db(Error::Unsupported(format!(
                "deleted {deleted} rows, expected {}: batch rolled back",
                rows.count
            ))));
        }
        diesel::update(s::table.filter(s::id.eq($b.segment_id)).filter(s::state.eq(state::PENDING)))
            .set((
                s::state.eq(state::COMMITTED),
                s::object_key.eq(&sealed.object_key),
                s::row_count.eq(rows.count as i64),
                s::raw_bytes.eq(sealed.raw_bytes),
                s::compressed_bytes.eq(sealed.compressed_bytes),
                s::sha256.eq(&sealed.sha256),
                s::first_key.eq(&rows.first_key),
                s::last_key.eq(&rows.last_key),
                s::min_time.eq(sealed.min_time),
                s::max_time.eq(sealed.max_time),
                s::created_at.eq($b.now),
            ))
            .execute(&mut *$conn)
            .await?;
        let progress = Progress {
            rows: rows.count as i64,
            segments: 1,
            raw: sealed.raw_bytes,
            compressed: sealed.compressed_bytes,
            txn_ms: $started.elapsed().as_millis() as i64,
            ..Default::default()
        };
        let cancel_requested = add_progress_on(&mut *$conn, $b.run_id, &progress, $b.now).await?;
        phases.finish = t.elapsed();
        Ok(BatchOutcome::Committed {
            rows: rows.count,
            last_key: rows.last_key,
            cancel_requested,
            txn: $started.elapsed(),
            phases,
        })
    }};
}

async fn archive_batch_in<C, E, F>(
    conn: &mut C,
    b: &Batch<'_>,
    buffer: Vec<u8>,
    seal: F,
    started: std::time::Instant,
) -> Result<BatchOutcome, BatchError<E>>
where
    C: BatchConn,
    F: AsyncFnOnce(&mut DueRows) -> Result<Sealed, E>,
{
    C::archive_batch(conn, b, buffer, seal, started).await
}

/// Backend-specific batch body (same code, different schema module).
trait BatchConn: ProgressConn + LoadDue {
    async fn archive_batch<E, F>(
        conn: &mut Self,
        b: &Batch<'_>,
        buffer: Vec<u8>,
        seal: F,
        started: std::time::Instant,
    ) -> Result<BatchOutcome, BatchError<E>>
    where
        F: AsyncFnOnce(&mut DueRows) -> Result<Sealed, E>;
}

impl BatchConn for diesel_async::AsyncPgConnection {
    async fn archive_batch<E, F>(
        conn: &mut Self,
        b: &Batch<'_>,
        buffer: Vec<u8>,
        seal: F,
        started: std::time::Instant,
    ) -> Result<BatchOutcome, BatchError<E>>
    where
        F: AsyncFnOnce(&mut DueRows) -> Result<Sealed, E>,
    {
        use super::schema::pg as schema;
        archive_batch_body!(conn, b, buffer, seal, started)
    }
}

impl BatchConn for super::SqliteConn {
    async fn archive_batch<E, F>(
        conn: &mut Self,
        b: &Batch<'_>,
        buffer: Vec<u8>,
        seal: F,
        started: std::time::Instant,
    ) -> Result<BatchOutcome, BatchError<E>>
    where
        F: AsyncFnOnce(&mut DueRows) -> Result<Sealed, E>,
    {
        use super::schema::sqlite as schema;
        archive_batch_body!(conn, b, buffer, seal, started)
    }
}

/// One purge batch in one transaction (lease renewed first). Returns rows deleted, whether a
/// cancel was requested, and the transaction time; None when the lease was lost.
pub async fn purge_batch(conn: &mut Conn, b: &Batch<'_>) -> Result<Option<(usize, bool, std::time::Duration)>> {
    db_run!(conn, {
        let started = std::time::Instant::now();
        begin(conn).await?;
        let r: QueryResult<Option<(usize, bool)>> = async {
            use schema::archive_policies as p;
            let held = diesel::update(p::table.filter(p::id.eq(b.policy_id)).filter(p::lease_owner.eq(b.run_id)))
                .set(p::lease_until.eq(b.lease_until))
                .execute(&mut *conn)
                .await?;
            if held != 1 {
                return Ok(None);
            }
            let n = diesel::sql_query(&b.sql.purge).bind::<Text, _>(&b.params).execute(&mut *conn).await?;
            let progress =
                Progress { rows: n as i64, txn_ms: started.elapsed().as_millis() as i64, ..Default::default() };
            let cancel = add_progress_on(&mut *conn, b.run_id, &progress, b.now).await?;
            Ok(Some((n, cancel)))
        }
        .await;
        match r {
            Ok(Some((n, cancel))) => {
                commit(conn).await?;
                Ok(Some((n, cancel, started.elapsed())))
            }
            Ok(None) => {
                rollback(conn).await;
                Ok(None)
            }
            Err(e) => {
                rollback(conn).await;
                Err(e.into())
            }
        }
    })
}

/// Restores one segment in one transaction: re-checks the lease, inserts the rows whose key is
/// absent, marks the segment restored and counts progress. Returns (inserted, skipped), or None
/// when the lease was lost or the segment is no longer committed (nothing changed then).
pub async fn restore_segment(
    conn: &mut Conn,
    sql: &TableSql,
    rows_json: &str,
    rows: usize,
    segment: &SegmentRow,
    b: &Batch<'_>,
) -> Result<Option<(usize, usize)>> {
    db_run!(conn, {
        let started = std::time::Instant::now();
        begin(conn).await?;
        let r: QueryResult<Option<(usize, usize)>> = async {
            use schema::{archive_policies as p, archive_segments as s};
            let held = diesel::update(p::table.filter(p::id.eq(b.policy_id)).filter(p::lease_owner.eq(b.run_id)))
                .set(p::lease_until.eq(b.lease_until))
                .execute(&mut *conn)
                .await?;
            let marked = diesel::update(s::table.filter(s::id.eq(&segment.id)).filter(s::state.eq(state::COMMITTED)))
                .set((s::state.eq(state::RESTORED), s::restored_at.eq(Some(b.now))))
                .execute(&mut *conn)
                .await?;
            if held != 1 || marked != 1 {
                return Ok(None);
            }
            let inserted = diesel::sql_query(&sql.restore).bind::<Text, _>(rows_json).execute(&mut *conn).await?;
            let progress = Progress {
                rows: inserted as i64,
                skipped: (rows - inserted) as i64,
                segments: 1,
                raw: segment.raw_bytes,
                compressed: segment.compressed_bytes,
                txn_ms: started.elapsed().as_millis() as i64,
            };
            add_progress_on(&mut *conn, b.run_id, &progress, b.now).await?;
            Ok(Some((inserted, rows - inserted)))
        }
        .await;
        match r {
            Ok(Some(v)) => {
                commit(conn).await?;
                Ok(Some(v))
            }
            Ok(None) => {
                rollback(conn).await;
                Ok(None)
            }
            Err(e) => {
                rollback(conn).await;
                Err(e.into())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 32-bytes-at-a-time escaping writes exactly what serde_json (and PostgreSQL's
    /// `escape_json`, which the archive tests compare against) writes, wherever in a word the
    /// special characters fall.
    #[test]
    fn json_strings_escape_like_serde_json() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain ascii text that is longer than eight bytes".into(),
            "ünïcödé — 中文 🎉 mixed with \"quotes\" and \\backslashes\\".into(),
            (0u8..0x80).map(char::from).collect(),
        ];
        // Every special character at every offset of a word, alone and in runs.
        for special in ['"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{0}', '\u{1f}', '\u{7f}', 'é'] {
            for at in 0..70 {
                let mut s: String = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghij"
                    .chars()
                    .take(at)
                    .collect();
                s.push(special);
                s.push_str("rstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ");
                cases.push(s.clone());
                cases.push(s.replace('a', &special.to_string()));
            }
        }
        // Pseudo-random strings over a small alphabet that is mostly special.
        let alphabet = ['a', '"', '\\', '\n', '\u{1}', 'ß', ' ', '\u{1f}', '/', 'z', '\u{20}'];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..300 {
            let s: String = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            cases.push(s);
        }
        for s in cases {
            let mut out = b"prefix".to_vec();
            push_json_string(&mut out, s.as_bytes());
            assert_eq!(std::str::from_utf8(&out[6..]).unwrap(), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn binary_values_render_as_postgres_writes_them() {
        let mut out = Vec::new();
        for (render, value, want) in [
            (Render::Int, Some(&(-7i16).to_be_bytes()[..]), "-7"),
            (Render::Int, Some(&i32::MIN.to_be_bytes()[..]), "-2147483648"),
            (Render::Int, Some(&i64::MAX.to_be_bytes()[..]), "9223372036854775807"),
            (Render::Bool, Some(&[1u8][..]), "true"),
            (Render::Bool, Some(&[0u8][..]), "false"),
            (Render::Json, Some(&b"\"2024-01-02T03:04:05+00:00\""[..]), "\"2024-01-02T03:04:05+00:00\""),
            (Render::Text, Some(&b"a\"b"[..]), "\"a\\\"b\""),
            (Render::Text, None, "null"),
        ] {
            out.clear();
            render_value(render, value, &mut out).unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        }
        assert!(render_value(Render::Int, Some(&[1, 2, 3]), &mut out).is_err(), "odd integer width");
        assert_eq!(Render::of("character varying(20)"), Render::Text);
        assert_eq!(Render::of("bigint"), Render::Int);
        assert_eq!(Render::of("numeric(10,2)"), Render::Json);
        assert_eq!(Render::of("timestamp with time zone"), Render::Json);
    }
}
