//! The batch transactions of a run: archive (rows into a sealed segment, then out of the table),
//! purge and restore. Each is one transaction on one connection, opened and closed by hand rather
//! than through Diesel's transaction closure, because a batch also rolls back when it ends without
//! an error but with nothing to keep (no rows, or its lease or segment taken over).
//!
//! Every statement is a plain function over [`Conn`]; what differs per backend is the SQL in
//! [`TableSql`] and how due rows are read ([`Dialect::load_due`]).

use std::time::Instant;

use chrono::NaiveDateTime;
use diesel::{prelude::*, sql_types::Text};
use diesel_async::{AsyncConnection, RunQueryDsl, TransactionManager};

use super::{
    Dialect, TableSql,
    catalog::{Progress, add_progress, renew_lease},
};
use crate::{
    db::{Conn, Error, Result},
    db_run,
    model::archive::SegmentState,
};

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

impl<E> From<Error> for BatchError<E> {
    fn from(e: Error) -> Self {
        BatchError::Db(e)
    }
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
    pub(super) targets: String,
    /// A partitioned PostgreSQL table's rows instead: per partition (its oid), their locations as
    /// a `tid[]` literal. A location is unique only within its partition: partitions of equal
    /// shape hold rows at the same `ctid`.
    pub(super) by_partition: Vec<(u32, String)>,
}

