//! Jobs and their runs: create, read, change, pause, delete, run now, list runs; the one
//! conversion between a stored job and its spec.

use std::{collections::BTreeMap, time::Duration};

use chrono::NaiveDateTime;

use super::{
    Context, Error, Job, JobKind, JobRun, JobSpec, Result, Trigger, builtin_jobs,
    cron::{next_after, parse_schedule},
    new_run,
};
use crate::{
    db::scheduler::{self as store, JobRow, RunRow},
    service::{archive, maintenance, partitions},
};

fn row_of(spec: &JobSpec, builtin: bool, next_due: Option<NaiveDateTime>, t: NaiveDateTime) -> JobRow {
    JobRow {
        name: spec.name.clone(),
        kind: spec.kind,
        target: spec.target.clone(),
        options: serde_json::to_string(&spec.options).unwrap_or_else(|_| "{}".into()),
        schedule: spec.schedule.clone(),
        time_zone: spec.time_zone.clone(),
        enabled: spec.enabled,
        timeout_ms: i64::try_from(spec.timeout.as_millis()).unwrap_or(i64::MAX),
        builtin,
        next_due,
        created_at: t,
        updated_at: t,
    }
}

/// The spec a stored job was made from.
pub(super) fn spec_of(row: &JobRow) -> JobSpec {
    JobSpec {
        name: row.name.clone(),
        kind: row.kind,
        target: row.target.clone(),
        options: serde_json::from_str(&row.options).unwrap_or_default(),
        schedule: row.schedule.clone(),
        time_zone: row.time_zone.clone(),
        enabled: row.enabled,
        timeout: Duration::from_millis(row.timeout_ms.max(0) as u64),
    }
}

/// A stored job with its newest run, as the service shows it.
fn job_of(row: JobRow, last_run: Option<RunRow>) -> Job {
    Job {
        spec: spec_of(&row),
        builtin: row.builtin,
        next_due: row.next_due,
        created_at: row.created_at,
        updated_at: row.updated_at,
        last_run: last_run.map(JobRun::from),
    }
}

pub(super) fn first_due(spec: &JobSpec, t: NaiveDateTime) -> Result<Option<NaiveDateTime>> {
    let (cron, tz) = parse_schedule(&spec.schedule, &spec.time_zone)?;
    Ok(next_after(&cron, tz, t))
}

/// Creates the built-in jobs that do not exist yet (a job deleted or edited by hand stays so).
pub async fn ensure_builtin(ctx: &Context) -> Result<usize> {
    let t = ctx.now();
    let mut conn = ctx.db.write().await?;
    let mut created = 0;
    for spec in builtin_jobs() {
        if store::get_job(&mut conn, &spec.name).await?.is_none()
            && store::insert_job(&mut conn, &row_of(&spec, true, first_due(&spec, t)?, t)).await?
        {
            created += 1;
        }
    }
    Ok(created)
}

/// Checks that what the job names exists (policy, table) now, so a typo fails at creation.
async fn check_target(ctx: &Context, spec: &JobSpec) -> Result<()> {
    match spec.kind {
        JobKind::Archive | JobKind::Retention => {
            let p = archive::get_policy(ctx, &spec.target).await?;
            if spec.kind == JobKind::Retention && p.spec.delete_after.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "policy {:?} has no delete_after: retention would never delete anything",
                    p.spec.name
                )));
            }
        }
        JobKind::PartitionPremake => {
            let (schema, table) = maintenance::parse_table(&spec.target)?;
            let t = partitions::resolve_table(ctx, &schema, &table).await?;
            super::premake_request(&spec.options, &t)?;
        }
        _ => {}
    }
    Ok(())
}

/// Creates a job.
pub async fn create_job(ctx: &Context, spec: JobSpec) -> Result<Job> {
    let spec = spec.validate()?;
    check_target(ctx, &spec).await?;
    let t = ctx.now();
    let row = row_of(&spec, false, first_due(&spec, t)?, t);
    let mut conn = ctx.db.write().await?;
    if !store::insert_job(&mut conn, &row).await? {
        return Err(Error::AlreadyExists(format!("job {:?}", spec.name)));
    }
    tracing::info!(job = %spec.name, kind = spec.kind.as_str(), schedule = %spec.schedule, "job created");
    Ok(job_of(row, None))
}

/// A job with its latest run.
pub async fn get_job(ctx: &Context, name: &str) -> Result<Job> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let row = store::get_job(&mut conn, name).await?.ok_or_else(|| Error::NotFound(format!("job {name:?}")))?;
    let last_run = store::last_run(&mut conn, name).await?;
    Ok(job_of(row, last_run))
}

/// Every job with its latest run, by name.
pub async fn list_jobs(ctx: &Context) -> Result<Vec<Job>> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let mut jobs = Vec::new();
    for row in store::list_jobs(&mut conn).await? {
        let last_run = store::last_run(&mut conn, &row.name).await?;
        jobs.push(job_of(row, last_run));
    }
    Ok(jobs)
}

