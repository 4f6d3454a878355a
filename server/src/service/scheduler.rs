//! The scheduler: cron jobs that run exactly once per occurrence across every strata instance on
//! one catalog.
//!
//! Each instance polls (`scheduler_poll_interval`): it renews its heartbeat, takes over runs whose
//! instance died (lease lapsed), and claims due occurrences. A claim is one transaction that moves
//! the job's `next_due` forward with a compare-and-set and records the run; unique indexes allow
//! one run per occurrence and one running run per job (see `db::scheduler`). The instance that
//! claimed a run renews its lease every third of `run_lease`; when it dies the run is taken over
//! and re-run (every job kind is idempotent: archival and blob migration resume, sampling and
//! maintenance simply run again). Occurrences that pass while a job is still running, or while no
//! instance is up, run late if they are at most `scheduler_catch_up` old, in order; older ones are
//! recorded once as `missed`.

use std::{
    collections::BTreeMap,
    str::FromStr,
    time::{Duration, Instant},
};

use chrono::{NaiveDateTime, Utc};
use chrono_tz::Tz;
use croner::{
    Cron,
    parser::{CronParser, Seconds},
};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{Context, Error, Result, now};
use crate::db::scheduler as store;
pub use crate::db::scheduler::{
    CANCELLED, Claim, FAILED, InstanceRow, JobRow, MISSED, RUNNING, RunRow, SUCCEEDED, TIMED_OUT, TRIGGER_MANUAL,
    TRIGGER_SCHEDULE,
};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Store a storage-metrics snapshot (growth history).
    MetricsSample,
    /// Expire abandoned uploads.
    UploadExpiry,
    /// Run an archival policy (target: policy name or id).
    Archive,
    /// Apply a policy's retention (target: policy).
    Retention,
    /// VACUUM / ANALYZE (target: comma-separated tables, empty for all).
    Maintenance,
    /// Create partitions ahead (target: partitioned table).
    PartitionPremake,
    /// Back the database up.
    Backup,
    /// Move blobs of a table into the object store (target: table).
    BlobMigration,
    /// Evaluate the alert rules.
    AlertEvaluation,
}

impl Kind {
    /// Every kind, for listings.
    pub const ALL: [Kind; 9] = [
        Kind::MetricsSample,
        Kind::UploadExpiry,
        Kind::Archive,
        Kind::Retention,
        Kind::Maintenance,
        Kind::PartitionPremake,
        Kind::Backup,
        Kind::BlobMigration,
        Kind::AlertEvaluation,
    ];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MetricsSample => "metrics_sample",
            Kind::UploadExpiry => "upload_expiry",
            Kind::Archive => "archive",
            Kind::Retention => "retention",
            Kind::Maintenance => "maintenance",
            Kind::PartitionPremake => "partition_premake",
            Kind::Backup => "backup",
            Kind::BlobMigration => "blob_migration",
            Kind::AlertEvaluation => "alert_evaluation",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Result<Self> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown job kind {s:?}")))
    }

    /// Options the kind accepts.
    fn options(self) -> &'static [&'static str] {
        match self {
            Kind::Maintenance => &["full", "analyze"],
            Kind::PartitionPremake => &["interval", "ahead", "back"],
            Kind::BlobMigration => &["blob_column", "key_column", "reference_column", "encoding", "batch_size"],
            _ => &[],
        }
    }
}

/// A job's settings as a client gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Unique name: letters, digits, `.`, `_`, `-`, `:`.
    pub name: String,
    /// What it does.
    pub kind: Kind,
    /// Policy or table (see [`Kind`]).
    pub target: String,
    /// Kind-specific options.
    pub options: BTreeMap<String, String>,
    /// Cron expression: 5 fields, or 6 with seconds first; `@daily` and friends.
    pub schedule: String,
    /// IANA time zone the expression is read in (default UTC).
    pub time_zone: String,
    /// False: paused.
    pub enabled: bool,
    /// Zero: none.
    pub timeout: Duration,
}

/// A job with its latest run.
#[derive(Debug, Clone)]
pub struct Job {
    /// As stored.
    pub row: JobRow,
    /// Newest run, if any.
    pub last_run: Option<RunRow>,
}

