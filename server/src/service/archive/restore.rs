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

/// Starts restoring the selected segments.
pub async fn restore(ctx: &Context, policy: &str, selection: Selection) -> Result<Run> {
    let p = get_policy(ctx, policy).await?;
    let sql = resolve(ctx, &p.spec).await?;
    let segments = select_segments(ctx, &p, &selection).await?;
    start(ctx, p, RunKind::Restore, None, Work::Restore { sql, segments }).await
}

async fn select_segments(ctx: &Context, p: &Policy, sel: &Selection) -> Result<Vec<Segment>> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    match sel {
        Selection::Ids(ids) => {
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
            Ok(found)
        }
        Selection::Range { start, end } => {
            // The range is the database's filter: only the selected segments are read, a page at a
            // time, not every segment of the policy.
            let range = Some((start.map(|t| t.naive_utc()), end.map(|t| t.naive_utc())));
            let mut out = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store::segments_page(
                    &mut conn,
                    &p.id,
                    &[SegmentState::Committed],
                    None,
                    range,
                    after.as_deref(),
                    1000,
                )
                .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                out.extend(segments_of(page));
            }
            // Oldest rows first, as the segments' manifests order them.
            out.sort_by(|a, b| a.min_time.cmp(&b.min_time).then_with(|| a.id.cmp(&b.id)));
            Ok(out)
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
    segments: Vec<Segment>,
) -> Result<Stop> {
    for s in segments {
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
    let segments = match segments {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    for s in segments {
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
