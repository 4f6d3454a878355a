//! Background loops. Each is a `select!` on a CancellationToken; each run is idempotent.
//!
//! `jobs` calls into `service`, never the other way round: [`dispatch`] does the work of job runs,
//! [`feed`] tails the alert events for WatchAlerts.

pub mod dispatch;
pub mod feed;

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::service::{
    Context, alerts, audit, blob_migration, files, maintenance,
    operation::{self, OperationKind, OperationRow},
    partitions, scheduler,
};

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

/// Probes the object store every `interval` (at least a second: an S3 probe is a request).
pub async fn object_store_monitor(ctx: Context, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => { crate::service::admin::probe_objects(&ctx).await; }
        }
    }
}

/// Reads the catalog's figures for `/metrics` every `interval` (`service::exporter`), the first
/// time at once.
pub async fn metrics_catalog(ctx: Context, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => crate::service::exporter::refresh_catalog(&ctx).await,
        }
    }
}

/// Takes over blob migrations whose runner's lease lapsed (its instance stopped or died), each
/// `interval`, on every instance: migrations are started by RPCs on any of them. The first check
/// runs at once, so a restarted single instance resumes what it was running.
pub async fn blob_migrations(ctx: Context, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => if let Err(e) = blob_migration::take_over_lapsed(&ctx).await {
                tracing::warn!(error = %e, "checking for blob migrations to take over failed; retrying");
            },
        }
    }
}

/// Takes over long operations whose instance stopped or died, each `interval`, on every instance:
/// operations are started by RPCs on any of them. The first check runs at once, so a restarted
/// single instance continues what it was running. Ended operations older than
/// [`operation::HISTORY`], and audit events past `audit_retention`, are pruned about once an hour.
pub async fn operations(ctx: Context, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let prune_every = (3_600_000 / interval.as_millis().max(1)).max(1) as u64;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {
                match operation::take_over_lapsed(&ctx).await {
                    Ok(taken) => taken.into_iter().for_each(|(row, runner)| resume(&ctx, row, runner)),
                    Err(e) => tracing::warn!(error = %e, "checking for operations to take over failed; retrying"),
                }
                if ticks.is_multiple_of(prune_every) {
                    match operation::prune(&ctx).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(operations = n, "pruned ended operations"),
                        Err(e) => tracing::warn!(error = %e, "pruning ended operations failed"),
                    }
                    match audit::prune(&ctx).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(events = n, "pruned audit events past audit_retention"),
                        Err(e) => tracing::warn!(error = %e, "pruning audit events failed"),
                    }
                }
                ticks += 1;
            },
        }
    }
}

/// Continues an operation taken over here with its kind's work.
fn resume(ctx: &Context, row: OperationRow, runner: String) {
    match row.kind {
        OperationKind::Maintenance => operation::drive(ctx, row, runner, maintenance::work),
        OperationKind::Reconcile => operation::drive(ctx, row, runner, files::reconcile::work),
        OperationKind::Rescue => operation::drive(ctx, row, runner, partitions::rescue_work),
    }
}

/// Sends due alert notifications (webhook, email) every `interval`, with retries recorded in
/// the catalog. Runs on instances that run the scheduler.
pub async fn notifier(ctx: Context, interval: Duration, cancel: CancellationToken) {
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(15)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; alert notifications are not sent");
            return;
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => if let Err(e) = alerts::deliver_due(&ctx, &http).await {
                tracing::warn!(error = %e, "sending alert notifications failed; retrying");
            },
        }
    }
}

/// The scheduler loop of this instance: polls for due jobs and lapsed runs each `interval`
/// (see `service::scheduler`). The runs it claims are handed to [`dispatch::start`] (through
/// `ctx.start_run`) and cancelled by `ctx.background` at shutdown.
pub async fn scheduler(ctx: Context, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => match scheduler::poll(&ctx).await {
                Ok(()) => failing = false,
                // Logged once per outage, not once per poll.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "scheduler poll failed; retrying every poll interval");
                }
                Err(_) => {}
            },
        }
    }
    if let Err(e) = scheduler::forget_self(&ctx).await {
        tracing::debug!(error = %e, "could not remove this instance from the scheduler's list");
    }
}
