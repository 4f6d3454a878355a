//! Archive and purge runs: batches of due rows, each its own transaction.
//!
//! An archive run keeps several batches in flight on PostgreSQL (one reads and locks its rows while
//! the previous one compresses and uploads), each moving its rows into a sealed segment
//! ([`store::archive_batch`]); a purge run deletes due rows batch by batch.

use std::{collections::HashSet, sync::Arc, time::Duration};
use tracing::Instrument as _;

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{
    Mode, Policy, Run, RunKind, SegmentState, Stop, Work, cutoff_of, get_policy, lease_lost, lease_until, resolve,
    start, stop_requested,
};
use crate::{
    db::{
        self,
        archive::{self as store, Batch, BatchError, BatchOutcome, DueRows, PendingSegment, Sealed},
    },
    service::{Context, Error, Result, store_unavailable},
};

/// zstd level of segments: level 3 (zstd's default) compresses chat-like text ≈ 3× at several
/// hundred MB/s per core, fast enough that the database, not compression, bounds a run.
const ZSTD_LEVEL: i32 = 3;

/// Starts a run of the policy's mode.
pub async fn run(ctx: &Context, policy: &str) -> Result<Run> {
    let p = get_policy(ctx, policy).await?;
    let kind = match p.spec.mode {
        Mode::Archive => RunKind::Archive,
        Mode::Purge => RunKind::Purge,
    };
    // Resolve before taking the lease so a policy broken by a schema change fails at once.
    let sql = resolve(ctx, &p.spec).await?;
    let cutoff = cutoff_of(ctx, &p);
    start(ctx, p, kind, Some(cutoff), Work::Rows { sql, cutoff }).await
}

fn micros_to_time(us: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp_micros(us).map(|t| t.naive_utc())
}

/// Object-key-safe form of a table name.
fn key_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

fn table_prefix(p: &Policy) -> String {
    format!("archive/{}.{}/", key_part(&p.spec.schema_name), key_part(&p.spec.table_name))
}

/// Removes what interrupted runs left: pending (and half-discarded) segments and any object
/// written for them. Each pending segment is first moved to `discarding`, which fences out a batch
/// that might still commit it (see [`store::archive_batch`]); only then is its object deleted.
pub(super) async fn clean_pending(ctx: &Context, p: &Policy, run: &Run) -> Result<()> {
    let mut conn = ctx.db.write().await?;
    let stale: Vec<_> =
        store::segments(&mut conn, &p.id, &[SegmentState::Pending, SegmentState::Discarding], 0, i64::MAX)
            .await?
            .into_iter()
            .filter(|s| s.run_id != run.id)
            .collect();
    let mut doomed = Vec::new();
    for s in stale {
        if s.state == SegmentState::Discarding || store::discard_pending(&mut conn, &s.id).await? {
            doomed.push(s.id);
        }
    }
    drop(conn);
    if doomed.is_empty() {
        return Ok(());
    }
    // A pending segment's object key holds the rows' month, known only once written, so the
    // table's archive prefix is listed once — only after an interruption.
    let ids: HashSet<&str> = doomed.iter().map(String::as_str).collect();
    for o in ctx.objects.list(&table_prefix(p), &ctx.background).await.map_err(store_unavailable)? {
        let stem = o.key.rsplit('/').next().unwrap_or("").trim_end_matches(".jsonl.zst");
        if ids.contains(stem) {
            ctx.objects.delete(&o.key, &ctx.background).await.map_err(store_unavailable)?;
        }
    }
    let mut conn = ctx.db.write().await?;
    for id in &doomed {
        store::delete_segment(&mut conn, id).await?;
    }
    tracing::info!(policy = %p.spec.name, segments = doomed.len(), "removed segments of interrupted runs");
    Ok(())
}

