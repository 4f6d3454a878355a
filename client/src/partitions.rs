//! Partition upkeep (PostgreSQL partitioned tables): range-partitioned tables keyed by time get
//! every call; tables range-partitioned on an integer key and hash-partitioned tables get ensure
//! and health.

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

/// How a table is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKind {
    /// Not reported (an older server).
    Unspecified,
    /// By range of one time column.
    TimeRange,
    /// By range of one integer column.
    IntegerRange,
    /// By hash.
    Hash,
}

impl From<i32> for PartitionKind {
    fn from(k: i32) -> Self {
        match pb::PartitionKind::try_from(k).unwrap_or(pb::PartitionKind::Unspecified) {
            pb::PartitionKind::Unspecified => PartitionKind::Unspecified,
            pb::PartitionKind::TimeRange => PartitionKind::TimeRange,
            pb::PartitionKind::IntegerRange => PartitionKind::IntegerRange,
            pb::PartitionKind::Hash => PartitionKind::Hash,
        }
    }
}

/// Where a hash partition sits: the rows whose key hashes to `remainder` modulo `modulus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HashBound {
    /// Modulus.
    pub modulus: i32,
    /// Remainder.
    pub remainder: i32,
}

/// One partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    /// Table name.
    pub name: String,
    /// Lower bound of a time range (None: MINVALUE / default / another kind).
    pub start: Option<DateTime<Utc>>,
    /// Upper bound of a time range (None: MAXVALUE / default / another kind).
    pub end: Option<DateTime<Utc>>,
    /// Lower bound of an integer range (None: MINVALUE / default / another kind).
    pub start_key: Option<i64>,
    /// Upper bound of an integer range (None: MAXVALUE / default / another kind).
    pub end_key: Option<i64>,
    /// Modulus and remainder of a hash partition.
    pub hash: Option<HashBound>,
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
            start_key: p.start_key,
            end_key: p.end_key,
            hash: (p.hash_modulus > 0).then_some(HashBound { modulus: p.hash_modulus, remainder: p.hash_remainder }),
            total_size_bytes: p.total_size_bytes,
            estimated_rows: p.estimated_rows,
            is_default: p.is_default,
        }
    }
}

/// A hole between two consecutive time ranges: from the end of one to the start of the next.
pub type Gap = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// What health adds for an integer-range table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IntegerRangeHealth {
    /// The largest key (None: the table is empty).
    pub max_key: Option<i64>,
    /// Keys above the largest one that the ranges still cover (`i64::MAX`: up to MAXVALUE).
    pub keys_ahead: i64,
}

/// What health adds for a hash-partitioned table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HashHealth {
    /// The largest modulus in use.
    pub modulus: i32,
    /// Remainders of `modulus` no partition covers (inserts hashing there fail).
    pub missing_remainders: Vec<i32>,
    /// Largest over mean of the partitions' row estimates, scaled by their share (1.0: even;
    /// 0.0: unknown, some partition was never analyzed).
    pub row_skew: f64,
    /// The same of their sizes.
    pub size_skew: f64,
}

/// A partitioned table's state.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionHealth {
    /// How the table is partitioned.
    pub kind: PartitionKind,
    /// Key column (hash: the key's columns and expressions).
    pub key_column: String,
    /// Its type.
    pub key_type: String,
    /// Ranges by start, then the default; hash partitions by modulus and remainder.
    pub partitions: Vec<PartitionInfo>,
    /// Holes between consecutive time ranges.
    pub gaps: Vec<Gap>,
    /// Holes between consecutive integer ranges: (end of one, start of the next).
    pub key_gaps: Vec<(i64, i64)>,
    /// Set for an integer-range table.
    pub integer_range: Option<IntegerRangeHealth>,
    /// Set for a hash-partitioned table.
    pub hash: Option<HashHealth>,
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

    /// Creates missing partitions of time-range table `schema.table` from `past` periods back
    /// through `premake` ahead. Returns them and how many periods were already covered.
    pub async fn ensure_partitions(
        &self,
        schema: &str,
        table: &str,
        interval: PartitionInterval,
        premake: i32,
        past: i32,
    ) -> Result<(Vec<PartitionInfo>, i32), Error> {
        self.ensure(pb::EnsurePartitionsRequest {
            schema_name: schema.into(),
            table_name: table.into(),
            interval: interval.to_pb(),
            premake,
            premake_past: past,
            width: 0,
        })
        .await
    }

    /// Creates missing ranges of `width` keys of integer-range table `schema.table`, from `past`
    /// ranges before the one holding the largest key through `premake` beyond it (0: the server's
    /// `partition_premake_ranges`). Returns them and how many ranges were already covered.
    pub async fn ensure_integer_ranges(
        &self,
        schema: &str,
        table: &str,
        width: i64,
        premake: i32,
        past: i32,
    ) -> Result<(Vec<PartitionInfo>, i32), Error> {
        self.ensure(pb::EnsurePartitionsRequest {
            schema_name: schema.into(),
            table_name: table.into(),
            interval: pb::PartitionInterval::Unspecified as i32,
            premake,
            premake_past: past,
            width,
        })
        .await
    }

    /// Creates the missing remainders of hash-partitioned table `schema.table` (of the largest
    /// modulus in use). Returns them and how many remainders were already covered.
    pub async fn ensure_hash_partitions(&self, schema: &str, table: &str) -> Result<(Vec<PartitionInfo>, i32), Error> {
        self.ensure(pb::EnsurePartitionsRequest {
            schema_name: schema.into(),
            table_name: table.into(),
            ..Default::default()
        })
        .await
    }

    async fn ensure(&self, req: pb::EnsurePartitionsRequest) -> Result<(Vec<PartitionInfo>, i32), Error> {
        let r = self.partitions().ensure_partitions(req).await?.into_inner();
        Ok((r.created.into_iter().map(Into::into).collect(), r.skipped))
    }

    /// Partitions, gaps, default rows and coverage of `schema.table`; for hash tables the missing
    /// remainders and skew.
    pub async fn partition_health(&self, schema: &str, table: &str) -> Result<PartitionHealth, Error> {
        let r = self
            .partitions()
            .get_partition_health(pb::GetPartitionHealthRequest {
                schema_name: schema.into(),
                table_name: table.into(),
            })
            .await?
            .into_inner();
        let (time_gaps, key_gaps): (Vec<_>, Vec<_>) = r.gaps.into_iter().partition(|g| g.start_key.is_none());
        Ok(PartitionHealth {
            kind: r.kind.into(),
            key_column: r.key_column,
            key_type: r.key_type,
            partitions: r.partitions.into_iter().map(Into::into).collect(),
            gaps: time_gaps.into_iter().map(|g| (time(g.start_time), time(g.end_time))).collect(),
            key_gaps: key_gaps
                .into_iter()
                .map(|g| (g.start_key.unwrap_or_default(), g.end_key.unwrap_or_default()))
                .collect(),
            integer_range: r.integer_range.map(|i| IntegerRangeHealth { max_key: i.max_key, keys_ahead: i.keys_ahead }),
            hash: r.hash.map(|h| HashHealth {
                modulus: h.modulus,
                missing_remainders: h.missing_remainders,
                row_skew: h.row_skew,
                size_skew: h.size_skew,
            }),
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
