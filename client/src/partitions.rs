//! Partition upkeep (PostgreSQL range-partitioned tables keyed by time).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    Client, Error,
    operations::{ItemKind, Operation, OperationResult},
    pb::{self, partition_service_client::PartitionServiceClient},
};

/// Length of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum PartitionInterval {
    /// One UTC day.
    Daily,
    /// One UTC calendar month.
    Monthly,
}

impl PartitionInterval {
    fn to_pb(self) -> i32 {
        match self {
            PartitionInterval::Daily => pb::PartitionInterval::Daily as i32,
            PartitionInterval::Monthly => pb::PartitionInterval::Monthly as i32,
        }
    }
}

/// One partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    /// Table name.
    pub name: String,
    /// Lower bound (None: MINVALUE / default).
    pub start: Option<DateTime<Utc>>,
    /// Upper bound (None: MAXVALUE / default).
    pub end: Option<DateTime<Utc>>,
    /// Heap + indexes + TOAST.
    pub total_size_bytes: i64,
    /// Row estimate (-1: never analyzed).
    pub estimated_rows: i64,
    /// The default partition.
    pub is_default: bool,
}

use crate::convert::ts as time;

impl From<pb::Partition> for PartitionInfo {
    fn from(p: pb::Partition) -> Self {
        PartitionInfo {
            name: p.name,
            start: time(p.start_time),
            end: time(p.end_time),
            total_size_bytes: p.total_size_bytes,
            estimated_rows: p.estimated_rows,
            is_default: p.is_default,
        }
    }
}

/// A hole between two consecutive partitions: from the end of one to the start of the next.
pub type Gap = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A partitioned table's state.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionHealth {
    /// Key column.
    pub key_column: String,
    /// Its type.
    pub key_type: String,
    /// Partitions by start, then the default.
    pub partitions: Vec<PartitionInfo>,
    /// Holes between consecutive partitions.
    pub gaps: Vec<Gap>,
    /// Rows in the default partition.
    pub default_rows: i64,
    /// How far ahead partitions reach.
    #[serde(with = "crate::types::secs")]
    pub coverage_ahead: Duration,
}

/// What RescueDefaultRows did.
#[derive(Debug, Clone, Serialize)]
pub struct Rescue {
    /// Rows moved.
    pub rows_moved: i64,
    /// Partitions created for them.
    pub partitions_created: Vec<String>,
    /// Rows left in the default partition.
    pub rows_left: i64,
}

impl Client {
    fn partitions(&self) -> PartitionServiceClient<crate::client::Svc> {
        PartitionServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Creates missing partitions of `schema.table` from `past` periods back through `premake` ahead.
    pub async fn ensure_partitions(
        &self,
        schema: &str,
        table: &str,
        interval: PartitionInterval,
        premake: i32,
        past: i32,
    ) -> Result<(Vec<PartitionInfo>, i32), Error> {
        let r = self
            .partitions()
            .ensure_partitions(pb::EnsurePartitionsRequest {
                schema_name: schema.into(),
                table_name: table.into(),
                interval: interval.to_pb(),
                premake,
                premake_past: past,
            })
            .await?
            .into_inner();
        Ok((r.created.into_iter().map(Into::into).collect(), r.skipped))
    }

    /// Partitions, gaps, default rows and coverage of `schema.table`.
    pub async fn partition_health(&self, schema: &str, table: &str) -> Result<PartitionHealth, Error> {
        let r = self
            .partitions()
            .get_partition_health(pb::GetPartitionHealthRequest {
                schema_name: schema.into(),
                table_name: table.into(),
            })
            .await?
            .into_inner();
        Ok(PartitionHealth {
            key_column: r.key_column,
            key_type: r.key_type,
            partitions: r.partitions.into_iter().map(Into::into).collect(),
            gaps: r.gaps.into_iter().map(|g| (time(g.start_time), time(g.end_time))).collect(),
            default_rows: r.default_rows,
            coverage_ahead: r.coverage_ahead.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default(),
        })
    }

    /// Drops partitions entirely older than `older_than` (or lists them with `dry_run`).
    pub async fn drop_partitions(
        &self,
        schema: &str,
        table: &str,
        older_than: Duration,
        dry_run: bool,
    ) -> Result<Vec<PartitionInfo>, Error> {
        let r = self
            .partitions()
            .drop_partitions(pb::DropPartitionsRequest {
                schema_name: schema.into(),
                table_name: table.into(),
                older_than: prost_types::Duration::try_from(older_than).ok(),
                dry_run,
            })
            .await?
            .into_inner();
        Ok(r.partitions.into_iter().map(Into::into).collect())
    }

    /// Starts archiving whole partitions older than the cutoff of archive policy `policy`.
    pub async fn archive_partitions(&self, policy: &str) -> Result<crate::archive::ArchiveRun, Error> {
        let r = self
            .partitions()
            .archive_partitions(pb::ArchivePartitionsRequest { policy: policy.into() })
            .await?
            .into_inner();
        Ok(r.run.unwrap_or_default().into())
    }

    /// Starts moving default-partition rows into partitions of `interval` (or, with `dry_run`,
    /// counting them); returns the operation at once.
    pub async fn start_rescue(
        &self,
        schema: &str,
        table: &str,
        interval: PartitionInterval,
        dry_run: bool,
    ) -> Result<Operation, Error> {
        let r = self
            .partitions()
            .rescue_default_rows(pb::RescueDefaultRowsRequest {
                schema_name: schema.into(),
                table_name: table.into(),
                interval: interval.to_pb(),
                dry_run,
            })
            .await?
            .into_inner();
        r.operation.map(Operation::from).ok_or_else(|| Error::Malformed("no operation in the response".into()))
    }

    /// Moves default-partition rows into partitions of `interval` and waits for the end.
    pub async fn rescue_default_rows(
        &self,
        schema: &str,
        table: &str,
        interval: PartitionInterval,
        dry_run: bool,
    ) -> Result<Rescue, Error> {
        let op = self.start_rescue(schema, table, interval, dry_run).await?;
        let op = self.finish_operation(op).await?;
        let (rows_moved, rows_left) = match op.result {
            OperationResult::Rescue { rows_moved, rows_left, .. } => (rows_moved, rows_left),
            _ => (0, 0),
        };
        let partitions_created = self
            .all_operation_items(&op.id)
            .await?
            .into_iter()
            .filter(|i| i.kind == ItemKind::Partition)
            .map(|i| i.value)
            .collect();
        Ok(Rescue { rows_moved, partitions_created, rows_left })
    }
}