/// The scheduler's state across the cluster.
#[derive(Debug, Clone)]
pub struct Status {
    /// Scheduled jobs run (StartScheduler / StopScheduler).
    pub running: bool,
    /// Who set it.
    pub changed_by: String,
    /// When.
    pub changed_at: NaiveDateTime,
    /// Instances that ran the scheduler loop recently.
    pub instances: Vec<(InstanceRow, bool)>,
    /// This instance's id.
    pub this_instance: String,
    /// Whether this instance runs scheduled jobs.
    pub this_runs_scheduler: bool,
    /// Runs in progress.
    pub running_runs: Vec<RunRow>,
}

/// Longest timeout a job may have.
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).build()
}

/// Parses a cron expression and a time zone; INVALID_ARGUMENT with the parser's reason.
pub fn parse_schedule(expr: &str, tz: &str) -> Result<(Cron, Tz)> {
    let cron = parser()
        .parse(expr.trim())
        .map_err(|e| Error::InvalidArgument(format!("schedule {expr:?} is not a cron expression: {e}")))?;
    let tz = Tz::from_str(if tz.is_empty() { "UTC" } else { tz })
        .map_err(|_| Error::InvalidArgument(format!("time_zone {tz:?} is not an IANA time zone name")))?;
    Ok((cron, tz))
}

/// The first occurrence strictly after `after` (UTC), or None when there is none.
pub fn next_after(cron: &Cron, tz: Tz, after: NaiveDateTime) -> Option<NaiveDateTime> {
    let local = after.and_utc().with_timezone(&tz);
    cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc).naive_utc())
}

/// What to do with a due occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPlan {
    /// The occurrence to run now, if any.
    pub run: Option<NaiveDateTime>,
    /// Occurrences too old to run: (first, last, count).
    pub missed: Option<(NaiveDateTime, NaiveDateTime, u64)>,
    /// The job's next occurrence after this claim.
    pub next: Option<NaiveDateTime>,
}

/// Occurrences counted at most when reporting a gap (a seconds-cron over a long outage).
const MAX_COUNTED: u64 = 1_000_000;

/// Plans the claim of occurrence `due` at `now`: run it if it is at most `catch_up` old; else
/// record every occurrence older than that as missed and run the first recent one, if it is due.
pub fn plan_claim(cron: &Cron, tz: Tz, due: NaiveDateTime, now: NaiveDateTime, catch_up: Duration) -> ClaimPlan {
    let window = now - chrono::Duration::from_std(catch_up).unwrap_or(chrono::Duration::days(1));
    if due >= window {
        return ClaimPlan { run: Some(due), missed: None, next: next_after(cron, tz, due) };
    }
    let (mut last, mut count) = (due, 1u64);
    let mut next = next_after(cron, tz, due);
    while let Some(n) = next
        && n < window
    {
        last = n;
        count += 1;
        if count >= MAX_COUNTED {
            // Skip ahead without counting every one.
            next = next_after(cron, tz, window - chrono::Duration::microseconds(1));
            break;
        }
        next = next_after(cron, tz, n);
    }
    match next {
        Some(n) if n <= now => {
            ClaimPlan { run: Some(n), missed: Some((due, last, count)), next: next_after(cron, tz, n) }
        }
        other => ClaimPlan { run: None, missed: Some((due, last, count)), next: other },
    }
}