/// Removes the segment of a batch that rolled back (its rows are still in the table).
async fn discard(ctx: &Context, segment_id: &str, object_key: Option<String>) -> Result<()> {
    let mut conn = ctx.db.write().await?;
    if !store::discard_pending(&mut conn, segment_id).await? {
        return Ok(());
    }
    drop(conn);
    if let Some(key) = object_key {
        // Cleanup of a batch that failed (or was stopped): it runs to its end even while the
        // server stops, so the next run finds nothing to clean.
        ctx.objects.delete(&key, &CancellationToken::new()).await.map_err(store_unavailable)?;
    }
    store::delete_segment(&mut ctx.db.write().await?, segment_id).await?;
    Ok(())
}

/// Batches in flight at once on PostgreSQL: while one batch's segment is compressed and uploaded,
/// the next one's rows are read on another connection (its rows are disjoint: they lie after the
/// previous batch's last key and locked rows are skipped). SQLite has a single writer: one.
const PIPELINE_DEPTH: usize = 3;

/// What the coordinator learns from a batch as soon as its rows are read.
struct Cursor {
    last_key: String,
    full: bool,
}

/// How one archive batch ended.
enum BatchEnd {
    Committed { cancel_requested: bool, rows: usize, txn: Duration },
    Empty,
}

/// SQLite's default busy handler (what `sqlite3_busy_timeout` installs, so what most
/// applications' SQLite connections wait with): a writer that finds the write lock taken sleeps
/// these many milliseconds between attempts, then 100 ms each. It does not queue: a writer gets the
/// lock only when an attempt falls between two of the run's transactions.
const SQLITE_BUSY_SLEEPS_MS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];

/// A SQLite batch is not made smaller than this for [`Pacing::batch_target`]: below it a batch's
/// time is more and more what every batch costs whatever its rows (≈ 6 ms: `strata-bench
/// sqlite-fairness` measured 49 ms for 5 000 rows and 24 ms for 2 100), so smaller batches would
/// hardly hold the lock for less, only archive slower.
const MIN_SPLIT_ROWS: i64 = 500;

/// How an archive or purge run on SQLite shares the database's one write lock with the
/// application's writers (`sqlite_sleep_coef`, `sqlite_batch_target`). PostgreSQL runs are not
/// paced: a batch there locks only its own rows, and batches overlap (see [`PIPELINE_DEPTH`]).
#[derive(Debug, Clone, Copy)]
struct Pacing {
    /// Pause after a batch, as a multiple of its transaction's time; 0: none.
    sleep_coef: f64,
    /// A batch whose transaction took longer makes the next one smaller; zero: never.
    batch_target: Duration,
    /// The policy's batch size: the most rows a batch takes.
    batch_size: i64,
}

impl Pacing {
    fn of(ctx: &Context, p: &Policy) -> Option<Self> {
        (ctx.db.backend() == db::BackendKind::Sqlite).then(|| Pacing {
            sleep_coef: ctx.config.sqlite_sleep_coef,
            batch_target: ctx.config.sqlite_batch_target,
            batch_size: p.spec.batch_size,
        })
    }

    /// The pause after a batch whose transaction took `txn`: `sleep_coef` times it, and at least
    /// the busy handler's sleep of a writer that has waited since the transaction began, so that
    /// such a writer attempts (and gets the lock) within the pause.
    fn pause(&self, txn: Duration) -> Duration {
        if self.sleep_coef <= 0.0 {
            return Duration::ZERO;
        }
        let waited = txn.as_millis() as u64;
        let mut slept = 0;
        let retry = SQLITE_BUSY_SLEEPS_MS
            .iter()
            .find(|&&d| {
                slept += d;
                slept >= waited
            })
            .copied()
            .unwrap_or(100);
        txn.mul_f64(self.sleep_coef).max(Duration::from_millis(retry))
    }

    /// Rows of the next batch after one of `rows` rows whose transaction took `txn`: as many as
    /// fit in `batch_target` at that batch's pace, at most twice as many as it took (one slow batch
    /// on a busy machine is not the new pace), at most the batch size and at least
    /// [`MIN_SPLIT_ROWS`] (or the batch size, when smaller).
    fn next_limit(&self, rows: usize, txn: Duration) -> i64 {
        if self.batch_target.is_zero() || rows == 0 || txn.is_zero() {
            return self.batch_size;
        }
        let fit = (rows as f64 * self.batch_target.as_secs_f64() / txn.as_secs_f64()) as i64;
        fit.min(2 * rows as i64).clamp(MIN_SPLIT_ROWS.min(self.batch_size), self.batch_size)
    }
}

