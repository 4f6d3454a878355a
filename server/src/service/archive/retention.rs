//! Retention runs: segments whose newest row is older than the policy's `delete_after` are
//! deleted, object and manifest.

use chrono::{DateTime, Utc};

use super::{
    Policy, Run, RunKind, SegmentState, Stop, Work, get_policy, lease_lost, lease_until, run::clean_pending, start,
    stop_requested,
};
use crate::{
    db::archive as store,
    service::{Context, Error, Result, store_unavailable},
};

/// Due segments read per page.
const RETENTION_PAGE: i64 = 500;

/// Starts deleting the policy's expired segments.
pub async fn apply_retention(ctx: &Context, policy: &str) -> Result<Run> {
    let p = get_policy(ctx, policy).await?;
    let Some(keep) = p.spec.delete_after else {
        return Err(Error::FailedPrecondition(format!("policy {:?} has no delete_after", p.spec.name)));
    };
    let cutoff = ctx.now_utc() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::zero());
    start(ctx, p, RunKind::Retention, Some(cutoff), Work::Retention { cutoff }).await
}

pub(super) async fn retention(ctx: &Context, p: &Policy, run: &Run, cutoff: DateTime<Utc>) -> Result<Stop> {
    clean_pending(ctx, p, run).await?;
    let states = [SegmentState::Committed, SegmentState::Restored, SegmentState::Deleting];
    // A page of due segments at a time (id order): a policy's segments are never all in memory.
    let mut after: Option<String> = None;
    loop {
        let mut conn = ctx.db.write().await?;
        let due =
            store::segments_page(&mut conn, &p.id, &states, Some(cutoff.naive_utc()), after.as_deref(), RETENTION_PAGE)
                .await?;
        drop(conn);
        let Some(last) = due.last() else { break };
        after = Some(last.id.clone());
        for s in due {
            if let Some(stop) = stop_requested(ctx, false) {
                return Ok(stop);
            }
            let mut conn = ctx.db.write().await?;
            if !store::renew_lease(&mut conn, &p.id, &run.id, lease_until(ctx)).await? {
                return Err(lease_lost());
            }
            // Marked first: a crash after the object is gone leaves a manifest that says so, and the
            // next retention run finishes the job (deleting a missing object succeeds).
            store::set_segment_state(&mut conn, &s.id, SegmentState::Deleting).await?;
            drop(conn);
            ctx.objects.delete(&s.object_key, &ctx.background).await.map_err(store_unavailable)?;
            let mut conn = ctx.db.write().await?;
            store::delete_segment(&mut conn, &s.id).await?;
            let progress = store::Progress {
                rows: s.row_count,
                segments: 1,
                raw: s.raw_bytes,
                compressed: s.compressed_bytes,
                ..Default::default()
            };
            if let Some(stop) =
                stop_requested(ctx, store::add_progress(&mut conn, &run.id, &progress, ctx.now()).await?)
            {
                return Ok(stop);
            }
        }
    }
    Ok(Stop::Done)
}
