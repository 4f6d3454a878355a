//! The alert feed's tailer: follows the event table and publishes every new event on
//! `ctx.alert_feed` (WatchAlerts) while anyone listens, so a subscriber sees changes made by any
//! instance.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::service::{Context, alerts::Tail};

/// How often the tailer reads new events while someone is watching.
const TAIL_EVERY: Duration = Duration::from_millis(250);

/// Follows the event table and publishes every new event on `ctx.alert_feed` while anyone
/// listens. Runs until `cancel`.
pub async fn tail(ctx: Context, cancel: CancellationToken) {
    let mut tail = Tail::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(TAIL_EVERY) => {}
        }
        if ctx.alert_feed.receiver_count() == 0 {
            tail.reset();
            continue;
        }
        if let Err(e) = tail.step(&ctx).await {
            tracing::debug!(error = %e, "reading alert events failed; retrying");
        }
    }
}