/// Waits `pause` (a [`Pacing`] pause between two batches), or less when the server stops.
async fn pause(ctx: &Context, pause: Duration) {
    if !pause.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = ctx.background.cancelled() => {}
        }
    }
}

pub(super) async fn archive_rows(
    ctx: &Context,
    p: &Policy,
    run: &Run,
    sql: &store::TableSql,
    cutoff: DateTime<Utc>,
) -> Result<Stop> {
    clean_pending(ctx, p, run).await?;
    let columns: Vec<String> = sql.columns.iter().map(|c| format!("{} {}", c.name, c.ty)).collect();
    let columns = Arc::new(columns);
    let sql = Arc::new(sql.clone());
    let depth = if ctx.db.backend() == db::BackendKind::Postgres { PIPELINE_DEPTH } else { 1 };
    let pacing = Pacing::of(ctx, p);
    let mut limit = p.spec.batch_size;
    let mut inflight = std::collections::VecDeque::new();
    let mut after: Option<serde_json::Value> = None;
    // The last due key (see `store::last_due_key`), asked once the run needs a second batch.
    let mut upto: Option<serde_json::Value> = None;
    let mut last_due: Option<tokio::task::JoinHandle<Result<Option<String>>>> = None;
    let mut asked_last_due = false;
    let mut more = true;
    let mut outcome: Result<Stop> = Ok(Stop::Done);
    loop {
        while more && inflight.len() < depth {
            if let Some(q) = last_due.take_if(|q| q.is_finished()) {
                match q.await {
                    Ok(Ok(key)) => upto = key.and_then(|k| serde_json::from_str(&k).ok()),
                    Ok(Err(e)) => tracing::warn!(run = %run.id, error = %e, "last due key unknown; reading on"),
                    Err(e) => tracing::warn!(run = %run.id, error = %e, "last due key task failed; reading on"),
                }
            }
            if let Some(stop) = stop_requested(ctx, false) {
                outcome = Ok(stop);
                more = false;
                break;
            }
            let mut conn = ctx.db.write().await?;
            if !store::renew_lease(&mut conn, &p.id, &run.id, lease_until(ctx)).await? {
                outcome = Err(lease_lost());
                more = false;
                break;
            }
            drop(conn);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(
                one_batch(
                    ctx.clone(),
                    p.clone(),
                    run.id.clone(),
                    sql.clone(),
                    columns.clone(),
                    store::params(&sql, cutoff, &p.spec.filters, after.as_ref(), upto.as_ref(), limit),
                    (after.is_some(), upto.is_some()),
                    limit,
                    tx,
                )
                .in_current_span(),
            );
            inflight.push_back(task);
            // The next batch may start once this one has read (and locked) its rows.
            match rx.await {
                Ok(c) => {
                    more = c.full;
                    after = Some(serde_json::from_str(&c.last_key).map_err(|e| {
                        Error::Db(db::Error::Unsupported(format!("unreadable key {:?}: {e}", c.last_key)))
                    })?);
                    // PostgreSQL only (the only backend with batches in flight beside each other).
                    if more && depth > 1 && !asked_last_due {
                        asked_last_due = true;
                        let (ctx, sql) = (ctx.clone(), sql.clone());
                        let params = store::params(&sql, cutoff, &p.spec.filters, None, None, 0);
                        last_due = Some(tokio::spawn(
                            async move { Ok(store::last_due_key(&mut ctx.db.write().await?, &sql, &params).await?) }
                                .in_current_span(),
                        ));
                    }
                }
                Err(_) => more = false,
            }
        }
        let Some(task) = inflight.pop_front() else { break };
        let end = task.await.map_err(|e| Error::Unavailable(format!("batch task: {e}")))?;
        match end {
            Ok(BatchEnd::Committed { cancel_requested, rows, txn }) => {
                if let Some(stop) = stop_requested(ctx, cancel_requested) {
                    more = false;
                    if outcome.is_ok() {
                        outcome = Ok(stop);
                    }
                }
                // SQLite: one batch at a time, so the next one starts only after this pause.
                if let Some(pacing) = pacing.filter(|_| more) {
                    limit = pacing.next_limit(rows, txn);
                    pause(ctx, pacing.pause(txn)).await;
                }
            }
            Ok(BatchEnd::Empty) => more = false,
            Err(e) => {
                more = false;
                if outcome.is_ok() {
                    // A batch cut short by the server stopping was rolled back: the run stopped,
                    // it did not fail.
                    outcome = match (e, stop_requested(ctx, false)) {
                        (Error::Cancelled(_), Some(stop)) => Ok(stop),
                        (e, _) => Err(e),
                    };
                }
            }
        }
    }
    outcome
}