impl JobSpec {
    /// Checks everything a client sent; the policy or table a job names is checked against the
    /// catalog and the live schema by [`create_job`] / [`update_job`].
    pub fn validate(mut self) -> Result<Self> {
        check_name("job", &self.name)?;
        if self.time_zone.is_empty() {
            self.time_zone = "UTC".into();
        }
        self.schedule = self.schedule.trim().to_owned();
        parse_schedule(&self.schedule, &self.time_zone)?;
        if self.timeout > MAX_TIMEOUT {
            return Err(Error::InvalidArgument("timeout must be at most 7 days".into()));
        }
        for k in self.options.keys() {
            if !self.kind.options().contains(&k.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "option {k:?} does not apply to {} jobs (accepted: {})",
                    self.kind.as_str(),
                    if self.kind.options().is_empty() { "none".to_string() } else { self.kind.options().join(", ") }
                )));
            }
        }
        let needs_target =
            matches!(self.kind, Kind::Archive | Kind::Retention | Kind::PartitionPremake | Kind::BlobMigration);
        let takes_target = needs_target || self.kind == Kind::Maintenance;
        if needs_target && self.target.is_empty() {
            return Err(Error::InvalidArgument(format!("{} jobs need a target", self.kind.as_str())));
        }
        if !takes_target && !self.target.is_empty() {
            return Err(Error::InvalidArgument(format!("{} jobs take no target", self.kind.as_str())));
        }
        match self.kind {
            Kind::Maintenance => {
                for t in self.target.split(',').filter(|t| !t.trim().is_empty()) {
                    super::maintenance::parse_table(t.trim())?;
                }
                for k in ["full", "analyze"] {
                    if let Some(v) = self.options.get(k) {
                        bool_option(k, v)?;
                    }
                }
            }
            Kind::PartitionPremake => {
                super::maintenance::parse_table(&self.target)?;
                interval_option(self.options.get("interval"))?;
                for k in ["ahead", "back"] {
                    count_option(k, self.options.get(k), 0)?;
                }
            }
            Kind::BlobMigration => {
                blob_request(&self.target, &self.options)?;
            }
            _ => {}
        }
        Ok(self)
    }
}

/// Names of jobs and alert rules: 1-100 letters, digits, '.', '_', '-', ':'.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 100 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c)) {
        return Err(Error::InvalidArgument(format!(
            "{what} name {name:?} must be 1-100 characters of letters, digits, '.', '_', '-', ':'"
        )));
    }
    Ok(())
}

fn bool_option(k: &str, v: &str) -> Result<bool> {
    v.parse().map_err(|_| Error::InvalidArgument(format!("option {k} must be true or false, not {v:?}")))
}

fn count_option(k: &str, v: Option<&String>, default: u32) -> Result<u32> {
    match v {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= 1000)
            .ok_or_else(|| Error::InvalidArgument(format!("option {k} must be a number from 0 to 1000, not {v:?}"))),
    }
}

fn interval_option(v: Option<&String>) -> Result<super::partitions::Interval> {
    use super::partitions::Interval;
    match v.map(String::as_str) {
        None | Some("monthly") => Ok(Interval::Monthly),
        Some("daily") => Ok(Interval::Daily),
        Some(o) => Err(Error::InvalidArgument(format!("option interval must be daily or monthly, not {o:?}"))),
    }
}

fn blob_request(target: &str, o: &BTreeMap<String, String>) -> Result<super::blob_migration::StartRequest> {
    let (schema, table) = match target.split_once('.') {
        Some((s, t)) => (s.to_owned(), t.to_owned()),
        None => (String::new(), target.to_owned()),
    };
    let get = |k: &str| {
        o.get(k).cloned().ok_or_else(|| Error::InvalidArgument(format!("blob_migration jobs need option {k}")))
    };
    let base64 = match o.get("encoding").map(String::as_str) {
        None | Some("base64") => true,
        Some("bytea") | Some("blob") => false,
        Some(e) => return Err(Error::InvalidArgument(format!("option encoding must be base64 or bytea, not {e:?}"))),
    };
    super::blob_migration::StartRequest {
        schema_name: schema,
        table_name: table,
        key_column: get("key_column")?,
        blob_column: get("blob_column")?,
        reference_column: get("reference_column")?,
        base64,
        batch_size: i64::from(count_option("batch_size", o.get("batch_size"), 0)?),
        dry_run: false,
        owner: "strata-scheduler".into(),
        content_type: String::new(),
    }
    .validate()
}

