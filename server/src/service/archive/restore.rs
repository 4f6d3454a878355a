//! Restore runs (segments back into the table) and ReadArchive (segments' rows to a client).
//!
//! A restore run is a pipeline: a feeder task lists the selected segments, fetches, checks and
//! decodes a few ahead (`DECODE_AHEAD`), and the table's writers (`db::archive::restore_writers`:
//! two COPY sessions on PostgreSQL) each take the next decoded segment and restore it in one
//! transaction. Segments are independent (each commits its rows with its restored mark), so the
//! order in which they commit does not matter.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use futures::{StreamExt as _, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{
    Policy, Run, RunKind, Segment, SegmentState, Selection, Stop, Work, get_policy, lease_lost, lease_until, resolve,
    segments_of, start, stop_requested,
};
use crate::{
    db::archive::{self as store, Batch, RestorePlan, RestoreWriter, SegmentRows, TableSpec},
    service::{Context, Error, Result, store_unavailable},
};

/// ReadArchive sends rows in messages of about this many bytes (below HTTP/2 send buffers).
const READ_CHUNK: usize = 256 << 10;

/// Segments read per page of a time-range selection.
const SEGMENT_PAGE: i64 = 100;

/// Segments fetched and decoded at once, ahead of the writers: on two cores, decoding one segment
/// while the writers' transactions run keeps them fed (measured with `strata-bench restore`).
const DECODE_AHEAD: usize = 2;

/// At most this many bytes of segments (their JSON Lines) are between fetch and commit, so a
/// restore of large segments does not hold many of them in memory at once (a decoded segment takes
/// about twice its JSON Lines).
const IN_FLIGHT_BYTES: usize = 256 << 20;

/// Starts restoring the selected segments.
pub async fn restore(ctx: &Context, policy: &str, selection: Selection) -> Result<Run> {
    let p = get_policy(ctx, policy).await?;
    let sql = resolve(ctx, &p.spec).await?;
    let segments = select_segments(ctx, &p, &selection).await?;
    start(ctx, p, RunKind::Restore, None, Work::Restore { sql, segments }).await
}

/// The committed segments a selection names, oldest rows first, handed out one at a time: ids are
/// checked up front (the request holds them anyway); a time range is read from the catalog a page
/// at a time, so a policy's segments are never all in memory.
pub(super) enum Selected {
    /// Segments named by id.
    Ids(std::vec::IntoIter<Segment>),
    /// Segments overlapping a time range.
    Range {
        policy: String,
        from: Option<chrono::NaiveDateTime>,
        to: Option<chrono::NaiveDateTime>,
        at: store::TimeOrder,
        page: std::collections::VecDeque<Segment>,
        done: bool,
    },
}

impl Selected {
    /// The next segment; None after the last.
    async fn next(&mut self, ctx: &Context) -> Result<Option<Segment>> {
        match self {
            Self::Ids(ids) => Ok(ids.next()),
            Self::Range { policy, from, to, at, page, done } => {
                while page.is_empty() && !*done {
                    let mut conn = ctx.db.read_prefer_primary().await?.0;
                    let rows = store::committed_segments_page(&mut conn, policy, *from, *to, at, SEGMENT_PAGE).await?;
                    let full = rows.len() as i64 == SEGMENT_PAGE;
                    page.extend(segments_of(rows));
                    let last = page.back().filter(|_| full);
                    match (&*at, last) {
                        (store::TimeOrder::Untimed(_), Some(s)) => *at = store::TimeOrder::Untimed(Some(s.id.clone())),
                        // Past the last segment without row times: on to the others.
                        (store::TimeOrder::Untimed(_), None) => *at = store::TimeOrder::Timed(None),
                        (store::TimeOrder::Timed(_), Some(s)) => {
                            let oldest = s.min_time.expect("a timed segment has its oldest row's time");
                            *at = store::TimeOrder::Timed(Some((oldest.naive_utc(), s.id.clone())));
                        }
                        (store::TimeOrder::Timed(_), None) => *done = true,
                    }
                }
                Ok(page.pop_front())
            }
        }
    }
}