/// One archive batch in its own task and transaction: insert the pending manifest, lock and read
/// the rows (reporting the cursor), seal the segment, delete the rows and commit; on failure remove
/// the segment again.
#[expect(clippy::too_many_arguments, reason = "one batch's whole identity, passed to a spawned task")]
async fn one_batch(
    ctx: Context,
    p: Policy,
    run_id: String,
    sql: Arc<store::TableSql>,
    columns: Arc<Vec<String>>,
    params: String,
    (after, upto): (bool, bool),
    limit: i64,
    cursor: tokio::sync::oneshot::Sender<Cursor>,
) -> Result<BatchEnd> {
    let segment_id = uuid::Uuid::now_v7().to_string();
    let t = ctx.now();
    let pending =
        PendingSegment { id: &segment_id, policy_id: &p.id, run_id: &run_id, columns: &columns, created_at: t };
    store::insert_pending_segment(&mut ctx.db.write().await?, &pending).await?;
    let batch = Batch {
        sql: &sql,
        params,
        after,
        upto,
        policy_id: &p.id,
        run_id: &run_id,
        segment_id: &segment_id,
        lease_until: lease_until(&ctx),
        now: t,
    };
    let written = std::sync::Mutex::new(None::<String>);
    // The segment's sizes, counted in the metrics once its batch committed.
    let sizes = std::sync::Mutex::new((0u64, 0u64));
    let mut cursor = Some(cursor);
    let outcome = {
        let mut conn = ctx.db.write().await?;
        store::archive_batch(&mut conn, &batch, buffers::take(), async |rows: &mut DueRows| {
            if let Some(tx) = cursor.take() {
                let _ = tx.send(Cursor { last_key: rows.last_key.clone(), full: rows.count as i64 >= limit });
            }
            let sealed = seal(&ctx, &p, &segment_id, rows, &written).await?;
            *sizes.lock().expect("lock") = (sealed.raw_bytes as u64, sealed.compressed_bytes as u64);
            Ok(sealed)
        })
        .await
    };
    let key = written.lock().expect("lock").take();
    match outcome {
        Ok(BatchOutcome::Committed { rows, cancel_requested, txn, phases, .. }) => {
            tracing::debug!(
                run = %run_id, rows, txn_ms = txn.as_millis() as u64,
                select_ms = phases.select.as_millis() as u64, seal_ms = phases.seal.as_millis() as u64,
                finish_ms = phases.finish.as_millis() as u64, "archive batch committed"
            );
            let (raw, compressed) = *sizes.lock().expect("lock");
            ctx.metrics.archived(rows as u64, 1, raw, compressed);
            Ok(BatchEnd::Committed { cancel_requested, rows, txn })
        }
        Ok(BatchOutcome::Empty) => {
            discard(&ctx, &segment_id, key).await?;
            Ok(BatchEnd::Empty)
        }
        Ok(BatchOutcome::LeaseLost) => Err(lease_lost()),
        Err(e) => {
            // The transaction rolled back: the rows are in the table, the segment must go.
            if let Err(d) = discard(&ctx, &segment_id, key).await {
                tracing::warn!(segment = %segment_id, error = %d, "discarding a failed segment failed");
            }
            Err(match e {
                BatchError::Db(e) => e.into(),
                BatchError::Seal(e) => e,
            })
        }
    }
}

