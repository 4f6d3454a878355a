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
//!
//! The work of a run is done by `jobs::dispatch`: this module claims runs and records how they
//! ended, `jobs` runs them (the arrow points from `jobs` to here, never back).

mod claim;
mod cron;
mod crud;

use std::{collections::BTreeMap, time::Duration};

use chrono::NaiveDateTime;

pub use self::{
    claim::{finish_run, forget_self, host_name, poll, renew_lease, set_running, status},
    cron::{ClaimPlan, next_after, parse_schedule, plan_claim},
    crud::{
        JobUpdate, create_job, delete_job, ensure_builtin, get_job, get_run, list_jobs, list_runs, run_now,
        set_enabled, update_job,
    },
};
use super::{Context, Error, Result, check_name};
use crate::db::scheduler::{InstanceRow, RunRow};
pub use crate::model::scheduler::{JobKind, JobRunState, Trigger};

impl JobKind {
    /// Options the kind accepts.
    fn options(self) -> &'static [&'static str] {
        match self {
            JobKind::Maintenance => &["full", "analyze"],
            JobKind::PartitionPremake => &["interval", "width", "ahead", "back"],
            JobKind::BlobMigration => &["blob_column", "key_column", "reference_column", "encoding", "batch_size"],
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
    pub kind: JobKind,
    /// Policy or table (see [`JobKind`]).
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
    /// Its settings.
    pub spec: JobSpec,
    /// Created by strata itself (deleting it is refused: pause it).
    pub builtin: bool,
    /// Next unclaimed occurrence (UTC).
    pub next_due: Option<NaiveDateTime>,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Changed.
    pub updated_at: NaiveDateTime,
    /// Newest run, if any.
    pub last_run: Option<JobRun>,
}

/// One run of a job (or one gap of missed occurrences).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRun {
    /// Id (UUIDv7: time-ordered).
    pub id: String,
    /// The job.
    pub job_name: String,
    /// Occurrence (UTC) or request time.
    pub scheduled_for: NaiveDateTime,
    /// What started it.
    pub trigger: Trigger,
    /// Where it is.
    pub state: JobRunState,
    /// The instance running (or that ran) it.
    pub instance: String,
    /// 1, then +1 per takeover.
    pub attempt: i64,
    /// Started.
    pub started_at: NaiveDateTime,
    /// Ended.
    pub finished_at: Option<NaiveDateTime>,
    /// What it did.
    pub message: String,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<RunRow> for JobRun {
    fn from(r: RunRow) -> Self {
        Self {
            id: r.id,
            job_name: r.job_name,
            scheduled_for: r.scheduled_for,
            trigger: r.run_trigger,
            state: r.state,
            instance: r.owner,
            attempt: r.attempt,
            started_at: r.started_at,
            finished_at: r.finished_at,
            message: r.message,
            error: r.error,
        }
    }
}

/// A strata instance that ran the scheduler loop recently.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `host:pid:random`.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i64,
    /// Started.
    pub started_at: NaiveDateTime,
    /// Last heartbeat.
    pub last_seen: NaiveDateTime,
    /// Seen within the time an instance counts as up.
    pub alive: bool,
}

impl Instance {
    fn new(i: InstanceRow, alive: bool) -> Self {
        Self { id: i.id, host: i.host, pid: i.pid, started_at: i.started_at, last_seen: i.last_seen, alive }
    }
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
    pub instances: Vec<Instance>,
    /// This instance's id.
    pub this_instance: String,
    /// Whether this instance runs scheduled jobs.
    pub this_runs_scheduler: bool,
    /// Runs in progress.
    pub running_runs: Vec<JobRun>,
}

/// Starts the work of a run this instance holds (claimed by [`poll`], taken over, or started by
/// [`run_now`]), in the background. `jobs::dispatch` provides it through [`Context::start_run`].
///
/// Why a function pointer in the context: starting a run needs the dispatcher, which calls into
/// every service; a service calling `jobs` would point the arrow back up. A plain `fn` is the
/// smallest thing that lets [`run_now`] (an RPC) and [`poll`] hand the run over at the moment
/// they record it, as before the dispatcher moved, so no claimed run waits for a later step.
pub type StartRun = fn(&Context, JobSpec, JobRun);

/// Longest timeout a job may have.
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

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
        let needs_target = matches!(
            self.kind,
            JobKind::Archive | JobKind::Retention | JobKind::PartitionPremake | JobKind::BlobMigration
        );
        let takes_target = needs_target || self.kind == JobKind::Maintenance;
        if needs_target && self.target.is_empty() {
            return Err(Error::InvalidArgument(format!("{} jobs need a target", self.kind.as_str())));
        }
        if !takes_target && !self.target.is_empty() {
            return Err(Error::InvalidArgument(format!("{} jobs take no target", self.kind.as_str())));
        }
        match self.kind {
            JobKind::Maintenance => {
                for t in self.target.split(',').filter(|t| !t.trim().is_empty()) {
                    super::maintenance::parse_table(t.trim())?;
                }
                for k in ["full", "analyze"] {
                    if let Some(v) = self.options.get(k) {
                        bool_option(k, v)?;
                    }
                }
            }
            JobKind::PartitionPremake => {
                super::maintenance::parse_table(&self.target)?;
                interval_option(self.options.get("interval"))?;
                width_option(self.options.get("width"))?;
                for k in ["ahead", "back"] {
                    count_option(k, self.options.get(k), 0)?;
                }
            }
            JobKind::BlobMigration => {
                blob_request(&self.target, &self.options)?;
            }
            _ => {}
        }
        Ok(self)
    }
}

