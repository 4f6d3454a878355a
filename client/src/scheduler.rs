//! The scheduler: cron jobs run exactly once per occurrence across strata instances.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    Client, Error,
    pb::{self, scheduler_service_client::SchedulerServiceClient},
};

/// What a job does (see `proto/strata/v1/scheduler.proto` for targets and options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Storage-metrics snapshot.
    MetricsSample,
    /// Expire abandoned uploads.
    UploadExpiry,
    /// Run an archival or purge policy (target: policy).
    Archive,
    /// Apply a policy's retention (target: policy).
    Retention,
    /// VACUUM (ANALYZE) (target: tables, comma-separated; empty: all).
    Maintenance,
    /// Create partitions ahead (target: partitioned table).
    PartitionPremake,
    /// Database backup.
    Backup,
    /// Move a table's blobs into the object store (target: table).
    BlobMigration,
    /// Evaluate the alert rules.
    AlertEvaluation,
}

impl JobKind {
    fn to_pb(self) -> pb::JobKind {
        match self {
            JobKind::MetricsSample => pb::JobKind::MetricsSample,
            JobKind::UploadExpiry => pb::JobKind::UploadExpiry,
            JobKind::Archive => pb::JobKind::Archive,
            JobKind::Retention => pb::JobKind::Retention,
            JobKind::Maintenance => pb::JobKind::Maintenance,
            JobKind::PartitionPremake => pb::JobKind::PartitionPremake,
            JobKind::Backup => pb::JobKind::Backup,
            JobKind::BlobMigration => pb::JobKind::BlobMigration,
            JobKind::AlertEvaluation => pb::JobKind::AlertEvaluation,
        }
    }
    fn from_pb(k: i32) -> Option<Self> {
        Some(match pb::JobKind::try_from(k).ok()? {
            pb::JobKind::MetricsSample => JobKind::MetricsSample,
            pb::JobKind::UploadExpiry => JobKind::UploadExpiry,
            pb::JobKind::Archive => JobKind::Archive,
            pb::JobKind::Retention => JobKind::Retention,
            pb::JobKind::Maintenance => JobKind::Maintenance,
            pb::JobKind::PartitionPremake => JobKind::PartitionPremake,
            pb::JobKind::Backup => JobKind::Backup,
            pb::JobKind::BlobMigration => JobKind::BlobMigration,
            pb::JobKind::AlertEvaluation => JobKind::AlertEvaluation,
            pb::JobKind::Unspecified => return None,
        })
    }
}

/// How a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobRunState {
    /// Running.
    Running,
    /// Ended well.
    Succeeded,
    /// Ended with an error.
    Failed,
    /// Stopped by shutdown or a lost lease.
    Cancelled,
    /// Ran past its timeout.
    TimedOut,
    /// Occurrences that could not run in time.
    Missed,
}

/// A job's settings, for [`Client::create_job`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSpec {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub kind: JobKind,
    /// Policy or table, by kind.
    pub target: String,
    /// Kind-specific options.
    pub options: BTreeMap<String, String>,
    /// Cron expression (5 fields, or 6 with seconds first).
    pub schedule: String,
    /// IANA time zone (empty: UTC).
    pub time_zone: String,
    /// False: created paused.
    pub enabled: bool,
    /// Zero: none.
    #[serde(with = "crate::types::secs", rename = "timeout_seconds")]
    pub timeout: Duration,
}

impl JobSpec {
    /// An enabled job without target, options or timeout, scheduled in UTC.
    pub fn new(name: &str, kind: JobKind, schedule: &str) -> Self {
        JobSpec {
            name: name.into(),
            kind,
            target: String::new(),
            options: BTreeMap::new(),
            schedule: schedule.into(),
            time_zone: "UTC".into(),
            enabled: true,
            timeout: Duration::ZERO,
        }
    }

    /// The same job with a target (policy or table).
    pub fn target(self, target: &str) -> Self {
        JobSpec { target: target.into(), ..self }
    }
}

/// A job as the server has it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Its settings.
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Created by strata.
    pub builtin: bool,
    /// Next occurrence (None when paused).
    pub next_run_at: Option<DateTime<Utc>>,
    /// Newest run.
    pub last_run: Option<JobRun>,
}

/// One run of a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobRun {
    /// Id.
    pub id: String,
    /// Job.
    pub job_name: String,
    /// The occurrence it is for.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// True for RunJobNow.
    pub manual: bool,
    /// State.
    pub state: JobRunState,
    /// Instance that ran it.
    pub instance: String,
    /// 1 + takeovers.
    pub attempt: i64,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// What it did.
    pub message: String,
    /// Why it failed.
    pub error: String,
}