/// What UpdateJob changes (None: keep).
#[derive(Debug, Clone, Default)]
pub struct JobUpdate {
    /// New target.
    pub target: Option<String>,
    /// New options (replace all).
    pub options: Option<BTreeMap<String, String>>,
    /// New cron expression.
    pub schedule: Option<String>,
    /// New time zone.
    pub time_zone: Option<String>,
    /// New timeout.
    pub timeout: Option<Duration>,
}

/// Changes a job's settings; a new schedule or time zone takes effect from now.
pub async fn update_job(ctx: &Context, name: &str, u: JobUpdate) -> Result<Job> {
    let current = get_job(ctx, name).await?;
    let mut spec = current.spec.clone();
    let reschedule = u.schedule.is_some() || u.time_zone.is_some();
    if let Some(t) = u.target {
        spec.target = t;
    }
    if let Some(o) = u.options {
        spec.options = o;
    }
    if let Some(s) = u.schedule {
        spec.schedule = s;
    }
    if let Some(z) = u.time_zone {
        spec.time_zone = z;
    }
    if let Some(t) = u.timeout {
        spec.timeout = t;
    }
    let spec = spec.validate()?;
    check_target(ctx, &spec).await?;
    let t = ctx.now();
    let next_due = if reschedule { first_due(&spec, t)? } else { current.next_due };
    let mut row = row_of(&spec, current.builtin, next_due, current.created_at);
    row.updated_at = t;
    let mut conn = ctx.db.write().await?;
    if !store::update_job(&mut conn, &row).await? {
        return Err(Error::NotFound(format!("job {name:?}")));
    }
    drop(conn);
    get_job(ctx, name).await
}

/// Deletes a job and its history. Built-in jobs are paused instead; a running job is refused.
pub async fn delete_job(ctx: &Context, name: &str) -> Result<()> {
    let job = get_job(ctx, name).await?;
    if job.builtin {
        return Err(Error::FailedPrecondition(format!(
            "job {name:?} is built in and comes back at restart; pause it instead"
        )));
    }
    let mut conn = ctx.db.write().await?;
    match store::delete_job(&mut conn, name).await? {
        None => Err(Error::NotFound(format!("job {name:?}"))),
        Some(false) => Err(Error::FailedPrecondition(format!("job {name:?} is running; try again when it ends"))),
        Some(true) => Ok(()),
    }
}

/// Pauses (`enabled = false`) or resumes a job; a resumed job's next occurrence is after now.
pub async fn set_enabled(ctx: &Context, name: &str, enabled: bool) -> Result<Job> {
    let job = get_job(ctx, name).await?;
    if job.spec.enabled != enabled {
        let t = ctx.now();
        let spec = JobSpec { enabled, ..job.spec };
        let next_due = if enabled { first_due(&spec, t)? } else { job.next_due };
        let mut row = row_of(&spec, job.builtin, next_due, job.created_at);
        row.updated_at = t;
        let mut conn = ctx.db.write().await?;
        store::update_job(&mut conn, &row).await?;
        tracing::info!(job = %name, enabled, "job {}", if enabled { "resumed" } else { "paused" });
    }
    get_job(ctx, name).await
}

/// Starts a run of the job now, on this instance, whatever its schedule, pause or the
/// scheduler's state; FAILED_PRECONDITION when it is running already.
pub async fn run_now(ctx: &Context, name: &str) -> Result<JobRun> {
    let job = get_job(ctx, name).await?.spec;
    let t = ctx.now();
    let run = new_run(ctx, &job.name, t, Trigger::Manual, t);
    let mut conn = ctx.db.write().await?;
    if !store::insert_run(&mut conn, &run).await? {
        return Err(Error::FailedPrecondition(format!("job {name:?} is running already")));
    }
    drop(conn);
    let run = JobRun::from(run);
    (ctx.start_run)(ctx, job, run.clone());
    Ok(run)
}

/// Runs newest first, of one job or all; returns the next page token.
pub async fn list_runs(
    ctx: &Context,
    job: Option<&str>,
    page_size: i64,
    token: Option<&str>,
) -> Result<(Vec<JobRun>, Option<String>)> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    if let Some(j) = job
        && store::get_job(&mut conn, j).await?.is_none()
    {
        return Err(Error::NotFound(format!("job {j:?}")));
    }
    let rows = store::list_runs(&mut conn, job, token, page_size + 1).await?;
    let more = rows.len() as i64 > page_size;
    let rows: Vec<JobRun> = rows.into_iter().take(page_size as usize).map(JobRun::from).collect();
    let next = if more { rows.last().map(|r| r.id.clone()) } else { None };
    Ok((rows, next))
}

/// A run by id.
pub async fn get_run(ctx: &Context, id: &str) -> Result<JobRun> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let run = store::get_run(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("job run {id:?}")))?;
    Ok(run.into())
}