/// The jobs strata creates on first start (each editable; deleting one is refused, pause it).
fn builtin_jobs() -> Vec<JobSpec> {
    let job = |name: &str, kind, schedule: &str, enabled, timeout_secs| JobSpec {
        name: name.into(),
        kind,
        target: String::new(),
        options: BTreeMap::new(),
        schedule: schedule.into(),
        time_zone: "UTC".into(),
        enabled,
        timeout: Duration::from_secs(timeout_secs),
    };
    vec![
        // Alerts: thresholds are checked every minute.
        job("alert-evaluation", Kind::AlertEvaluation, "* * * * *", true, 300),
        // Growth history: the seeds sample every 5 minutes.
        job("metrics-sample", Kind::MetricsSample, "*/5 * * * *", true, 300),
        job("upload-expiry", Kind::UploadExpiry, "*/10 * * * *", true, 600),
        // Nightly VACUUM ANALYZE of every table, after the backup.
        job("maintenance", Kind::Maintenance, "0 3 * * *", true, 4 * 3600),
        // Daily backup at 02:00 UTC; rotation keeps daily / weekly / monthly ones.
        job("backup", Kind::Backup, "0 2 * * *", true, 6 * 3600),
    ]
}

fn row_of(spec: &JobSpec, builtin: bool, next_due: Option<NaiveDateTime>, t: NaiveDateTime) -> JobRow {
    JobRow {
        name: spec.name.clone(),
        kind: spec.kind.as_str().into(),
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
pub fn spec_of(row: &JobRow) -> Result<JobSpec> {
    Ok(JobSpec {
        name: row.name.clone(),
        kind: Kind::parse(&row.kind)?,
        target: row.target.clone(),
        options: serde_json::from_str(&row.options).unwrap_or_default(),
        schedule: row.schedule.clone(),
        time_zone: row.time_zone.clone(),
        enabled: row.enabled,
        timeout: Duration::from_millis(row.timeout_ms.max(0) as u64),
    })
}

fn first_due(spec: &JobSpec, t: NaiveDateTime) -> Result<Option<NaiveDateTime>> {
    let (cron, tz) = parse_schedule(&spec.schedule, &spec.time_zone)?;
    Ok(next_after(&cron, tz, t))
}

/// Creates the built-in jobs that do not exist yet (a job deleted or edited by hand stays so).
pub async fn ensure_builtin(ctx: &Context) -> Result<usize> {
    let t = now();
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
        Kind::Archive | Kind::Retention => {
            let p = super::archive::get_policy(ctx, &spec.target).await?;
            if spec.kind == Kind::Retention && p.spec.delete_after.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "policy {:?} has no delete_after: retention would never delete anything",
                    p.spec.name
                )));
            }
        }
        Kind::PartitionPremake => {
            let (schema, table) = super::maintenance::parse_table(&spec.target)?;
            super::partitions::resolve(ctx, &schema, &table).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Creates a job.
pub async fn create_job(ctx: &Context, spec: JobSpec) -> Result<Job> {
    let spec = spec.validate()?;
    check_target(ctx, &spec).await?;
    let t = now();
    let row = row_of(&spec, false, first_due(&spec, t)?, t);
    let mut conn = ctx.db.write().await?;
    if !store::insert_job(&mut conn, &row).await? {
        return Err(Error::AlreadyExists(format!("job {:?}", spec.name)));
    }
    tracing::info!(job = %spec.name, kind = spec.kind.as_str(), schedule = %spec.schedule, "job created");
    Ok(Job { row, last_run: None })
}

/// A job with its latest run.
pub async fn get_job(ctx: &Context, name: &str) -> Result<Job> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let row = store::get_job(&mut conn, name).await?.ok_or_else(|| Error::NotFound(format!("job {name:?}")))?;
    let last_run = store::last_run(&mut conn, name).await?;
    Ok(Job { row, last_run })
}