/// Memory that archive batches reuse. A batch's documents are a few megabytes and zstd's context
/// about one more; allocated fresh for every batch, the kernel zeroed each page again (page faults
/// were ≈ 3 % of a run's CPU).
mod buffers {
    use std::{cell::RefCell, sync::Mutex};

    /// Document buffers of finished batches: enough for the batches in flight.
    static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    /// Larger buffers are not kept (a batch of unusually wide rows).
    const KEEP_AT_MOST: usize = 64 << 20;

    pub(super) fn take() -> Vec<u8> {
        FREE.lock().expect("buffer pool").pop().unwrap_or_default()
    }

    pub(super) fn give(buffer: Vec<u8>) {
        let mut free = FREE.lock().expect("buffer pool");
        if buffer.capacity() <= KEEP_AT_MOST && free.len() <= super::PIPELINE_DEPTH {
            free.push(buffer);
        }
    }

    thread_local! {
        /// One compression context per blocking thread, reused.
        static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    }

    /// zstd at the archive's level, through this thread's context.
    pub(super) fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
        COMPRESSOR.with_borrow_mut(|c| {
            let c = match c {
                Some(c) => c,
                None => c.insert(zstd::bulk::Compressor::new(super::ZSTD_LEVEL)?),
            };
            c.compress(data)
        })
    }
}

/// Writes the rows as a compressed segment, reads it back and checks its SHA-256.
async fn seal(
    ctx: &Context,
    p: &Policy,
    segment_id: &str,
    rows: &mut DueRows,
    written: &std::sync::Mutex<Option<String>>,
) -> Result<Sealed> {
    let jsonl = std::mem::take(&mut rows.jsonl);
    let raw_bytes = jsonl.len() as i64;
    let started = std::time::Instant::now();
    // Compression is CPU work: off the async workers.
    let (compressed, sha256) = tokio::task::spawn_blocking(move || {
        let c = buffers::compress(&jsonl);
        buffers::give(jsonl);
        let c = c?;
        let h = hex::encode(Sha256::digest(&c));
        Ok::<_, std::io::Error>((Bytes::from(c), h))
    })
    .await
    .map_err(|e| Error::Unavailable(format!("compression task: {e}")))?
    .map_err(|e| Error::Unavailable(format!("compression: {e}")))?;
    let (min_ts, max_ts) = (rows.min_ts, rows.max_ts);
    let month = min_ts.and_then(DateTime::from_timestamp_micros).map(|t| t.format("%Y/%m").to_string());
    let object_key = format!("{}{}/{segment_id}.jsonl.zst", table_prefix(p), month.as_deref().unwrap_or("undated"));
    let size = compressed.len() as u64;
    let compressed_at = started.elapsed();
    *written.lock().expect("lock") = Some(object_key.clone());
    ctx.objects.put(&object_key, compressed.clone(), &ctx.background).await.map_err(store_unavailable)?;
    let written_at = started.elapsed();
    // Verify what the store holds before the rows are deleted: byte for byte against what was
    // sent (exact, and cheaper than hashing it again; the manifest's SHA-256 is of these bytes).
    let mut read = 0usize;
    let mut same = true;
    let mut s = ctx.objects.get(&object_key, 0, None, &ctx.background).await.map_err(store_unavailable)?;
    while let Some(chunk) = s.try_next().await.map_err(store_unavailable)? {
        let end = read + chunk.len();
        same &= end <= compressed.len() && compressed[read..end] == chunk[..];
        read = end;
    }
    if !same || read as u64 != size {
        return Err(Error::DataLoss(format!("segment {segment_id} read back differs from what was written")));
    }
    tracing::debug!(
        segment = segment_id,
        raw_bytes,
        compressed_bytes = size,
        compress_ms = compressed_at.as_millis() as u64,
        write_ms = (written_at - compressed_at).as_millis() as u64,
        verify_ms = (started.elapsed() - written_at).as_millis() as u64,
        "segment sealed"
    );
    Ok(Sealed {
        raw_bytes,
        compressed_bytes: size as i64,
        sha256,
        object_key,
        min_time: min_ts.and_then(micros_to_time),
        max_time: max_ts.and_then(micros_to_time),
    })
}