impl DueRows {
    /// An empty batch whose documents go into `buffer` (cleared; its capacity is reused).
    pub fn with_buffer(mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        Self { jsonl: buffer, ..Default::default() }
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
    let started = Instant::now();
    begin(conn).await?;
    let out = archive_batch_in(conn, b, buffer, seal, started).await;
    match out {
        Ok(BatchOutcome::Committed { rows, last_key, cancel_requested, mut phases, .. }) => {
            let t = Instant::now();
            commit(conn).await?;
            phases.finish += t.elapsed();
            Ok(BatchOutcome::Committed { rows, last_key, cancel_requested, txn: started.elapsed(), phases })
        }
        other => {
            rollback(conn).await;
            other
        }
    }
}

/// The statements of [`archive_batch`], inside its transaction.
async fn archive_batch_in<E, F>(
    conn: &mut Conn,
    b: &Batch<'_>,
    buffer: Vec<u8>,
    seal: F,
    started: Instant,
) -> Result<BatchOutcome, BatchError<E>>
where
    F: AsyncFnOnce(&mut DueRows) -> Result<Sealed, E>,
{
    // The fence: the pending segment must still be ours. A run that took the policy over
    // discards pending segments by moving them out of `pending` first, so either it waits for
    // this transaction (row lock) and then leaves the committed segment alone, or this batch
    // sees its segment gone and changes nothing. On SQLite this write also takes the database's
    // write lock before any row is read.
    let ours = db_run!(conn, {
        use schema::archive_segments as s;
        diesel::update(s::table.filter(s::id.eq(b.segment_id)).filter(s::state.eq(SegmentState::Pending.as_str())))
            .set(s::created_at.eq(b.now))
            .execute(conn)
            .await?
    });
    if ours != 1 {
        return Ok(BatchOutcome::LeaseLost);
    }
    let select = match (&b.sql.select_between, b.after, b.upto) {
        (Some(between), true, true) => between,
        (_, true, _) => &b.sql.select_after,
        (_, false, _) => &b.sql.select_first,
    };
    let mut rows = DueRows::with_buffer(buffer);
    db_run!(conn, { conn.load_due(b.sql, select, &b.params, &mut rows).await? });
    let mut phases = Phases { select: started.elapsed(), ..Default::default() };
    if rows.count == 0 {
        return Ok(BatchOutcome::Empty);
    }
    let t = Instant::now();
    let sealed = seal(&mut rows).await.map_err(BatchError::Seal)?;
    phases.seal = t.elapsed();
    let t = Instant::now();
    let deleted = db_run!(conn, { conn.delete_due(b.sql, &rows).await? });
    if deleted != rows.count {
        // Locked rows cannot vanish; if they did, nothing of this batch may stick.
        return Err(BatchError::Db(Error::Unsupported(format!(
            "deleted {deleted} rows, expected {}: batch rolled back",
            rows.count
        ))));
    }
    db_run!(conn, {
        use schema::archive_segments as s;
        diesel::update(s::table.filter(s::id.eq(b.segment_id)).filter(s::state.eq(SegmentState::Pending.as_str())))
            .set((
                s::state.eq(SegmentState::Committed.as_str()),
                s::object_key.eq(&sealed.object_key),
                s::row_count.eq(rows.count as i64),
                s::raw_bytes.eq(sealed.raw_bytes),
                s::compressed_bytes.eq(sealed.compressed_bytes),
                s::sha256.eq(&sealed.sha256),
                s::first_key.eq(&rows.first_key),
                s::last_key.eq(&rows.last_key),
                s::min_time.eq(sealed.min_time),
                s::max_time.eq(sealed.max_time),
                s::created_at.eq(b.now),
            ))
            .execute(conn)
            .await?;
    });
    let progress = Progress {
        rows: rows.count as i64,
        segments: 1,
        raw: sealed.raw_bytes,
        compressed: sealed.compressed_bytes,
        txn_ms: started.elapsed().as_millis() as i64,
        ..Default::default()
    };
    let cancel_requested = add_progress(conn, b.run_id, &progress, b.now).await?;
    phases.finish = t.elapsed();
    Ok(BatchOutcome::Committed {
        rows: rows.count,
        last_key: rows.last_key,
        cancel_requested,
        txn: started.elapsed(),
        phases,
    })
}

/// One purge batch in one transaction (lease renewed first). Returns rows deleted, whether a
/// cancel was requested, and the transaction time; None when the lease was lost.
pub async fn purge_batch(conn: &mut Conn, b: &Batch<'_>) -> Result<Option<(usize, bool, std::time::Duration)>> {
    let started = Instant::now();
    begin(conn).await?;
    let r: Result<Option<(usize, bool)>> = async {
        if !renew_lease(&mut *conn, b.policy_id, b.run_id, b.lease_until).await? {
            return Ok(None);
        }
        let n = execute(&mut *conn, &b.sql.purge, &b.params).await?;
        let progress = Progress { rows: n as i64, txn_ms: started.elapsed().as_millis() as i64, ..Default::default() };
        let cancel = add_progress(&mut *conn, b.run_id, &progress, b.now).await?;
        Ok(Some((n, cancel)))
    }
    .await;
    Ok(settle(conn, r).await?.map(|(n, cancel)| (n, cancel, started.elapsed())))
}

/// Ends a batch's transaction: committed when it has something to keep (`Some`), rolled back when
/// it has not or failed.
pub(super) async fn settle<T>(conn: &mut Conn, r: Result<Option<T>>) -> Result<Option<T>> {
    match r {
        Ok(Some(v)) => {
            commit(conn).await?;
            Ok(Some(v))
        }
        other => {
            rollback(conn).await;
            other
        }
    }
}

/// Runs one of the table's statements with its one JSON text parameter; the rows it changed.
async fn execute(conn: &mut Conn, sql: &str, param: &str) -> QueryResult<usize> {
    db_run!(conn, { diesel::sql_query(sql).bind::<Text, _>(param).execute(conn).await })
}

pub(super) async fn begin(conn: &mut Conn) -> QueryResult<()> {
    db_run!(conn, { begin_on(conn).await })
}

async fn commit(conn: &mut Conn) -> QueryResult<()> {
    db_run!(conn, { commit_on(conn).await })
}

async fn rollback(conn: &mut Conn) {
    // A failed rollback leaves the connection marked broken; the pool then discards it.
    db_run!(conn, {
        let _ = rollback_on(conn).await;
    })
}

async fn begin_on<C: AsyncConnection>(c: &mut C) -> QueryResult<()> {
    C::TransactionManager::begin_transaction(c).await
}

async fn commit_on<C: AsyncConnection>(c: &mut C) -> QueryResult<()> {
    C::TransactionManager::commit_transaction(c).await
}

async fn rollback_on<C: AsyncConnection>(c: &mut C) -> QueryResult<()> {
    C::TransactionManager::rollback_transaction(c).await
}