/// Every job with its latest run, by name.
pub async fn list_jobs(ctx: &Context) -> Result<Vec<Job>> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let mut jobs = Vec::new();
    for row in store::list_jobs(&mut conn).await? {
        let last_run = store::last_run(&mut conn, &row.name).await?;
        jobs.push(Job { row, last_run });
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
    let mut spec = spec_of(&current.row)?;
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
    let t = now();
    let next_due = if reschedule { first_due(&spec, t)? } else { current.row.next_due };
    let mut row = row_of(&spec, current.row.builtin, next_due, current.row.created_at);
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
    if job.row.builtin {
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
    let mut row = job.row;
    if row.enabled != enabled {
        let t = now();
        row.enabled = enabled;
        row.updated_at = t;
        if enabled {
            row.next_due = first_due(&spec_of(&row)?, t)?;
        }
        let mut conn = ctx.db.write().await?;
        store::update_job(&mut conn, &row).await?;
        tracing::info!(job = %name, enabled, "job {}", if enabled { "resumed" } else { "paused" });
    }
    get_job(ctx, name).await
}

/// Starts a run of the job now, on this instance, whatever its schedule, pause or the
/// scheduler's state; FAILED_PRECONDITION when it is running already.
pub async fn run_now(ctx: &Context, name: &str) -> Result<RunRow> {
    let job = get_job(ctx, name).await?.row;
    let t = now();
    let run = new_run(ctx, &job.name, t, TRIGGER_MANUAL, t);
    let mut conn = ctx.db.write().await?;
    if !store::insert_run(&mut conn, &run).await? {
        return Err(Error::FailedPrecondition(format!("job {name:?} is running already")));
    }
    drop(conn);
    spawn(ctx, job, run.clone());
    Ok(run)
}

/// A first attempt of `job` for occurrence `at`, running on this instance from `t`.
fn new_run(ctx: &Context, job: &str, at: NaiveDateTime, trigger: &str, t: NaiveDateTime) -> RunRow {
    RunRow {
        id: uuid::Uuid::now_v7().to_string(),
        job_name: job.to_owned(),
        scheduled_for: at,
        run_trigger: trigger.into(),
        state: RUNNING.into(),
        owner: ctx.instance_id.clone(),
        attempt: 1,
        lease_until: Some(t + lease(ctx)),
        started_at: t,
        finished_at: None,
        message: String::new(),
        error: None,
    }
}

/// Runs newest first, of one job or all; returns the next page token.
pub async fn list_runs(
    ctx: &Context,
    job: Option<&str>,
    page_size: i64,
    token: Option<&str>,
) -> Result<(Vec<RunRow>, Option<String>)> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    if let Some(j) = job
        && store::get_job(&mut conn, j).await?.is_none()
    {
        return Err(Error::NotFound(format!("job {j:?}")));
    }
    let rows = store::list_runs(&mut conn, job, token, page_size + 1).await?;
    let more = rows.len() as i64 > page_size;
    let rows: Vec<RunRow> = rows.into_iter().take(page_size as usize).collect();
    let next = if more { rows.last().map(|r| r.id.clone()) } else { None };
    Ok((rows, next))
}

/// A run by id.
pub async fn get_run(ctx: &Context, id: &str) -> Result<RunRow> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    store::get_run(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("job run {id:?}")))
}

/// Instances not seen for this long are shown as down (and forgotten after a day).
fn alive_within(ctx: &Context) -> chrono::Duration {
    chrono::Duration::from_std((ctx.config.scheduler_poll_interval * 3).max(ctx.config.run_lease))
        .unwrap_or(chrono::Duration::seconds(30))
}

fn lease(ctx: &Context) -> chrono::Duration {
    chrono::Duration::from_std(ctx.config.run_lease).unwrap_or(chrono::Duration::seconds(30))
}

/// The scheduler's state.
pub async fn status(ctx: &Context) -> Result<Status> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let s = store::state(&mut conn).await?;
    let t = now();
    let instances = store::instances(&mut conn)
        .await?
        .into_iter()
        .map(|i| {
            let alive = i.last_seen > t - alive_within(ctx);
            (i, alive)
        })
        .collect();
    let running_runs = store::running_runs(&mut conn).await?;
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
    let t = now();
    let mut conn = ctx.db.write().await?;
    let current = store::state(&mut conn).await?;
    if current.running != running {
        let mut dues = Vec::new();
        if running {
            for row in store::list_jobs(&mut conn).await? {
                dues.push((row.name.clone(), first_due(&spec_of(&row)?, t)?));
            }
        }
        store::set_state(&mut conn, running, by, t, &dues).await?;
        tracing::info!(by, "scheduler {}", if running { "started" } else { "stopped" });
    }
    drop(conn);
    status(ctx).await
}

