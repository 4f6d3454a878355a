//! PartitionService: decode → service → encode.

use strata_client::pb::{self, partition_service_server::PartitionService};
use tonic::{Request, Response, Status};

use super::convert::{dur, duration, ts};
use crate::service::{
    Context, Error,
    partitions::{self, Interval, Partition},
};

/// gRPC adapter of [`partitions`].
pub(super) struct PartitionApi {
    pub(crate) ctx: Context,
}

fn interval(i: i32) -> Result<Interval, Error> {
    match pb::PartitionInterval::try_from(i).unwrap_or(pb::PartitionInterval::Unspecified) {
        pb::PartitionInterval::Daily => Ok(Interval::Daily),
        pb::PartitionInterval::Monthly => Ok(Interval::Monthly),
        pb::PartitionInterval::Unspecified => {
            Err(Error::InvalidArgument("interval is required (daily or monthly)".into()))
        }
    }
}

fn count(what: &str, n: i32) -> Result<u32, Error> {
    u32::try_from(n).ok().filter(|n| *n <= 1000).ok_or_else(|| Error::InvalidArgument(format!("{what} must be 0–1000")))
}

fn partition(p: Partition) -> pb::Partition {
    pb::Partition {
        name: p.name,
        start_time: p.start.map(ts),
        end_time: p.end.map(ts),
        total_size_bytes: p.size,
        estimated_rows: p.estimated_rows,
        is_default: p.is_default,
    }
}

#[tonic::async_trait]
impl PartitionService for PartitionApi {
    async fn ensure_partitions(
        &self,
        req: Request<pb::EnsurePartitionsRequest>,
    ) -> Result<Response<pb::EnsurePartitionsResponse>, Status> {
        let r = req.into_inner();
        let (iv, ahead, past) =
            (interval(r.interval)?, count("premake", r.premake)?, count("premake_past", r.premake_past)?);
        let parent = partitions::resolve(&self.ctx, &r.schema_name, &r.table_name).await?;
        let (created, skipped) = partitions::ensure(&self.ctx, &parent, iv, ahead, past).await?;
        Ok(Response::new(pb::EnsurePartitionsResponse {
            created: created.into_iter().map(partition).collect(),
            skipped: skipped as i32,
        }))
    }

    async fn get_partition_health(
        &self,
        req: Request<pb::GetPartitionHealthRequest>,
    ) -> Result<Response<pb::GetPartitionHealthResponse>, Status> {
        let r = req.into_inner();
        let parent = partitions::resolve(&self.ctx, &r.schema_name, &r.table_name).await?;
        let h = partitions::health(&self.ctx, parent).await?;
        Ok(Response::new(pb::GetPartitionHealthResponse {
            key_column: h.parent.key,
            key_type: h.parent.key_type.as_str().into(),
            partitions: h.partitions.into_iter().map(partition).collect(),
            gaps: h
                .gaps
                .into_iter()
                .map(|(a, b)| pb::PartitionGap { start_time: Some(ts(a)), end_time: Some(ts(b)) })
                .collect(),
            default_rows: h.default_rows,
            coverage_ahead: Some(dur(h.coverage_ahead)),
        }))
    }

    async fn drop_partitions(
        &self,
        req: Request<pb::DropPartitionsRequest>,
    ) -> Result<Response<pb::DropPartitionsResponse>, Status> {
        let r = req.into_inner();
        let older_than = r
            .older_than
            .map(|d| duration("older_than", d))
            .transpose()?
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Status::invalid_argument("older_than is required and must be positive"))?;
        let parent = partitions::resolve(&self.ctx, &r.schema_name, &r.table_name).await?;
        let dropped = partitions::drop_old(&self.ctx, &parent, older_than, r.dry_run).await?;
        Ok(Response::new(pb::DropPartitionsResponse { partitions: dropped.into_iter().map(partition).collect() }))
    }

    async fn archive_partitions(
        &self,
        req: Request<pb::ArchivePartitionsRequest>,
    ) -> Result<Response<pb::ArchivePartitionsResponse>, Status> {
        let policy = req.into_inner().policy;
        if policy.is_empty() {
            return Err(Status::invalid_argument("policy is required"));
        }
        let r = crate::service::archive::archive_partitions(&self.ctx, &policy).await?;
        Ok(Response::new(pb::ArchivePartitionsResponse { run: Some(super::archive::run(r)) }))
    }

    async fn rescue_default_rows(
        &self,
        req: Request<pb::RescueDefaultRowsRequest>,
    ) -> Result<Response<pb::RescueDefaultRowsResponse>, Status> {
        let r = req.into_inner();
        let iv = interval(r.interval)?;
        let parent = partitions::resolve(&self.ctx, &r.schema_name, &r.table_name).await?;
        let op = partitions::start_rescue(&self.ctx, &parent, iv, r.dry_run).await?;
        Ok(Response::new(pb::RescueDefaultRowsResponse { operation: Some(super::operations::operation(op)) }))
    }
}
