//! SchedulerService: decode → service → encode.

use strata_client::pb::{self, scheduler_service_server::SchedulerService};
use tonic::{Request, Response, Status};

use super::{
    auth::caller_name,
    convert::{dur, duration, page_size, required, ts},
};
use crate::service::{
    Context, Error,
    scheduler::{self, Job, JobKind, JobRun, JobRunState, JobSpec, JobUpdate, Status as SchedulerStatus, Trigger},
};

/// gRPC adapter of [`scheduler`].
pub(super) struct SchedulerApi {
    pub(crate) ctx: Context,
}

fn kind_pb(k: JobKind) -> pb::JobKind {
    match k {
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

fn kind(k: i32) -> Result<JobKind, Error> {
    Ok(match pb::JobKind::try_from(k).unwrap_or(pb::JobKind::Unspecified) {
        pb::JobKind::MetricsSample => JobKind::MetricsSample,
        pb::JobKind::UploadExpiry => JobKind::UploadExpiry,
        pb::JobKind::Archive => JobKind::Archive,
        pb::JobKind::Retention => JobKind::Retention,
        pb::JobKind::Maintenance => JobKind::Maintenance,
        pb::JobKind::PartitionPremake => JobKind::PartitionPremake,
        pb::JobKind::Backup => JobKind::Backup,
        pb::JobKind::BlobMigration => JobKind::BlobMigration,
        pb::JobKind::AlertEvaluation => JobKind::AlertEvaluation,
        pb::JobKind::Unspecified => return Err(Error::InvalidArgument("job kind is required".into())),
    })
}

fn run_pb(r: JobRun) -> pb::JobRun {
    pb::JobRun {
        trigger: match r.trigger {
            Trigger::Manual => pb::JobRunTrigger::Manual,
            Trigger::Schedule => pb::JobRunTrigger::Schedule,
        } as i32,
        state: match r.state {
            JobRunState::Running => pb::JobRunState::Running,
            JobRunState::Succeeded => pb::JobRunState::Succeeded,
            JobRunState::Failed => pb::JobRunState::Failed,
            JobRunState::Cancelled => pb::JobRunState::Cancelled,
            JobRunState::TimedOut => pb::JobRunState::TimedOut,
            JobRunState::Missed => pb::JobRunState::Missed,
        } as i32,
        id: r.id,
        job_name: r.job_name,
        scheduled_time: Some(ts(r.scheduled_for.and_utc())),
        instance: r.instance,
        attempt: r.attempt,
        start_time: Some(ts(r.started_at.and_utc())),
        end_time: r.finished_at.map(|t| ts(t.and_utc())),
        message: r.message,
        error: r.error.unwrap_or_default(),
    }
}

fn job_pb(j: Job) -> pb::Job {
    let spec = j.spec;
    pb::Job {
        name: spec.name,
        kind: kind_pb(spec.kind) as i32,
        target: spec.target,
        options: spec.options.into_iter().collect(),
        schedule: spec.schedule,
        time_zone: spec.time_zone,
        enabled: spec.enabled,
        timeout: Some(dur(spec.timeout)),
        builtin: j.builtin,
        next_run_time: j.next_due.filter(|_| spec.enabled).map(|t| ts(t.and_utc())),
        last_run: j.last_run.map(run_pb),
        create_time: Some(ts(j.created_at.and_utc())),
        update_time: Some(ts(j.updated_at.and_utc())),
    }
}

fn status_pb(s: SchedulerStatus) -> pb::GetSchedulerStatusResponse {
    pb::GetSchedulerStatusResponse {
        running: s.running,
        changed_by: s.changed_by,
        change_time: Some(ts(s.changed_at.and_utc())),
        instances: s
            .instances
            .into_iter()
            .map(|i| pb::SchedulerInstance {
                id: i.id,
                host: i.host,
                pid: i.pid,
                start_time: Some(ts(i.started_at.and_utc())),
                last_seen_time: Some(ts(i.last_seen.and_utc())),
                alive: i.alive,
            })
            .collect(),
        this_instance: s.this_instance,
        this_instance_runs_scheduler: s.this_runs_scheduler,
        running_runs: s.running_runs.into_iter().map(run_pb).collect(),
    }
}

/// Fields UpdateJob may change.
const SETTABLE: &[&str] = &["target", "options", "schedule", "time_zone", "timeout"];

#[tonic::async_trait]
impl SchedulerService for SchedulerApi {
    async fn get_scheduler_status(
        &self,
        _req: Request<pb::GetSchedulerStatusRequest>,
    ) -> Result<Response<pb::GetSchedulerStatusResponse>, Status> {
        Ok(Response::new(status_pb(scheduler::status(&self.ctx).await?)))
    }

    async fn start_scheduler(
        &self,
        req: Request<pb::StartSchedulerRequest>,
    ) -> Result<Response<pb::StartSchedulerResponse>, Status> {
        let by = caller_name(&req);
        let s = scheduler::set_running(&self.ctx, true, &by).await?;
        Ok(Response::new(pb::StartSchedulerResponse { status: Some(status_pb(s)) }))
    }

    async fn stop_scheduler(
        &self,
        req: Request<pb::StopSchedulerRequest>,
    ) -> Result<Response<pb::StopSchedulerResponse>, Status> {
        let by = caller_name(&req);
        let s = scheduler::set_running(&self.ctx, false, &by).await?;
        Ok(Response::new(pb::StopSchedulerResponse { status: Some(status_pb(s)) }))
    }

    async fn list_jobs(&self, _req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let jobs = scheduler::list_jobs(&self.ctx).await?.into_iter().map(job_pb).collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let n = required("name", req.into_inner().name)?;
        Ok(Response::new(pb::GetJobResponse { job: Some(job_pb(scheduler::get_job(&self.ctx, &n).await?)) }))
    }

    async fn create_job(&self, req: Request<pb::CreateJobRequest>) -> Result<Response<pb::CreateJobResponse>, Status> {
        let j = req.into_inner().job.ok_or_else(|| Status::invalid_argument("job is required"))?;
        let spec = JobSpec {
            name: j.name,
            kind: kind(j.kind)?,
            target: j.target,
            options: j.options.into_iter().collect(),
            schedule: j.schedule,
            time_zone: j.time_zone,
            enabled: j.enabled,
            timeout: j.timeout.map(|d| duration("timeout", d)).transpose()?.unwrap_or_default(),
        };
        let job = scheduler::create_job(&self.ctx, spec).await?;
        Ok(Response::new(pb::CreateJobResponse { job: Some(job_pb(job)) }))
    }

    async fn update_job(&self, req: Request<pb::UpdateJobRequest>) -> Result<Response<pb::UpdateJobResponse>, Status> {
        let req = req.into_inner();
        let j = req.job.ok_or_else(|| Status::invalid_argument("job is required"))?;
        let n = required("name", j.name)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        if let Some(bad) = paths.iter().find(|p| !SETTABLE.contains(&p.as_str())) {
            return Err(Status::invalid_argument(format!(
                "update_mask: {bad:?} cannot be changed (settable: {}; pause and resume with PauseJob / ResumeJob)",
                SETTABLE.join(", ")
            )));
        }
        let set = |f: &str| paths.is_empty() || paths.iter().any(|p| p == f);
        let u = JobUpdate {
            target: set("target").then_some(j.target),
            options: set("options").then(|| j.options.into_iter().collect()),
            schedule: set("schedule").then_some(j.schedule),
            time_zone: set("time_zone").then_some(j.time_zone),
            timeout: if set("timeout") {
                Some(j.timeout.map(|d| duration("timeout", d)).transpose()?.unwrap_or_default())
            } else {
                None
            },
        };
        let job = scheduler::update_job(&self.ctx, &n, u).await?;
        Ok(Response::new(pb::UpdateJobResponse { job: Some(job_pb(job)) }))
    }

    async fn delete_job(&self, req: Request<pb::DeleteJobRequest>) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let n = required("name", req.into_inner().name)?;
        scheduler::delete_job(&self.ctx, &n).await?;
        Ok(Response::new(pb::DeleteJobResponse {}))
    }

    async fn pause_job(&self, req: Request<pb::PauseJobRequest>) -> Result<Response<pb::PauseJobResponse>, Status> {
        let n = required("name", req.into_inner().name)?;
        let job = scheduler::set_enabled(&self.ctx, &n, false).await?;
        Ok(Response::new(pb::PauseJobResponse { job: Some(job_pb(job)) }))
    }

    async fn resume_job(&self, req: Request<pb::ResumeJobRequest>) -> Result<Response<pb::ResumeJobResponse>, Status> {
        let n = required("name", req.into_inner().name)?;
        let job = scheduler::set_enabled(&self.ctx, &n, true).await?;
        Ok(Response::new(pb::ResumeJobResponse { job: Some(job_pb(job)) }))
    }

    async fn run_job_now(&self, req: Request<pb::RunJobNowRequest>) -> Result<Response<pb::RunJobNowResponse>, Status> {
        let n = required("name", req.into_inner().name)?;
        let run = scheduler::run_now(&self.ctx, &n).await?;
        Ok(Response::new(pb::RunJobNowResponse { run: Some(run_pb(run)) }))
    }

    async fn list_job_runs(
        &self,
        req: Request<pb::ListJobRunsRequest>,
    ) -> Result<Response<pb::ListJobRunsResponse>, Status> {
        let req = req.into_inner();
        let size = page_size(req.page_size, 100)?;
        let job = (!req.job_name.is_empty()).then_some(req.job_name.as_str());
        let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let (runs, next) = scheduler::list_runs(&self.ctx, job, size, token).await?;
        Ok(Response::new(pb::ListJobRunsResponse {
            runs: runs.into_iter().map(run_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn get_job_run(&self, req: Request<pb::GetJobRunRequest>) -> Result<Response<pb::GetJobRunResponse>, Status> {
        let id = required("run_id", req.into_inner().run_id)?;
        Ok(Response::new(pb::GetJobRunResponse { run: Some(run_pb(scheduler::get_run(&self.ctx, &id).await?)) }))
    }
}