async fn select_segments(ctx: &Context, p: &Policy, sel: &Selection) -> Result<Selected> {
    match sel {
        Selection::Ids(ids) => {
            let mut conn = ctx.db.read_prefer_primary().await?.0;
            let found = segments_of(store::segments_by_id(&mut conn, ids).await?);
            for id in ids {
                match found.iter().find(|s| &s.id == id) {
                    None => return Err(Error::NotFound(format!("segment {id:?}"))),
                    Some(s) if s.policy_id != p.id => {
                        return Err(Error::InvalidArgument(format!("segment {id} belongs to another policy")));
                    }
                    Some(s) if s.state != SegmentState::Committed => {
                        return Err(Error::FailedPrecondition(format!("segment {id} is {}", s.state)));
                    }
                    Some(_) => {}
                }
            }
            Ok(Selected::Ids(found.into_iter()))
        }
        Selection::Range { start, end } => {
            let (from, to) = (start.map(|t| t.naive_utc()), end.map(|t| t.naive_utc()));
            // Segments without row times match only an unbounded selection.
            let at = if from.is_none() && to.is_none() {
                store::TimeOrder::Untimed(None)
            } else {
                store::TimeOrder::Timed(None)
            };
            Ok(Selected::Range { policy: p.id.clone(), from, to, at, page: Default::default(), done: false })
        }
    }
}

/// Fetches a segment's object.
async fn fetch(ctx: &Context, s: &Segment) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(s.compressed_bytes.max(0) as usize);
    let mut stream = ctx.objects.get(&s.object_key, 0, None, &ctx.background).await.map_err(|e| match e {
        crate::objects::Error::NotFound(_) => {
            Error::DataLoss(format!("segment {} object {} is missing", s.id, s.object_key))
        }
        e => store_unavailable(e),
    })?;
    while let Some(chunk) = stream.try_next().await.map_err(store_unavailable)? {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Checks a segment object's SHA-256 against its manifest and decompresses it (CPU work).
fn unpack(id: &str, sha256: &str, body: &[u8]) -> Result<Vec<u8>> {
    if hex::encode(Sha256::digest(body)) != sha256 {
        return Err(Error::DataLoss(format!("segment {id}: object checksum does not match its manifest")));
    }
    zstd::stream::decode_all(body).map_err(|e| Error::DataLoss(format!("segment {id}: cannot decompress: {e}")))
}

/// Fetches a segment, checks its SHA-256 and decompresses it.
async fn load_segment(ctx: &Context, s: &Segment) -> Result<Vec<u8>> {
    let body = fetch(ctx, s).await?;
    let (id, expected) = (s.id.clone(), s.sha256.clone());
    tokio::task::spawn_blocking(move || unpack(&id, &expected, &body))
        .await
        .map_err(|e| Error::Unavailable(format!("decompression task: {e}")))?
}

/// Fetches a segment, checks it, and decodes its rows for the table's writers.
async fn load_rows(ctx: &Context, s: &Segment, plan: &RestorePlan) -> Result<SegmentRows> {
    let body = fetch(ctx, s).await?;
    let (id, expected, plan) = (s.id.clone(), s.sha256.clone(), plan.clone());
    tokio::task::spawn_blocking(move || {
        plan.decode(unpack(&id, &expected, &body)?).map_err(|_| Error::DataLoss(format!("segment {id} is not UTF-8")))
    })
    .await
    .map_err(|e| Error::Unavailable(format!("decoding task: {e}")))?
}

/// A decoded segment on its way to a writer, with its share of [`IN_FLIGHT_BYTES`].
type Loaded = (Segment, SegmentRows, OwnedSemaphorePermit);

pub(super) async fn restore_segments(
    ctx: &Context,
    p: &Policy,
    run: &Run,
    sql: &store::TableSql,
    segments: Selected,
) -> Result<Stop> {
    let spec = TableSpec {
        schema_name: &p.spec.schema_name,
        table_name: &p.spec.table_name,
        time_column: &p.spec.time_column,
        key_columns: &p.spec.key_columns,
        filters: &p.spec.filters,
    };
    let plan = store::restore_plan(&mut ctx.db.write().await?, sql, &spec).await?;
    if let Some(why) = plan.exact_because() {
        tracing::info!(run = %run.id, policy = %p.spec.name, reason = why, "restoring without COPY");
    }
    let mut writers = store::restore_writers(&ctx.db, &plan).await?;
    let (tx, rx) = mpsc::channel(1);
    // Ends with the run, whichever way it ends.
    let _feeder = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(feed(ctx.clone(), plan.clone(), segments, tx)));
    let rx = tokio::sync::Mutex::new(rx);
    let stopping = AtomicBool::new(false);
    let stops = futures::future::try_join_all(
        writers.iter_mut().map(|w| write_segments(ctx, p, run, sql, &plan, w, &rx, &stopping)),
    )
    .await?;
    Ok(stops.into_iter().flatten().next().unwrap_or(Stop::Done))
}

