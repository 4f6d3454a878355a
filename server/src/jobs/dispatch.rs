//! The job dispatcher: runs a claimed job run (lease renewal, timeout, panics as failures, the
//! record of how it ended) and does each kind's work by calling the services.
//!
//! It lives here rather than in `service::scheduler` because the work calls into almost every
//! service (archive, backup, maintenance, partitions, blob migration, metrics, alerts): from
//! `jobs` those calls point down, while from a service they made `alerts` and `scheduler` import
//! each other. `service::scheduler` claims and records runs; it starts them through
//! [`Context::start_run`], which is [`start`].

use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::service::{
    self, Context, Error, Result,
    scheduler::{self, JobKind, JobRun, JobRunState, JobSpec, blob_request, bool_option, premake_request},
};

/// Starts run `run` of `job`, held by this instance, on `ctx.tasks` (the server waits for it at
/// shutdown); the [`service::scheduler::StartRun`] of this server.
pub fn start(ctx: &Context, job: JobSpec, run: JobRun) {
    use tracing::Instrument as _;
    let c = ctx.clone();
    // A span per run: its log lines (and those of the services it calls) name the job and run.
    let span = tracing::info_span!(parent: None, "job_run", job = %job.name, run = %run.id);
    ctx.tasks.spawn(async move { execute(c, job, run).await }.instrument(span));
}

/// How a run ended.
enum Outcome {
    Done(anyhow::Result<String>),
    TimedOut,
    Cancelled(&'static str),
}

/// Runs one claimed run: renews its lease, enforces the timeout, records how it ended (unless
/// another instance took it over meanwhile), prunes the job's history.
async fn execute(ctx: Context, job: JobSpec, run: JobRun) {
    tracing::info!(job = %job.name, run = %run.id, attempt = run.attempt, scheduled_for = %run.scheduled_for, "job run started");
    let started = Instant::now();
    let stop = CancellationToken::new();
    let lost = CancellationToken::new();
    let heartbeat = {
        let (ctx, id, attempt, lost, stop) = (ctx.clone(), run.id.clone(), run.attempt, lost.clone(), stop.clone());
        tokio::spawn(async move {
            let every = (ctx.config.run_lease / 3).max(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                match scheduler::renew_lease(&ctx, &id, attempt).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.cancel();
                        break;
                    }
                    // The lease may lapse if this lasts; then another instance takes over and
                    // this one's result is not recorded.
                    Err(e) => tracing::warn!(run = %id, error = %e, "renewing a job run's lease failed"),
                }
            }
        })
    };
    // Whatever happens below, the heartbeat stops with this task: a lease renewed forever would
    // show the run as running forever and refuse every later run of the job.
    let _heartbeat_stops = stop.clone().drop_guard();
    let timeout = (!job.timeout.is_zero()).then_some(job.timeout);
    // A panic in the work is a failed run, recorded like any other failure.
    let work = panics_as_errors(perform(&ctx, &job, stop.clone()));
    tokio::pin!(work);
    let outcome = tokio::select! {
        r = &mut work => Outcome::Done(r),
        _ = async { match timeout { Some(t) => tokio::time::sleep(t).await, None => std::future::pending().await } } => Outcome::TimedOut,
        _ = ctx.background.cancelled() => Outcome::Cancelled("cancelled: the server is shutting down"),
        _ = lost.cancelled() => Outcome::Cancelled("cancelled: its lease was lost (another instance took the run over)"),
    };
    if !matches!(outcome, Outcome::Done(_)) {
        // Let the work stop cleanly (an archival run records its own cancellation).
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut work).await;
    }
    stop.cancel();
    let _ = heartbeat.await;
    let (state, message, error) = match outcome {
        Outcome::Done(Ok(m)) => (JobRunState::Succeeded, m, None),
        Outcome::Done(Err(e)) => (JobRunState::Failed, String::new(), Some(format!("{e:#}"))),
        Outcome::TimedOut => (
            JobRunState::TimedOut,
            String::new(),
            Some(format!("timed out after {}", humantime::format_duration(timeout.unwrap_or_default()))),
        ),
        Outcome::Cancelled(why) => (JobRunState::Cancelled, String::new(), Some(why.to_string())),
    };
    let recorded = scheduler::finish_run(&ctx, &run, state, &message, error.as_deref()).await;
    match recorded {
        Ok(true) => {
            ctx.metrics.run_finished(&job.name, job.kind.as_str(), state.as_str(), started.elapsed());
            tracing::info!(job = %job.name, run = %run.id, state = state.as_str(), message = %message, error = error.as_deref().unwrap_or(""), "job run ended")
        }
        Ok(false) => {
            tracing::warn!(job = %job.name, run = %run.id, "job run was taken over by another instance; its result here is dropped")
        }
        Err(e) => {
            tracing::error!(job = %job.name, run = %run.id, error = %e, "recording a job run's end failed; another instance will run it again")
        }
    }
}

/// `work`, with a panic inside it turned into an error carrying the panic's message.
async fn panics_as_errors(work: impl Future<Output = anyhow::Result<String>>) -> anyhow::Result<String> {
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(done) => done,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            Err(anyhow::anyhow!("the job's work panicked: {msg}"))
        }
    }
}