/// An instance running the scheduler loop.
#[derive(Debug, Clone, Serialize)]
pub struct SchedulerInstance {
    /// host:pid:random.
    pub id: String,
    /// Host.
    pub host: String,
    /// Pid.
    pub pid: i64,
    /// Last poll.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Seen recently.
    pub alive: bool,
}

/// The scheduler's state.
#[derive(Debug, Clone, Serialize)]
pub struct SchedulerStatus {
    /// Scheduled jobs run.
    pub running: bool,
    /// Who last started / stopped it.
    pub changed_by: String,
    /// When.
    pub changed_at: Option<DateTime<Utc>>,
    /// Instances.
    pub instances: Vec<SchedulerInstance>,
    /// The instance that answered.
    pub this_instance: String,
    /// Whether it runs scheduled jobs.
    pub this_instance_runs_scheduler: bool,
    /// Runs in progress.
    pub running_runs: Vec<JobRun>,
}

use crate::convert::ts as time;

impl From<pb::JobRun> for JobRun {
    fn from(r: pb::JobRun) -> Self {
        JobRun {
            state: match pb::JobRunState::try_from(r.state).unwrap_or(pb::JobRunState::Unspecified) {
                pb::JobRunState::Running => JobRunState::Running,
                pb::JobRunState::Succeeded => JobRunState::Succeeded,
                pb::JobRunState::Cancelled => JobRunState::Cancelled,
                pb::JobRunState::TimedOut => JobRunState::TimedOut,
                pb::JobRunState::Missed => JobRunState::Missed,
                _ => JobRunState::Failed,
            },
            manual: r.trigger == pb::JobRunTrigger::Manual as i32,
            id: r.id,
            job_name: r.job_name,
            scheduled_at: time(r.scheduled_time),
            instance: r.instance,
            attempt: r.attempt,
            started_at: time(r.start_time),
            ended_at: time(r.end_time),
            message: r.message,
            error: r.error,
        }
    }
}

impl From<pb::Job> for Job {
    fn from(j: pb::Job) -> Self {
        Job {
            spec: JobSpec {
                kind: JobKind::from_pb(j.kind).unwrap_or(JobKind::MetricsSample),
                name: j.name,
                target: j.target,
                options: j.options.into_iter().collect(),
                schedule: j.schedule,
                time_zone: j.time_zone,
                enabled: j.enabled,
                timeout: j.timeout.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default(),
            },
            builtin: j.builtin,
            next_run_at: time(j.next_run_time),
            last_run: j.last_run.map(JobRun::from),
        }
    }
}

impl From<pb::GetSchedulerStatusResponse> for SchedulerStatus {
    fn from(s: pb::GetSchedulerStatusResponse) -> Self {
        SchedulerStatus {
            running: s.running,
            changed_by: s.changed_by,
            changed_at: time(s.change_time),
            instances: s
                .instances
                .into_iter()
                .map(|i| SchedulerInstance {
                    id: i.id,
                    host: i.host,
                    pid: i.pid,
                    last_seen_at: time(i.last_seen_time),
                    alive: i.alive,
                })
                .collect(),
            this_instance: s.this_instance,
            this_instance_runs_scheduler: s.this_instance_runs_scheduler,
            running_runs: s.running_runs.into_iter().map(JobRun::from).collect(),
        }
    }
}

fn job_pb(s: &JobSpec) -> pb::Job {
    pb::Job {
        name: s.name.clone(),
        kind: s.kind.to_pb() as i32,
        target: s.target.clone(),
        options: s.options.clone().into_iter().collect(),
        schedule: s.schedule.clone(),
        time_zone: s.time_zone.clone(),
        enabled: s.enabled,
        timeout: prost_types::Duration::try_from(s.timeout).ok(),
        ..Default::default()
    }
}

/// What [`Client::update_job`] changes (None: keep).
#[derive(Debug, Clone, Default)]
pub struct JobChanges {
    /// New target.
    pub target: Option<String>,
    /// New options (replacing all).
    pub options: Option<BTreeMap<String, String>>,
    /// New cron expression.
    pub schedule: Option<String>,
    /// New time zone.
    pub time_zone: Option<String>,
    /// New timeout.
    pub timeout: Option<Duration>,
}