pub(super) async fn purge_rows(
    ctx: &Context,
    p: &Policy,
    run: &Run,
    sql: &store::TableSql,
    cutoff: DateTime<Utc>,
) -> Result<Stop> {
    let pacing = Pacing::of(ctx, p);
    let mut limit = p.spec.batch_size;
    loop {
        if let Some(stop) = stop_requested(ctx, false) {
            return Ok(stop);
        }
        let batch = Batch {
            sql,
            params: store::params(sql, cutoff, &p.spec.filters, None, None, limit),
            after: false,
            upto: false,
            policy_id: &p.id,
            run_id: &run.id,
            segment_id: "",
            lease_until: lease_until(ctx),
            now: ctx.now(),
        };
        let mut conn = ctx.db.write().await?;
        match store::purge_batch(&mut conn, &batch).await? {
            None => return Err(lease_lost()),
            Some((n, cancel, txn)) => {
                if let Some(stop) = stop_requested(ctx, cancel) {
                    return Ok(stop);
                }
                if (n as i64) < limit {
                    return Ok(Stop::Done);
                }
                drop(conn);
                if let Some(pacing) = pacing {
                    limit = pacing.next_limit(n, txn);
                    pause(ctx, pacing.pause(txn)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::archive::{PolicySpec, tests::spec};

    #[test]
    fn object_keys_stay_safe_whatever_the_table_name() {
        assert_eq!(key_part("my table/../x"), "my_table_.._x");
        let p = Policy {
            id: "p".into(),
            spec: PolicySpec { table_name: "bad/../name".into(), schema_name: "public".into(), ..spec() },
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        let prefix = table_prefix(&p);
        assert_eq!(prefix, "archive/public.bad_.._name/");
        assert!(!prefix.split('/').any(|s| s == ".."));
    }

    #[test]
    fn a_pause_outlasts_the_busy_sleep_of_a_writer_waiting_since_the_batch_began() {
        let ms = Duration::from_millis;
        let pacing = Pacing { sleep_coef: 0.5, batch_target: ms(25), batch_size: 5000 };
        // Half the transaction, when that is longer than the busy handler's sleep at that point…
        assert_eq!(pacing.pause(ms(100)), ms(50));
        assert_eq!(pacing.pause(ms(4000)), ms(2000));
        // …else that sleep: after 25 ms a writer sleeps from 18 to 33 ms, after 40 ms from 33 to 53.
        assert_eq!(pacing.pause(ms(25)), ms(15));
        assert_eq!(pacing.pause(ms(40)), ms(20));
        assert_eq!(Pacing { sleep_coef: 0.1, ..pacing }.pause(ms(300)), ms(100));
        assert_eq!(Pacing { sleep_coef: 0.0, ..pacing }.pause(ms(40)), Duration::ZERO);
    }

    #[test]
    fn batches_shrink_to_the_target_time_and_grow_back_to_the_batch_size() {
        let ms = Duration::from_millis;
        let pacing = Pacing { sleep_coef: 0.5, batch_target: ms(25), batch_size: 5000 };
        assert_eq!(pacing.next_limit(5000, ms(50)), 2500);
        assert_eq!(pacing.next_limit(2500, ms(25)), 2500);
        // At most twice the last batch, at most the batch size, at least MIN_SPLIT_ROWS…
        assert_eq!(pacing.next_limit(1000, ms(5)), 2000);
        assert_eq!(pacing.next_limit(4000, ms(10)), 5000);
        assert_eq!(pacing.next_limit(5000, ms(2000)), MIN_SPLIT_ROWS);
        assert_eq!(Pacing { batch_size: 100_000, ..pacing }.next_limit(100_000, ms(1000)), 2500);
        // …unless the policy's batches are smaller: those are never split.
        assert_eq!(Pacing { batch_size: 5, ..pacing }.next_limit(5, ms(2000)), 5);
        // No target: the batch size.
        assert_eq!(Pacing { batch_target: Duration::ZERO, ..pacing }.next_limit(5000, ms(50)), 5000);
    }
}
