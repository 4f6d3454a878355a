//! ArchiveService: decode → service → encode.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use strata_client::pb::{self, archive_service_server::ArchiveService};
use tonic::{Request, Response, Status};

use super::convert::{dur, duration, page_size, required, time, ts};
use crate::service::{
    Context, Error,
    archive::{
        self, FilterOp, FilterSpec, Mode, Policy, PolicySpec, Run, RunKind, RunState, Segment, SegmentState, Selection,
    },
};

/// gRPC adapter of [`archive`].
pub(super) struct ArchiveApi {
    pub(crate) ctx: Context,
}

/// Fields UpdatePolicy can change.
const SETTABLE: &[&str] = &[
    "name",
    "schema_name",
    "table_name",
    "time_column",
    "key_columns",
    "archive_after",
    "filters",
    "delete_after",
    "batch_size",
    "mode",
];

fn operator(op: i32) -> Result<FilterOp, Error> {
    use pb::FilterOperator as F;
    Ok(match F::try_from(op).unwrap_or(F::Unspecified) {
        F::Equal => FilterOp::Equal,
        F::NotEqual => FilterOp::NotEqual,
        F::Less => FilterOp::Less,
        F::LessOrEqual => FilterOp::LessOrEqual,
        F::Greater => FilterOp::Greater,
        F::GreaterOrEqual => FilterOp::GreaterOrEqual,
        F::In => FilterOp::In,
        F::NotIn => FilterOp::NotIn,
        F::IsNull => FilterOp::IsNull,
        F::IsNotNull => FilterOp::IsNotNull,
        F::Unspecified => return Err(Error::InvalidArgument("filter operator is required".into())),
    })
}

fn operator_pb(op: FilterOp) -> i32 {
    use pb::FilterOperator as F;
    (match op {
        FilterOp::Equal => F::Equal,
        FilterOp::NotEqual => F::NotEqual,
        FilterOp::Less => F::Less,
        FilterOp::LessOrEqual => F::LessOrEqual,
        FilterOp::Greater => F::Greater,
        FilterOp::GreaterOrEqual => F::GreaterOrEqual,
        FilterOp::In => F::In,
        FilterOp::NotIn => F::NotIn,
        FilterOp::IsNull => F::IsNull,
        FilterOp::IsNotNull => F::IsNotNull,
    }) as i32
}

fn spec(p: pb::ArchivePolicy) -> Result<PolicySpec, Error> {
    let filters = p
        .filters
        .into_iter()
        .map(|f| Ok(FilterSpec { op: operator(f.operator)?, column: f.column, values: f.values }))
        .collect::<Result<Vec<_>, Error>>()?;
    let archive_after = p
        .archive_after
        .map(|d| duration("archive_after", d))
        .transpose()?
        .ok_or_else(|| Error::InvalidArgument("archive_after is required".into()))?;
    let mode = match pb::PolicyMode::try_from(p.mode).unwrap_or(pb::PolicyMode::Unspecified) {
        pb::PolicyMode::Unspecified | pb::PolicyMode::Archive => Mode::Archive,
        pb::PolicyMode::Purge => Mode::Purge,
    };
    if p.batch_size < 0 {
        return Err(Error::InvalidArgument("batch_size must not be negative".into()));
    }
    PolicySpec {
        name: p.name,
        schema_name: p.schema_name,
        table_name: p.table_name,
        time_column: p.time_column,
        key_columns: p.key_columns,
        archive_after,
        filters,
        delete_after: p.delete_after.map(|d| duration("delete_after", d)).transpose()?,
        batch_size: i64::from(p.batch_size),
        mode,
    }
    .validate()
}

fn policy(p: Policy) -> pb::ArchivePolicy {
    let s = p.spec;
    pb::ArchivePolicy {
        id: p.id,
        name: s.name,
        schema_name: s.schema_name,
        table_name: s.table_name,
        time_column: s.time_column,
        key_columns: s.key_columns,
        archive_after: Some(dur(s.archive_after)),
        filters: s
            .filters
            .into_iter()
            .map(|f| pb::Filter { operator: operator_pb(f.op), column: f.column, values: f.values })
            .collect(),
        delete_after: s.delete_after.map(dur),
        batch_size: i32::try_from(s.batch_size).unwrap_or(i32::MAX),
        mode: match s.mode {
            Mode::Archive => pb::PolicyMode::Archive,
            Mode::Purge => pb::PolicyMode::Purge,
        } as i32,
        create_time: Some(ts(p.created_at)),
        update_time: Some(ts(p.updated_at)),
    }
}