pub(crate) fn bool_option(k: &str, v: &str) -> Result<bool> {
    v.parse().map_err(|_| Error::InvalidArgument(format!("option {k} must be true or false, not {v:?}")))
}

pub(crate) fn count_option(k: &str, v: Option<&String>, default: u32) -> Result<u32> {
    match v {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= 1000)
            .ok_or_else(|| Error::InvalidArgument(format!("option {k} must be a number from 0 to 1000, not {v:?}"))),
    }
}

pub(crate) fn interval_option(v: Option<&String>) -> Result<super::partitions::Interval> {
    use super::partitions::Interval;
    match v.map(String::as_str) {
        None | Some("monthly") => Ok(Interval::Monthly),
        Some("daily") => Ok(Interval::Daily),
        Some(o) => Err(Error::InvalidArgument(format!("option interval must be daily or monthly, not {o:?}"))),
    }
}

fn width_option(v: Option<&String>) -> Result<Option<i64>> {
    v.map(|w| match w.parse::<i64>() {
        Ok(w) if w > 0 => Ok(w),
        _ => Err(Error::InvalidArgument(format!("option width must be a positive number of keys, not {w:?}"))),
    })
    .transpose()
}

/// What a partition_premake job asks of table `t`, from its options, which must fit the table's
/// kind: time ranges take `interval` (default monthly), `ahead` (default 3) and `back`; integer
/// ranges take `width` (required), `ahead` (default: the `partition_premake_ranges` setting) and
/// `back`; hash partitions take none (their missing remainders are created).
pub(crate) fn premake_request(
    o: &BTreeMap<String, String>,
    t: &super::partitions::Table,
) -> Result<super::partitions::Ensure> {
    use super::partitions::{Ensure, Kind};
    let name = format!("{}.{}", t.schema, t.table);
    let given = |keys: &[&'static str]| keys.iter().copied().find(|k| o.contains_key(*k));
    let past = count_option("back", o.get("back"), 0)?;
    match t.kind {
        Kind::TimeRange(_) => {
            if given(&["width"]).is_some() {
                return Err(Error::InvalidArgument(format!(
                    "option width is for integer-range tables; {name} is partitioned by time range"
                )));
            }
            let interval = Some(interval_option(o.get("interval"))?);
            Ok(Ensure { interval, width: None, ahead: count_option("ahead", o.get("ahead"), 3)?, past })
        }
        Kind::IntegerRange(_) => {
            if given(&["interval"]).is_some() {
                return Err(Error::InvalidArgument(format!(
                    "option interval is for time-range tables; {name} is partitioned by integer range: give a width"
                )));
            }
            let width = width_option(o.get("width"))?.ok_or_else(|| {
                Error::InvalidArgument(format!("option width is required: {name} is partitioned by integer range"))
            })?;
            Ok(Ensure { interval: None, width: Some(width), ahead: count_option("ahead", o.get("ahead"), 0)?, past })
        }
        Kind::Hash => match given(&["interval", "width", "ahead", "back"]) {
            Some(k) => Err(Error::InvalidArgument(format!(
                "option {k} does not apply: {name} is partitioned by hash (its missing remainders are created)"
            ))),
            None => Ok(Ensure { interval: None, width: None, ahead: 0, past: 0 }),
        },
    }
}

pub(crate) fn blob_request(target: &str, o: &BTreeMap<String, String>) -> Result<super::blob_migration::StartRequest> {
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
        job("alert-evaluation", JobKind::AlertEvaluation, "* * * * *", true, 300),
        // Growth history: the seeds sample every 5 minutes.
        job("metrics-sample", JobKind::MetricsSample, "*/5 * * * *", true, 300),
        job("upload-expiry", JobKind::UploadExpiry, "*/10 * * * *", true, 600),
        // Nightly VACUUM ANALYZE of every table, after the backup.
        job("maintenance", JobKind::Maintenance, "0 3 * * *", true, 4 * 3600),
        // Daily backup at 02:00 UTC; rotation keeps daily / weekly / monthly ones.
        job("backup", JobKind::Backup, "0 2 * * *", true, 6 * 3600),
    ]
}

/// A first attempt of `job` for occurrence `at`, running on this instance from `t`.
pub(super) fn new_run(ctx: &Context, job: &str, at: NaiveDateTime, trigger: Trigger, t: NaiveDateTime) -> RunRow {
    RunRow {
        id: uuid::Uuid::now_v7().to_string(),
        job_name: job.to_owned(),
        scheduled_for: at,
        run_trigger: trigger,
        state: JobRunState::Running,
        owner: ctx.instance_id.clone(),
        attempt: 1,
        lease_until: Some(t + ctx.run_lease()),
        started_at: t,
        finished_at: None,
        message: String::new(),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_specs_are_checked() {
        let ok = JobSpec {
            name: "nightly-vacuum".into(),
            kind: JobKind::Maintenance,
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
        assert!(bad(&|s| s.kind = JobKind::Archive));
        assert!(bad(&|s| s.kind = JobKind::Backup));
        assert!(bad(&|s| {
            s.kind = JobKind::PartitionPremake;
            s.target = "events".into();
            s.options = [("interval".to_string(), "weekly".to_string())].into();
        }));
    }
}