/// One poll of this instance's scheduler loop: heartbeat, takeovers, due claims. Runs it starts
/// are spawned on `ctx.tasks` and stop with `ctx.background`.
pub async fn poll(ctx: &Context) -> Result<()> {
    let t = now();
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
        if store::take_over(&mut conn, &run, &ctx.instance_id, t + lease(ctx), t).await? {
            let Some(job) = store::get_job(&mut conn, &run.job_name).await? else { continue };
            tracing::warn!(job = %run.job_name, run = %run.id, from = %run.owner, "took over a run whose instance stopped");
            let run = RunRow {
                owner: ctx.instance_id.clone(),
                attempt: run.attempt + 1,
                lease_until: Some(t + lease(ctx)),
                ..run
            };
            spawn(ctx, job, run);
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
            run_trigger: TRIGGER_SCHEDULE.into(),
            state: MISSED.into(),
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
        let run = plan.run.map(|at| new_run(ctx, &job.name, at, TRIGGER_SCHEDULE, t));
        match store::claim(&mut conn, &job.name, due, plan.next, missed.as_ref(), run.as_ref()).await? {
            Claim::Claimed => {
                if let Some(m) = &missed {
                    tracing::warn!(job = %job.name, "{}", m.message);
                }
                if let Some(run) = run {
                    spawn(ctx, job, run);
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
    store::forget_instances(&mut conn, Some(&ctx.instance_id), now()).await?;
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

fn spawn(ctx: &Context, job: JobRow, run: RunRow) {
    let c = ctx.clone();
    ctx.tasks.spawn(async move { execute(c, job, run).await });
}

/// How a run ended.
enum Outcome {
    Done(anyhow::Result<String>),
    TimedOut,
    Cancelled(&'static str),
}

/// Runs one claimed run: renews its lease, enforces the timeout, records how it ended (unless
/// another instance took it over meanwhile), prunes the job's history.
async fn execute(ctx: Context, job: JobRow, run: RunRow) {
    tracing::info!(job = %job.name, run = %run.id, attempt = run.attempt, scheduled_for = %run.scheduled_for, "job run started");
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
                let renewed = match ctx.db.write().await {
                    Ok(mut conn) => store::renew(&mut conn, &id, &ctx.instance_id, attempt, now() + lease(&ctx)).await,
                    Err(e) => Err(e),
                };
                match renewed {
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
    let timeout = (job.timeout_ms > 0).then(|| Duration::from_millis(job.timeout_ms as u64));
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
        Outcome::Done(Ok(m)) => (SUCCEEDED, m, None),
        Outcome::Done(Err(e)) => (FAILED, String::new(), Some(format!("{e:#}"))),
        Outcome::TimedOut => (
            TIMED_OUT,
            String::new(),
            Some(format!("timed out after {}", humantime::format_duration(timeout.unwrap_or_default()))),
        ),
        Outcome::Cancelled(why) => (CANCELLED, String::new(), Some(why.to_string())),
    };
    let recorded = async {
        let mut conn = ctx.db.write().await?;
        let keep = ctx.config.job_history;
        store::finish(&mut conn, &run.id, &ctx.instance_id, run.attempt, state, &message, error.as_deref(), now(), keep)
            .await
    }
    .await;
    match recorded {
        Ok(true) => {
            tracing::info!(job = %job.name, run = %run.id, state, message = %message, error = error.as_deref().unwrap_or(""), "job run ended")
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
async fn perform(ctx: &Context, job: &JobRow, stop: CancellationToken) -> anyhow::Result<String> {
    let spec = spec_of(job)?;
    match spec.kind {
        Kind::MetricsSample => {
            let s = super::metrics::record_snapshot(ctx).await?;
            Ok(format!("snapshot {}: {} bytes in {} tables", s.id, s.database_size_bytes, s.table_count))
        }
        Kind::UploadExpiry => {
            let n = super::files::expire_uploads(ctx).await?;
            Ok(format!("{n} abandoned upload(s) expired"))
        }
        Kind::AlertEvaluation => {
            let e = super::alerts::evaluate(ctx).await?;
            let mut m = format!(
                "{} rule(s), {} series: {} fired, {} escalated, {} resolved",
                e.rules, e.series, e.fired, e.escalated, e.resolved
            );
            if !e.failed_rules.is_empty() {
                m.push_str(&format!("; unreadable: {}", e.failed_rules.join("; ")));
            }
            Ok(m)
        }
        Kind::Archive | Kind::Retention => {
            // A run of an instance that died holds the policy until its lease lapses: wait that
            // long (twice, for clock skew) before calling the policy busy.
            let patience = Instant::now() + ctx.config.run_lease * 2 + Duration::from_secs(1);
            let run = loop {
                let r = if spec.kind == Kind::Archive {
                    super::archive::run(ctx, &spec.target).await
                } else {
                    super::archive::apply_retention(ctx, &spec.target).await
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
                super::archive::RunState::Succeeded => Ok(format!(
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
        Kind::Maintenance => {
            let mut tables = Vec::new();
            for t in spec.target.split(',').filter(|t| !t.trim().is_empty()) {
                tables.push(super::maintenance::parse_table(t.trim())?);
            }
            let full = spec.options.get("full").map(|v| bool_option("full", v)).transpose()?.unwrap_or(false);
            let analyze = spec.options.get("analyze").map(|v| bool_option("analyze", v)).transpose()?.unwrap_or(true);
            let done = super::maintenance::run(ctx, &tables, full, analyze).await?;
            let reclaimed: i64 = done.iter().map(|r| (r.size_before - r.size_after).max(0)).sum();
            Ok(format!(
                "{} table(s) vacuumed{}, {reclaimed} bytes reclaimed",
                done.len(),
                if analyze { " and analyzed" } else { "" }
            ))
        }
        Kind::PartitionPremake => {
            let (schema, table) = super::maintenance::parse_table(&spec.target)?;
            let interval = interval_option(spec.options.get("interval"))?;
            let ahead = count_option("ahead", spec.options.get("ahead"), 3)?;
            let back = count_option("back", spec.options.get("back"), 0)?;
            let parent = super::partitions::resolve(ctx, &schema, &table).await?;
            let (created, existing) = super::partitions::ensure(ctx, &parent, interval, ahead, back).await?;
            Ok(format!("{} partition(s) created, {existing} already there", created.len()))
        }
        Kind::Backup => {
            let b = super::backup::start(ctx).await?;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => anyhow::bail!("stopped waiting for backup {}", b.id),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                let b = super::backup::get(ctx, &b.id).await?;
                match b.state.as_str() {
                    super::backup::RUNNING => continue,
                    super::backup::SUCCEEDED => {
                        return Ok(format!("backup {}: {} bytes, {}", b.id, b.size_bytes, b.verification));
                    }
                    _ => anyhow::bail!("backup {} failed: {}", b.id, b.error.unwrap_or_default()),
                }
            }
        }
        Kind::BlobMigration => {
            let req = blob_request(&spec.target, &spec.options)?;
            let (m, rows, bytes) = super::blob_migration::start(ctx, req).await?;
            let Some(m) = m else { return Ok(format!("nothing to migrate ({rows} rows, {bytes} bytes)")) };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => anyhow::bail!("stopped waiting for blob migration {} (it resumes at restart)", m.id),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                let m = super::blob_migration::get(ctx, &m.id).await?;
                match m.state.as_str() {
                    "running" => continue,
                    "done" => {
                        return Ok(format!("blob migration {}: {} rows, {} bytes", m.id, m.rows_done, m.bytes_done));
                    }
                    _ => anyhow::bail!("blob migration {} failed: {}", m.id, m.error.unwrap_or_default()),
                }
            }
        }
    }
}

/// Waits for an archival run to end; when `stop` fires, asks it to stop and waits for that.
async fn wait_archive(ctx: &Context, id: &str, stop: &CancellationToken) -> Result<super::archive::Run> {
    let mut cancelled = false;
    loop {
        tokio::select! {
            _ = stop.cancelled(), if !cancelled => {
                super::archive::cancel_run(ctx, id).await?;
                cancelled = true;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let run = super::archive::get_run(ctx, id).await?;
        if run.state != super::archive::RunState::Running {
            return Ok(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

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

    #[test]
    fn schedules_parse_with_and_without_seconds_and_reject_garbage() {
        assert!(parse_schedule("*/5 * * * *", "UTC").is_ok());
        assert!(parse_schedule("*/2 * * * * *", "").is_ok());
        assert!(parse_schedule("@daily", "Europe/Paris").is_ok());
        assert!(matches!(parse_schedule("61 * * * *", "UTC"), Err(Error::InvalidArgument(_))));
        assert!(matches!(parse_schedule("every day", "UTC"), Err(Error::InvalidArgument(_))));
        assert!(matches!(parse_schedule("* * * * *", "Mars/Olympus"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn occurrences_follow_the_time_zone_across_dst() {
        // 02:00 daily in Paris: 01:00 UTC in winter, 00:00 UTC in summer (DST began 2026-03-29).
        let (c, tz) = parse_schedule("0 2 * * *", "Europe/Paris").unwrap();
        assert_eq!(next_after(&c, tz, at("2026-03-27 12:00:00")), Some(at("2026-03-28 01:00:00")));
        assert_eq!(next_after(&c, tz, at("2026-03-29 12:00:00")), Some(at("2026-03-30 00:00:00")));
        let (c, tz) = parse_schedule("*/5 * * * *", "UTC").unwrap();
        assert_eq!(next_after(&c, tz, at("2026-01-01 00:00:00")), Some(at("2026-01-01 00:05:00")));
    }

    #[test]
    fn a_recent_occurrence_runs_and_old_ones_are_missed_once() {
        let (c, tz) = parse_schedule("* * * * *", "UTC").unwrap();
        let catch_up = Duration::from_secs(600);
        // 3 minutes late: run it; the next is one minute later.
        let p = plan_claim(&c, tz, at("2026-01-01 00:00:00"), at("2026-01-01 00:03:30"), catch_up);
        assert_eq!(
            p,
            ClaimPlan { run: Some(at("2026-01-01 00:00:00")), missed: None, next: Some(at("2026-01-01 00:01:00")) }
        );
        // An hour down: the 50 occurrences older than 10 minutes are missed, the first recent one runs.
        let p = plan_claim(&c, tz, at("2026-01-01 00:00:00"), at("2026-01-01 01:00:30"), catch_up);
        assert_eq!(p.missed, Some((at("2026-01-01 00:00:00"), at("2026-01-01 00:50:00"), 51)));
        assert_eq!(p.run, Some(at("2026-01-01 00:51:00")));
        assert_eq!(p.next, Some(at("2026-01-01 00:52:00")));
        // A daily job two days late: both missed, nothing recent to run.
        let (c, tz) = parse_schedule("0 2 * * *", "UTC").unwrap();
        let p = plan_claim(&c, tz, at("2026-01-01 02:00:00"), at("2026-01-03 05:00:00"), catch_up);
        assert_eq!(p.missed, Some((at("2026-01-01 02:00:00"), at("2026-01-03 02:00:00"), 3)));
        assert_eq!(p.run, None);
        assert_eq!(p.next, Some(at("2026-01-04 02:00:00")));
    }

    #[test]
    fn job_specs_are_checked() {
        let ok = JobSpec {
            name: "nightly-vacuum".into(),
            kind: Kind::Maintenance,
            target: "public.messages, tasks".into(),
            options: [("full".to_string(), "false".to_string())].into(),
            schedule: "0 3 * * *".into(),
            time_zone: String::new(),
            enabled: true,
            timeout: Duration::from_secs(60),
        };
        assert_eq!(ok.clone().validate().unwrap().time_zone, "UTC");
        let bad = |f: &dyn Fn(&mut JobSpec)| {
            let mut s = ok.clone();
            f(&mut s);
            matches!(s.validate(), Err(Error::InvalidArgument(_)))
        };
        assert!(bad(&|s| s.name = "../etc".into()));
        assert!(bad(&|s| s.name = String::new()));
        assert!(bad(&|s| s.schedule = "* * *".into()));
        assert!(bad(&|s| s.time_zone = "Nowhere".into()));
        assert!(bad(&|s| s.timeout = Duration::from_secs(8 * 86_400)));
        assert!(bad(&|s| {
            s.options.insert("ahead".into(), "3".into());
        }));
        assert!(bad(&|s| {
            s.options.insert("full".into(), "yes".into());
        }));
        assert!(bad(&|s| s.kind = Kind::Archive));
        assert!(bad(&|s| s.kind = Kind::Backup));
        assert!(bad(&|s| {
            s.kind = Kind::PartitionPremake;
            s.target = "events".into();
            s.options = [("interval".to_string(), "weekly".to_string())].into();
        }));
    }
}
