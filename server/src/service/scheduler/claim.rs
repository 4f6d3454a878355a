//! The cluster side of the scheduler: the on/off switch, the instances running the loop, the
//! poll that takes lapsed runs over and claims due occurrences, and the lease of a run held here.

use super::{
    Context, Instance, JobRun, JobRunState, Result, Status, Trigger,
    cron::{parse_schedule, plan_claim},
    crud::{first_due, spec_of},
    new_run,
};
use crate::db::scheduler::{self as store, Claim, InstanceRow, RunRow};

/// Instances not seen for this long are shown as down (and forgotten after a day).
fn alive_within(ctx: &Context) -> chrono::Duration {
    chrono::Duration::from_std((ctx.config.scheduler_poll_interval * 3).max(ctx.config.run_lease))
        .unwrap_or(chrono::Duration::seconds(30))
}

/// The scheduler's state.
pub async fn status(ctx: &Context) -> Result<Status> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let s = store::state(&mut conn).await?;
    let t = ctx.now();
    let instances = store::instances(&mut conn)
        .await?
        .into_iter()
        .map(|i| {
            let alive = i.last_seen > t - alive_within(ctx);
            Instance::new(i, alive)
        })
        .collect();
    let running_runs = store::running_runs(&mut conn).await?.into_iter().map(JobRun::from).collect();
    Ok(Status {
        running: s.running,
        changed_by: s.changed_by,
        changed_at: s.changed_at,
        instances,
        this_instance: ctx.instance_id.clone(),
        this_runs_scheduler: ctx.config.run_scheduler,
        running_runs,
    })
}

/// Starts (every job's next occurrence counts from now: the stopped period is skipped, not
/// caught up) or stops scheduled runs on every instance. Running runs finish either way.
pub async fn set_running(ctx: &Context, running: bool, by: &str) -> Result<Status> {
    let t = ctx.now();
    let mut conn = ctx.db.write().await?;
    let current = store::state(&mut conn).await?;
    if current.running != running {
        let mut dues = Vec::new();
        if running {
            for row in store::list_jobs(&mut conn).await? {
                dues.push((row.name.clone(), first_due(&spec_of(&row), t)?));
            }
        }
        store::set_state(&mut conn, running, by, t, &dues).await?;
        tracing::info!(by, "scheduler {}", if running { "started" } else { "stopped" });
    }
    drop(conn);
    status(ctx).await
}

/// One poll of this instance's scheduler loop: heartbeat, takeovers, due claims. Each run it
/// takes over or claims is handed to [`Context::start_run`] as soon as it is recorded (the
/// dispatcher spawns it on `ctx.tasks`; it stops with `ctx.background`).
pub async fn poll(ctx: &Context) -> Result<()> {
    let t = ctx.now();
    let mut conn = ctx.db.write().await?;
    store::heartbeat_instance(
        &mut conn,
        &InstanceRow {
            id: ctx.instance_id.clone(),
            host: host_name(),
            pid: i64::from(std::process::id()),
            started_at: ctx.started_at.naive_utc(),
            last_seen: t,
        },
    )
    .await?;
    store::forget_instances(&mut conn, None, t - chrono::Duration::days(1)).await?;

    // Runs whose instance died: one instance wins each (compare-and-set) and runs it again.
    for run in store::lapsed_runs(&mut conn, t).await? {
        if store::take_over(&mut conn, &run, &ctx.instance_id, t + ctx.run_lease(), t).await? {
            let Some(job) = store::get_job(&mut conn, &run.job_name).await? else { continue };
            tracing::warn!(job = %run.job_name, run = %run.id, from = %run.owner, "took over a run whose instance stopped");
            let run = RunRow {
                owner: ctx.instance_id.clone(),
                attempt: run.attempt + 1,
                lease_until: Some(t + ctx.run_lease()),
                ..run
            };
            (ctx.start_run)(ctx, spec_of(&job), run.into());
        }
    }

    if !store::state(&mut conn).await?.running {
        return Ok(());
    }
    for job in store::due_jobs(&mut conn, t).await? {
        let Some(due) = job.next_due else { continue };
        let (cron, tz) = match parse_schedule(&job.schedule, &job.time_zone) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(job = %job.name, error = %e, "stored schedule does not parse; skipping the job");
                continue;
            }
        };
        let plan = plan_claim(&cron, tz, due, t, ctx.config.scheduler_catch_up);
        let missed = plan.missed.map(|(first, last, count)| RunRow {
            id: uuid::Uuid::now_v7().to_string(),
            job_name: job.name.clone(),
            scheduled_for: first,
            run_trigger: Trigger::Schedule,
            state: JobRunState::Missed,
            owner: ctx.instance_id.clone(),
            attempt: 0,
            lease_until: None,
            started_at: t,
            finished_at: Some(t),
            message: format!(
                "{count} occurrence(s) from {first} to {last} UTC missed: older than scheduler_catch_up ({})",
                humantime::format_duration(ctx.config.scheduler_catch_up)
            ),
            error: None,
        });
        let run = plan.run.map(|at| new_run(ctx, &job.name, at, Trigger::Schedule, t));
        match store::claim(&mut conn, &job.name, due, plan.next, missed.as_ref(), run.as_ref()).await? {
            Claim::Claimed => {
                if let Some(m) = &missed {
                    tracing::warn!(job = %job.name, "{}", m.message);
                }
                if let Some(run) = run {
                    (ctx.start_run)(ctx, spec_of(&job), run.into());
                }
            }
            Claim::Gone | Claim::Busy => {}
        }
    }
    Ok(())
}

/// Removes this instance from the status list (clean shutdown).
pub async fn forget_self(ctx: &Context) -> Result<()> {
    let mut conn = ctx.db.write().await?;
    store::forget_instances(&mut conn, Some(&ctx.instance_id), ctx.now()).await?;
    Ok(())
}

/// The host name (for instance ids and status), from the kernel.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Extends the lease of run `id` held here at `attempt`; false when it was lost (another
/// instance took the run over).
pub async fn renew_lease(ctx: &Context, id: &str, attempt: i64) -> Result<bool> {
    let mut conn = ctx.db.write().await?;
    Ok(store::renew(&mut conn, id, &ctx.instance_id, attempt, ctx.now() + ctx.run_lease()).await?)
}

/// Records how a run held here ended and prunes its job's history to `job_history` runs; false
/// when another instance took the run over meanwhile (nothing is recorded then).
pub async fn finish_run(
    ctx: &Context,
    run: &JobRun,
    state: JobRunState,
    message: &str,
    error: Option<&str>,
) -> Result<bool> {
    let mut conn = ctx.db.write().await?;
    let keep = ctx.config.job_history;
    Ok(store::finish(&mut conn, &run.id, &ctx.instance_id, run.attempt, state, message, error, ctx.now(), keep).await?)
}
