//! Restore runs (segments back into the table) and ReadArchive (segments' rows to a client).

use futures::TryStreamExt;
use sha2::{Digest, Sha256};

use super::{
    Policy, Run, RunKind, Segment, SegmentState, Selection, Stop, Work, get_policy, lease_lost, lease_until, resolve,
    segments_of, start, stop_requested,
};
use crate::{
    db::archive::{self as store, Batch},
    service::{Context, Error, Result, store_unavailable},
};

/// ReadArchive sends rows in messages of about this many bytes (below HTTP/2 send buffers).
const READ_CHUNK: usize = 256 << 10;

/// Segments read per page of a time-range selection.
const SEGMENT_PAGE: i64 = 100;

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

/// Fetches a segment, checks its SHA-256 and decompresses it.
async fn load_segment(ctx: &Context, s: &Segment) -> Result<Vec<u8>> {
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
    let expected = s.sha256.clone();
    let id = s.id.clone();
    tokio::task::spawn_blocking(move || {
        if hex::encode(Sha256::digest(&body)) != expected {
            return Err(Error::DataLoss(format!("segment {id}: object checksum does not match its manifest")));
        }
        zstd::stream::decode_all(body.as_slice())
            .map_err(|e| Error::DataLoss(format!("segment {id}: cannot decompress: {e}")))
    })
    .await
    .map_err(|e| Error::Unavailable(format!("decompression task: {e}")))?
}

pub(super) async fn restore_segments(
    ctx: &Context,
    p: &Policy,
    run: &Run,
    sql: &store::TableSql,
    mut segments: Selected,
) -> Result<Stop> {
    while let Some(s) = segments.next(ctx).await? {
        if let Some(stop) = stop_requested(ctx, false) {
            return Ok(stop);
        }
        let raw = load_segment(ctx, &s).await?;
        let text = String::from_utf8(raw).map_err(|_| Error::DataLoss(format!("segment {} is not UTF-8", s.id)))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        let json = format!("[{}]", lines.join(","));
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
        let mut conn = ctx.db.write().await?;
        if store::restore_segment(&mut conn, &batch, &json, lines.len(), s.raw_bytes, s.compressed_bytes)
            .await?
            .is_none()
        {
            // Lost the lease, or the segment was restored or deleted meanwhile.
            let mut conn = ctx.db.write().await?;
            if !store::renew_lease(&mut conn, &p.id, &run.id, lease_until(ctx)).await? {
                return Err(lease_lost());
            }
        }
        let mut conn = ctx.db.write().await?;
        let cancel = store::add_progress(&mut conn, &run.id, &store::Progress::default(), ctx.now()).await?;
        if let Some(stop) = stop_requested(ctx, cancel) {
            return Ok(stop);
        }
    }
    Ok(Stop::Done)
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
