//! Background loops. Each is a `select!` on a CancellationToken; each run is idempotent.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::service::{Context, files, metrics};

/// Probes every database node each `interval`: drives read routing and the health service.
pub async fn monitor(ctx: Context, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => { ctx.db.probe_all().await; }
        }
    }
}

/// Stores a storage-metrics snapshot each `interval` (growth history for `GetGrowth`).
pub async fn sampler(ctx: Context, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => match metrics::record_snapshot(&ctx).await {
                Ok(s) => tracing::debug!(snapshot = s.id, tables = s.table_count, bytes = s.database_size_bytes, "metrics snapshot stored"),
                Err(e) => tracing::warn!(error = %e, "metrics snapshot failed; retrying at the next interval"),
            },
        }
    }
}

/// Expires abandoned uploads each `interval` and discards their partial objects.
pub async fn expire_uploads(ctx: Context, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => if let Err(e) = files::expire_uploads(&ctx).await {
                tracing::warn!(error = %e, "expiring uploads failed; retrying at the next interval");
            },
        }
    }
}