/// Lists the selected segments and loads them [`DECODE_AHEAD`] at a time, in order, into `tx`;
/// stops at the first error (handed on) or when the writers are gone.
async fn feed(ctx: Context, plan: RestorePlan, segments: Selected, tx: mpsc::Sender<Result<Loaded>>) {
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES >> 10));
    let listed = futures::stream::try_unfold(segments, |mut segments| {
        let ctx = ctx.clone();
        async move { Ok::<_, Error>(segments.next(&ctx).await?.map(|s| (s, segments))) }
    });
    let loaded = listed
        .map_ok(|s| {
            let (ctx, plan, budget) = (&ctx, &plan, budget.clone());
            async move {
                let kib = u32::try_from((s.raw_bytes.max(0) as usize >> 10).clamp(1, IN_FLIGHT_BYTES >> 10))
                    .unwrap_or(u32::MAX);
                let permit = budget.acquire_many_owned(kib).await.map_err(|e| Error::Unavailable(e.to_string()))?;
                let rows = load_rows(ctx, &s, plan).await?;
                Ok((s, rows, permit))
            }
        })
        .try_buffered(DECODE_AHEAD);
    let mut loaded = std::pin::pin!(loaded);
    while let Some(item) = loaded.next().await {
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// One writer's share of the run: the next loaded segment, restored, until none is left, the run
/// is to stop (returned, and told the other writers through `stopping`) or something fails.
#[expect(clippy::too_many_arguments, reason = "the run's parts, borrowed from restore_segments")]
async fn write_segments(
    ctx: &Context,
    p: &Policy,
    run: &Run,
    sql: &store::TableSql,
    plan: &RestorePlan,
    writer: &mut RestoreWriter,
    rx: &tokio::sync::Mutex<mpsc::Receiver<Result<Loaded>>>,
    stopping: &AtomicBool,
) -> Result<Option<Stop>> {
    let stop = |s: Stop| {
        stopping.store(true, Ordering::Relaxed);
        Ok(Some(s))
    };
    loop {
        if stopping.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if let Some(s) = stop_requested(ctx, false) {
            return stop(s);
        }
        let Some(next) = rx.lock().await.recv().await else { return Ok(None) };
        let (s, rows, _permit) = next?;
        let batch = Batch {
            sql,
            params: String::new(),
            after: false,
            upto: false,
            policy_id: &p.id,
            run_id: &run.id,
            segment_id: &s.id,
            lease_until: lease_until(ctx),
            now: ctx.now(),
        };
        let cancel = match writer.restore(plan, &batch, &rows, s.raw_bytes, s.compressed_bytes).await? {
            Some(r) => r.cancel_requested,
            None => {
                // Lost the lease, or the segment was restored or deleted meanwhile.
                let mut conn = ctx.db.write().await?;
                if !store::renew_lease(&mut conn, &p.id, &run.id, lease_until(ctx)).await? {
                    return Err(lease_lost());
                }
                store::add_progress(&mut conn, &run.id, &store::Progress::default(), ctx.now()).await?
            }
        };
        if let Some(s) = stop_requested(ctx, cancel) {
            return stop(s);
        }
    }
}

/// Rows of the selected committed segments, in chunks, sent to `tx` until it closes.
pub async fn read(
    ctx: &Context,
    policy: &str,
    selection: Selection,
    tx: tokio::sync::mpsc::Sender<Result<(String, Vec<String>)>>,
) {
    let segments = match get_policy(ctx, policy).await {
        Ok(p) => select_segments(ctx, &p, &selection).await,
        Err(e) => Err(e),
    };
    let mut segments = match segments {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    loop {
        let s = match segments.next(ctx).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let raw = match load_segment(ctx, &s).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let Ok(text) = String::from_utf8(raw) else {
            let _ = tx.send(Err(Error::DataLoss(format!("segment {} is not UTF-8", s.id)))).await;
            return;
        };
        let mut chunk = Vec::new();
        let mut size = 0;
        for line in text.lines().filter(|l| !l.is_empty()) {
            size += line.len();
            chunk.push(line.to_owned());
            if size >= READ_CHUNK {
                if tx.send(Ok((s.id.clone(), std::mem::take(&mut chunk)))).await.is_err() {
                    return;
                }
                size = 0;
            }
        }
        if !chunk.is_empty() && tx.send(Ok((s.id.clone(), chunk))).await.is_err() {
            return;
        }
    }
}