pub(super) fn run(r: Run) -> pb::ArchiveRun {
    let (ratio, rate) = (r.compression_ratio(), r.rows_per_second());
    pb::ArchiveRun {
        id: r.id,
        policy_id: r.policy_id,
        kind: match r.kind {
            RunKind::Archive => pb::RunKind::Archive,
            RunKind::Purge => pb::RunKind::Purge,
            RunKind::Restore => pb::RunKind::Restore,
            RunKind::Retention => pb::RunKind::Retention,
        } as i32,
        state: match r.state {
            RunState::Running => pb::RunState::Running,
            RunState::Succeeded => pb::RunState::Succeeded,
            RunState::Cancelled => pb::RunState::Cancelled,
            RunState::Failed => pb::RunState::Failed,
        } as i32,
        cutoff_time: r.cutoff.map(ts),
        rows_done: r.rows_done,
        rows_skipped: r.rows_skipped,
        segments_done: r.segments_done,
        raw_bytes: r.raw_bytes,
        compressed_bytes: r.compressed_bytes,
        compression_ratio: ratio,
        rows_per_second: rate,
        longest_transaction: Some(dur(r.longest_transaction)),
        error: r.error.unwrap_or_default(),
        start_time: Some(ts(r.started_at)),
        update_time: Some(ts(r.updated_at)),
        end_time: r.finished_at.map(ts),
        cancel_requested: r.cancel_requested,
    }
}

fn segment(s: Segment) -> pb::ArchiveSegment {
    pb::ArchiveSegment {
        id: s.id,
        policy_id: s.policy_id,
        run_id: s.run_id,
        object_key: s.object_key,
        // Only committed and restored segments are listed; the others are steps of writing or
        // deleting one.
        state: match s.state {
            SegmentState::Restored => pb::SegmentState::Restored,
            SegmentState::Committed | SegmentState::Pending | SegmentState::Deleting | SegmentState::Discarding => {
                pb::SegmentState::Committed
            }
        } as i32,
        row_count: s.row_count,
        raw_bytes: s.raw_bytes,
        compressed_bytes: s.compressed_bytes,
        sha256: s.sha256,
        min_time: s.min_time.map(ts),
        max_time: s.max_time.map(ts),
        first_key: s.first_key,
        last_key: s.last_key,
        columns: s.columns,
        create_time: Some(ts(s.created_at)),
        restore_time: s.restored_at.map(ts),
    }
}