/// Does the job's work; Ok(message) says what was done.
async fn perform(ctx: &Context, spec: &JobSpec, stop: CancellationToken) -> anyhow::Result<String> {
    match spec.kind {
        JobKind::MetricsSample => {
            let s = service::metrics::record_snapshot(ctx).await?;
            Ok(format!("snapshot {}: {} bytes in {} tables", s.id, s.database_size_bytes, s.table_count))
        }
        JobKind::UploadExpiry => {
            let n = service::files::expire_uploads(ctx).await?;
            Ok(format!("{n} abandoned upload(s) expired"))
        }
        JobKind::AlertEvaluation => {
            let e = service::alerts::evaluate(ctx).await?;
            let mut m = format!(
                "{} rule(s), {} series: {} fired, {} escalated, {} resolved",
                e.rules, e.series, e.fired, e.escalated, e.resolved
            );
            if !e.failed_rules.is_empty() {
                m.push_str(&format!("; unreadable: {}", e.failed_rules.join("; ")));
            }
            Ok(m)
        }
        JobKind::Archive | JobKind::Retention => {
            // A run of an instance that died holds the policy until its lease lapses: wait that
            // long (twice, for clock skew) before calling the policy busy.
            let patience = Instant::now() + ctx.config.run_lease * 2 + Duration::from_secs(1);
            let run = loop {
                let r = if spec.kind == JobKind::Archive {
                    service::archive::run(ctx, &spec.target).await
                } else {
                    service::archive::apply_retention(ctx, &spec.target).await
                };
                match r {
                    Err(Error::Busy(_)) if Instant::now() < patience => tokio::select! {
                        _ = stop.cancelled() => anyhow::bail!("stopped while the policy was busy"),
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    },
                    r => break r?,
                }
            };
            let id = run.id.clone();
            let run = wait_archive(ctx, &id, &stop).await?;
            let r = &run;
            match r.state {
                service::archive::RunState::Succeeded => Ok(format!(
                    "{} run {id}: {} rows, {} segments, {} bytes stored",
                    run.kind.as_str(),
                    r.rows_done,
                    r.segments_done,
                    r.compressed_bytes
                )),
                other => {
                    anyhow::bail!("{} run {id} {other}: {}", run.kind.as_str(), r.error.clone().unwrap_or_default())
                }
            }
        }
        JobKind::Maintenance => {
            let mut tables = Vec::new();
            for t in spec.target.split(',').filter(|t| !t.trim().is_empty()) {
                tables.push(service::maintenance::parse_table(t.trim())?);
            }
            let full = spec.options.get("full").map(|v| bool_option("full", v)).transpose()?.unwrap_or(false);
            let analyze = spec.options.get("analyze").map(|v| bool_option("analyze", v)).transpose()?.unwrap_or(true);
            // The job's own timeout, when it has one, bounds its statements too.
            let timeout = (!spec.timeout.is_zero()).then_some(spec.timeout);
            let done = service::maintenance::run(ctx, &tables, full, analyze, timeout).await?;
            let reclaimed: i64 = done.iter().map(|r| (r.size_before - r.size_after).max(0)).sum();
            Ok(format!(
                "{} table(s) vacuumed{}, {reclaimed} bytes reclaimed",
                done.len(),
                if analyze { " and analyzed" } else { "" }
            ))
        }
        JobKind::PartitionPremake => {
            let (schema, table) = service::maintenance::parse_table(&spec.target)?;
            let t = service::partitions::resolve_table(ctx, &schema, &table).await?;
            let e = premake_request(&spec.options, &t)?;
            let (created, existing) = service::partitions::ensure_any(ctx, &t, e).await?;
            Ok(format!("{} partition(s) created, {existing} already there", created.len()))
        }
        JobKind::Backup => {
            let b = service::backup::start(ctx).await?;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => anyhow::bail!("stopped waiting for backup {}", b.id),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                let b = service::backup::get(ctx, &b.id).await?;
                match b.state {
                    service::backup::BackupState::Running => continue,
                    service::backup::BackupState::Succeeded => {
                        return Ok(format!("backup {}: {} bytes, {}", b.id, b.size_bytes, b.verification));
                    }
                    _ => anyhow::bail!("backup {} failed: {}", b.id, b.error.unwrap_or_default()),
                }
            }
        }
        JobKind::BlobMigration => {
            let req = blob_request(&spec.target, &spec.options)?;
            let (m, rows, bytes) = service::blob_migration::start(ctx, req).await?;
            let Some(m) = m else { return Ok(format!("nothing to migrate ({rows} rows, {bytes} bytes)")) };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => anyhow::bail!("stopped waiting for blob migration {} (it resumes at restart)", m.id),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                let m = service::blob_migration::get(ctx, &m.id).await?;
                match m.state {
                    service::blob_migration::BlobMigrationState::Running => continue,
                    service::blob_migration::BlobMigrationState::Done => {
                        return Ok(format!("blob migration {}: {} rows, {} bytes", m.id, m.rows_done, m.bytes_done));
                    }
                    _ => anyhow::bail!("blob migration {} failed: {}", m.id, m.error.unwrap_or_default()),
                }
            }
        }
    }
}

/// Waits for an archival run to end; when `stop` fires, asks it to stop and waits for that.
async fn wait_archive(ctx: &Context, id: &str, stop: &CancellationToken) -> Result<service::archive::Run> {
    let mut cancelled = false;
    loop {
        tokio::select! {
            _ = stop.cancelled(), if !cancelled => {
                service::archive::cancel_run(ctx, id).await?;
                cancelled = true;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let run = service::archive::get_run(ctx, id).await?;
        if run.state != service::archive::RunState::Running {
            return Ok(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_job_is_an_error_with_its_message() {
        let ok = panics_as_errors(async { Ok("done".to_string()) }).await;
        assert_eq!(ok.unwrap(), "done");
        let static_msg = panics_as_errors(async { panic!("boom") }).await.unwrap_err();
        assert_eq!(static_msg.to_string(), "the job's work panicked: boom");
        let n = 7;
        let formatted = panics_as_errors(async move { panic!("row {n} is odd") }).await.unwrap_err();
        assert_eq!(formatted.to_string(), "the job's work panicked: row 7 is odd");
    }
}
