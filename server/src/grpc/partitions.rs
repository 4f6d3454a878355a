//! PartitionService: decode → service → encode.

use strata_client::pb::{self, partition_service_server::PartitionService};
use tonic::{Request, Response, Status};

use super::convert::{dur, duration, ts};
use crate::service::{
    Context, Error,
    partitions::{self, Ensure, Interval, Kind, Partition, TableHealth},
};

/// gRPC adapter of [`partitions`].
pub(super) struct PartitionApi {
    pub(crate) ctx: Context,
}

fn interval(i: i32) -> Result<Interval, Error> {
    optional_interval(i)?.ok_or_else(|| Error::InvalidArgument("interval is required (daily or monthly)".into()))
}

/// An interval that only some tables take: unset is None, an unknown value INVALID_ARGUMENT.
fn optional_interval(i: i32) -> Result<Option<Interval>, Error> {
    match pb::PartitionInterval::try_from(i) {
        Ok(pb::PartitionInterval::Daily) => Ok(Some(Interval::Daily)),
        Ok(pb::PartitionInterval::Monthly) => Ok(Some(Interval::Monthly)),
        Ok(pb::PartitionInterval::Unspecified) => Ok(None),
        Err(_) => Err(Error::InvalidArgument(format!("interval {i} is not a known interval"))),
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
        start_key: p.start_key,
        end_key: p.end_key,
        hash_modulus: p.hash.map_or(0, |h| h.0),
        hash_remainder: p.hash.map_or(0, |h| h.1),
    }
}

fn kind(k: Kind) -> pb::PartitionKind {
    match k {
        Kind::TimeRange(_) => pb::PartitionKind::TimeRange,
        Kind::IntegerRange(_) => pb::PartitionKind::IntegerRange,
        Kind::Hash => pb::PartitionKind::Hash,
    }
}

fn health(h: TableHealth) -> pb::GetPartitionHealthResponse {
    match h {
        TableHealth::Time(h) => pb::GetPartitionHealthResponse {
            key_column: h.parent.key,
            key_type: h.parent.key_type.as_str().into(),
            partitions: h.partitions.into_iter().map(partition).collect(),
            gaps: h
                .gaps
                .into_iter()
                .map(|(a, b)| pb::PartitionGap { start_time: Some(ts(a)), end_time: Some(ts(b)), ..Default::default() })
                .collect(),
            default_rows: h.default_rows,
            coverage_ahead: Some(dur(h.coverage_ahead)),
            kind: pb::PartitionKind::TimeRange.into(),
            integer_range: None,
            hash: None,
        },
        TableHealth::IntegerRange(h) => pb::GetPartitionHealthResponse {
            kind: kind(h.table.kind).into(),
            key_column: h.table.key,
            key_type: h.table.key_type,
            partitions: h.partitions.into_iter().map(partition).collect(),
            gaps: h
                .gaps
                .into_iter()
                .map(|(a, b)| pb::PartitionGap { start_key: Some(a), end_key: Some(b), ..Default::default() })
                .collect(),
            default_rows: h.default_rows,
            coverage_ahead: Some(dur(std::time::Duration::ZERO)),
            integer_range: Some(pb::IntegerRangeHealth { max_key: h.max_key, keys_ahead: h.keys_ahead }),
            hash: None,
        },
        TableHealth::Hash(h) => pb::GetPartitionHealthResponse {
            kind: kind(h.table.kind).into(),
            key_column: h.table.key,
            key_type: h.table.key_type,
            partitions: h.partitions.into_iter().map(partition).collect(),
            gaps: Vec::new(),
            default_rows: 0,
            coverage_ahead: Some(dur(std::time::Duration::ZERO)),
            integer_range: None,
            hash: Some(pb::HashPartitionHealth {
                modulus: h.modulus,
                missing_remainders: h.missing_remainders,
                row_skew: h.row_skew,
                size_skew: h.size_skew,
            }),
        },
    }
}

#[tonic::async_trait]
impl PartitionService for PartitionApi {
    async fn ensure_partitions(
        &self,
        req: Request<pb::EnsurePartitionsRequest>,
    ) -> Result<Response<pb::EnsurePartitionsResponse>, Status> {
        let r = req.into_inner();
        let width = match r.width {
            0 => None,
            w if w > 0 => Some(w),
            _ => return Err(Status::invalid_argument("width must be positive")),
        };
        let e = Ensure {
            interval: optional_interval(r.interval)?,
            width,
            ahead: count("premake", r.premake)?,
            past: count("premake_past", r.premake_past)?,
        };
        // Which fields apply depends on the table's kind: the service checks them against it.
        let table = partitions::resolve_table(&self.ctx, &r.schema_name, &r.table_name).await?;
        let (created, skipped) = partitions::ensure_any(&self.ctx, &table, e).await?;
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
        let table = partitions::resolve_table(&self.ctx, &r.schema_name, &r.table_name).await?;
        Ok(Response::new(health(partitions::health_any(&self.ctx, table).await?)))
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
        let parent = partitions::resolve_time(&self.ctx, &r.schema_name, &r.table_name, "DropPartitions").await?;
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
        let parent = partitions::resolve_time(&self.ctx, &r.schema_name, &r.table_name, "RescueDefaultRows").await?;
        let op = partitions::start_rescue(&self.ctx, &parent, iv, r.dry_run).await?;
        Ok(Response::new(pb::RescueDefaultRowsResponse { operation: Some(super::operations::operation(op)) }))
    }
}