fn selection(
    start: Option<prost_types::Timestamp>,
    end: Option<prost_types::Timestamp>,
    ids: Vec<String>,
) -> Result<Selection, Error> {
    if ids.is_empty() {
        let (start, end) = (time(start)?, time(end)?);
        if let (Some(s), Some(e)) = (start, end)
            && s >= e
        {
            return Err(Error::InvalidArgument("start_time must be before end_time".into()));
        }
        Ok(Selection::Range { start, end })
    } else if start.is_some() || end.is_some() {
        Err(Error::InvalidArgument("give segment_ids or a time range, not both".into()))
    } else {
        Ok(Selection::Ids(ids))
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadArchiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ArchiveService for ArchiveApi {
    async fn create_policy(
        &self,
        req: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::CreatePolicyResponse>, Status> {
        let p = req.into_inner().policy.ok_or_else(|| Status::invalid_argument("policy is required"))?;
        let created = archive::create_policy(&self.ctx, spec(p)?).await?;
        Ok(Response::new(pb::CreatePolicyResponse { policy: Some(policy(created)) }))
    }

    async fn get_policy(&self, req: Request<pb::GetPolicyRequest>) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let id = required("policy", req.into_inner().policy)?;
        Ok(Response::new(pb::GetPolicyResponse { policy: Some(policy(archive::get_policy(&self.ctx, &id).await?)) }))
    }

    async fn list_policies(
        &self,
        _req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let all = archive::list_policies(&self.ctx).await?;
        Ok(Response::new(pb::ListPoliciesResponse { policies: all.into_iter().map(policy).collect() }))
    }

    async fn update_policy(
        &self,
        req: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::UpdatePolicyResponse>, Status> {
        let req = req.into_inner();
        let new = req.policy.ok_or_else(|| Status::invalid_argument("policy is required"))?;
        let id = required("policy.id", new.id.clone())?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        if let Some(bad) = paths.iter().find(|p| !SETTABLE.contains(&p.as_str())) {
            return Err(Status::invalid_argument(format!("update_mask: {bad:?} cannot be changed")));
        }
        let all = paths.is_empty();
        let set = |f: &str| all || paths.iter().any(|p| p == f);
        // Start from the stored policy and take the masked fields from the request.
        let mut merged = policy(archive::get_policy(&self.ctx, &id).await?);
        if set("name") {
            merged.name = new.name;
        }
        if set("schema_name") {
            merged.schema_name = new.schema_name;
        }
        if set("table_name") {
            merged.table_name = new.table_name;
        }
        if set("time_column") {
            merged.time_column = new.time_column;
        }
        if set("key_columns") {
            merged.key_columns = new.key_columns;
        }
        if set("archive_after") {
            merged.archive_after = new.archive_after;
        }
        if set("filters") {
            merged.filters = new.filters;
        }
        if set("delete_after") {
            merged.delete_after = new.delete_after;
        }
        if set("batch_size") {
            merged.batch_size = new.batch_size;
        }
        if set("mode") {
            merged.mode = new.mode;
        }
        let updated = archive::update_policy(&self.ctx, &id, spec(merged)?).await?;
        Ok(Response::new(pb::UpdatePolicyResponse { policy: Some(policy(updated)) }))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        archive::delete_policy(&self.ctx, &required("policy", req.into_inner().policy)?).await?;
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }

    async fn plan_archive(
        &self,
        req: Request<pb::PlanArchiveRequest>,
    ) -> Result<Response<pb::PlanArchiveResponse>, Status> {
        let p = archive::plan(&self.ctx, &required("policy", req.into_inner().policy)?).await?;
        Ok(Response::new(pb::PlanArchiveResponse {
            rows: p.rows,
            estimated_bytes: p.bytes,
            oldest_time: p.oldest.map(ts),
            newest_time: p.newest.map(ts),
            batches: p.batches,
            cutoff_time: Some(ts(p.cutoff)),
        }))
    }

    async fn run_archive(
        &self,
        req: Request<pb::RunArchiveRequest>,
    ) -> Result<Response<pb::RunArchiveResponse>, Status> {
        let r = archive::run(&self.ctx, &required("policy", req.into_inner().policy)?).await?;
        Ok(Response::new(pb::RunArchiveResponse { run: Some(run(r)) }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::GetRunResponse>, Status> {
        let r = archive::get_run(&self.ctx, &required("run_id", req.into_inner().run_id)?).await?;
        Ok(Response::new(pb::GetRunResponse { run: Some(run(r)) }))
    }

    async fn list_runs(&self, req: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsResponse>, Status> {
        let req = req.into_inner();
        let policy = (!req.policy.is_empty()).then_some(req.policy.as_str());
        let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let (runs, next) = archive::list_runs(&self.ctx, policy, page_size(req.page_size, 50)?, token).await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.into_iter().map(run).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn cancel_run(&self, req: Request<pb::CancelRunRequest>) -> Result<Response<pb::CancelRunResponse>, Status> {
        let r = archive::cancel_run(&self.ctx, &required("run_id", req.into_inner().run_id)?).await?;
        Ok(Response::new(pb::CancelRunResponse { run: Some(run(r)) }))
    }

    async fn restore_archive(
        &self,
        req: Request<pb::RestoreArchiveRequest>,
    ) -> Result<Response<pb::RestoreArchiveResponse>, Status> {
        let req = req.into_inner();
        let sel = selection(req.start_time, req.end_time, req.segment_ids)?;
        let r = archive::restore(&self.ctx, &required("policy", req.policy)?, sel).await?;
        Ok(Response::new(pb::RestoreArchiveResponse { run: Some(run(r)) }))
    }

    type ReadArchiveStream = ReadStream;

    async fn read_archive(&self, req: Request<pb::ReadArchiveRequest>) -> Result<Response<ReadStream>, Status> {
        let req = req.into_inner();
        let sel = selection(req.start_time, req.end_time, req.segment_ids)?;
        let policy = required("policy", req.policy)?;
        // Fail fast on an unknown policy, before the stream starts.
        archive::get_policy(&self.ctx, &policy).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let ctx = self.ctx.clone();
        tokio::spawn(async move { archive::read(&ctx, &policy, sel, tx).await });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
            item.map(|(segment_id, rows)| pb::ReadArchiveResponse { segment_id, rows }).map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_segments(
        &self,
        req: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let req = req.into_inner();
        let offset = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse::<i64>().map_err(|_| Status::invalid_argument("invalid page_token"))?
        };
        let policy = required("policy", req.policy)?;
        let (segments, next) =
            archive::list_segments(&self.ctx, &policy, page_size(req.page_size, 100)?, offset).await?;
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: segments.into_iter().map(segment).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn apply_retention(
        &self,
        req: Request<pb::ApplyRetentionRequest>,
    ) -> Result<Response<pb::ApplyRetentionResponse>, Status> {
        let r = archive::apply_retention(&self.ctx, &required("policy", req.into_inner().policy)?).await?;
        Ok(Response::new(pb::ApplyRetentionResponse { run: Some(run(r)) }))
    }
}