impl Client {
    fn scheduler(&self) -> SchedulerServiceClient<crate::client::Svc> {
        SchedulerServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Whether scheduled jobs run, on which instances, and what runs now.
    pub async fn scheduler_status(&self) -> Result<SchedulerStatus, Error> {
        Ok(self.scheduler().get_scheduler_status(pb::GetSchedulerStatusRequest {}).await?.into_inner().into())
    }

    /// Starts scheduled runs on every instance (each job's next occurrence counts from now).
    pub async fn start_scheduler(&self) -> Result<SchedulerStatus, Error> {
        let r = self.scheduler().start_scheduler(pb::StartSchedulerRequest {}).await?.into_inner();
        Ok(r.status.unwrap_or_default().into())
    }

    /// Stops scheduled runs on every instance (runs in progress finish).
    pub async fn stop_scheduler(&self) -> Result<SchedulerStatus, Error> {
        let r = self.scheduler().stop_scheduler(pb::StopSchedulerRequest {}).await?.into_inner();
        Ok(r.status.unwrap_or_default().into())
    }

    /// Every job, by name.
    pub async fn list_jobs(&self) -> Result<Vec<Job>, Error> {
        let r = self.scheduler().list_jobs(pb::ListJobsRequest {}).await?.into_inner();
        Ok(r.jobs.into_iter().map(Job::from).collect())
    }

    /// One job.
    pub async fn job(&self, name: &str) -> Result<Job, Error> {
        let r = self.scheduler().get_job(pb::GetJobRequest { name: name.into() }).await?.into_inner();
        Ok(r.job.unwrap_or_default().into())
    }

    /// Creates a job.
    pub async fn create_job(&self, spec: &JobSpec) -> Result<Job, Error> {
        let r = self.scheduler().create_job(pb::CreateJobRequest { job: Some(job_pb(spec)) }).await?.into_inner();
        Ok(r.job.unwrap_or_default().into())
    }

    /// Changes the given settings of a job.
    pub async fn update_job(&self, name: &str, c: JobChanges) -> Result<Job, Error> {
        let mut paths = Vec::new();
        let mut job = pb::Job { name: name.into(), ..Default::default() };
        if let Some(t) = c.target {
            job.target = t;
            paths.push("target".to_string());
        }
        if let Some(o) = c.options {
            job.options = o.into_iter().collect();
            paths.push("options".to_string());
        }
        if let Some(s) = c.schedule {
            job.schedule = s;
            paths.push("schedule".to_string());
        }
        if let Some(z) = c.time_zone {
            job.time_zone = z;
            paths.push("time_zone".to_string());
        }
        if let Some(t) = c.timeout {
            job.timeout = prost_types::Duration::try_from(t).ok();
            paths.push("timeout".to_string());
        }
        if paths.is_empty() {
            return self.job(name).await;
        }
        let r = self
            .scheduler()
            .update_job(pb::UpdateJobRequest { job: Some(job), update_mask: Some(prost_types::FieldMask { paths }) })
            .await?
            .into_inner();
        Ok(r.job.unwrap_or_default().into())
    }

    /// Deletes a job and its history.
    pub async fn delete_job(&self, name: &str) -> Result<(), Error> {
        self.scheduler().delete_job(pb::DeleteJobRequest { name: name.into() }).await?;
        Ok(())
    }

    /// Pauses a job.
    pub async fn pause_job(&self, name: &str) -> Result<Job, Error> {
        let r = self.scheduler().pause_job(pb::PauseJobRequest { name: name.into() }).await?.into_inner();
        Ok(r.job.unwrap_or_default().into())
    }

    /// Resumes a job from its next occurrence.
    pub async fn resume_job(&self, name: &str) -> Result<Job, Error> {
        let r = self.scheduler().resume_job(pb::ResumeJobRequest { name: name.into() }).await?.into_inner();
        Ok(r.job.unwrap_or_default().into())
    }

    /// Runs a job now; returns the run at once.
    pub async fn run_job_now(&self, name: &str) -> Result<JobRun, Error> {
        let r = self.scheduler().run_job_now(pb::RunJobNowRequest { name: name.into() }).await?.into_inner();
        Ok(r.run.unwrap_or_default().into())
    }

    /// One run.
    pub async fn job_run(&self, id: &str) -> Result<JobRun, Error> {
        let r = self.scheduler().get_job_run(pb::GetJobRunRequest { run_id: id.into() }).await?.into_inner();
        Ok(r.run.unwrap_or_default().into())
    }

    /// Polls a run every `interval` until it ends.
    pub async fn wait_job_run(&self, id: &str, interval: Duration) -> Result<JobRun, Error> {
        loop {
            let r = self.job_run(id).await?;
            if r.state != JobRunState::Running {
                return Ok(r);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Runs newest first, of one job (or all), up to `limit`.
    pub async fn list_job_runs(&self, job: Option<&str>, limit: usize) -> Result<Vec<JobRun>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .scheduler()
                .list_job_runs(pb::ListJobRunsRequest {
                    job_name: job.unwrap_or_default().into(),
                    page_size: (limit - out.len()).min(1000) as i32,
                    page_token: token,
                })
                .await?
                .into_inner();
            out.extend(r.runs.into_iter().map(JobRun::from));
            if r.next_page_token.is_empty() || out.len() >= limit {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }
}
