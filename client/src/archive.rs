//! Archival policies, runs, restore and archived-row reads.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;

use crate::{
    Client, Error,
    client::Svc,
    convert::timestamp,
    pb::{self, archive_service_client::ArchiveServiceClient},
};

use crate::convert::ts as time;

fn duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(d).ok())
}

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 0 })
}

/// A comparison in a policy filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// one of the values
    In,
    /// none of the values
    NotIn,
    /// NULL
    IsNull,
    /// not NULL
    IsNotNull,
}

impl FilterOp {
    fn to_pb(self) -> pb::FilterOperator {
        use pb::FilterOperator as F;
        match self {
            FilterOp::Eq => F::Equal,
            FilterOp::Ne => F::NotEqual,
            FilterOp::Lt => F::Less,
            FilterOp::Le => F::LessOrEqual,
            FilterOp::Gt => F::Greater,
            FilterOp::Ge => F::GreaterOrEqual,
            FilterOp::In => F::In,
            FilterOp::NotIn => F::NotIn,
            FilterOp::IsNull => F::IsNull,
            FilterOp::IsNotNull => F::IsNotNull,
        }
    }
    fn from_pb(op: i32) -> Self {
        use pb::FilterOperator as F;
        match F::try_from(op).unwrap_or(F::Unspecified) {
            F::NotEqual => FilterOp::Ne,
            F::Less => FilterOp::Lt,
            F::LessOrEqual => FilterOp::Le,
            F::Greater => FilterOp::Gt,
            F::GreaterOrEqual => FilterOp::Ge,
            F::In => FilterOp::In,
            F::NotIn => FilterOp::NotIn,
            F::IsNull => FilterOp::IsNull,
            F::IsNotNull => FilterOp::IsNotNull,
            F::Equal | F::Unspecified => FilterOp::Eq,
        }
    }
}

/// A structured condition on one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// Column.
    pub column: String,
    /// Comparison.
    pub op: FilterOp,
    /// Values as text (one for comparisons, several for IN, none for IS NULL).
    pub values: Vec<String>,
}

impl Filter {
    /// `column op value`.
    pub fn new(column: impl Into<String>, op: FilterOp, values: &[&str]) -> Self {
        Filter { column: column.into(), op, values: values.iter().map(|v| v.to_string()).collect() }
    }
}

/// What a policy does with due rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// Into compressed segments in the object store.
    #[default]
    Archive,
    /// Deleted without a copy.
    Purge,
}

/// An archival policy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchivePolicy {
    /// Server-generated id (empty when creating).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Schema (empty: the backend's default).
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Time column.
    pub time_column: String,
    /// Key columns.
    pub key_columns: Vec<String>,
    /// Rows older than this are due.
    #[serde(with = "crate::types::secs")]
    pub archive_after: Duration,
    /// Extra conditions.
    pub filters: Vec<Filter>,
    /// Segments older than this are deleted (None: kept).
    #[serde(with = "crate::types::secs::opt")]
    pub delete_after: Option<Duration>,
    /// Rows per batch (0: server default).
    pub batch_size: i32,
    /// Archive or purge.
    pub mode: PolicyMode,
    /// Created.
    pub created_at: Option<DateTime<Utc>>,
    /// Updated.
    pub updated_at: Option<DateTime<Utc>>,
}

impl ArchivePolicy {
    fn to_pb(&self) -> pb::ArchivePolicy {
        pb::ArchivePolicy {
            id: self.id.clone(),
            name: self.name.clone(),
            schema_name: self.schema_name.clone(),
            table_name: self.table_name.clone(),
            time_column: self.time_column.clone(),
            key_columns: self.key_columns.clone(),
            archive_after: Some(pb_duration(self.archive_after)),
            filters: self
                .filters
                .iter()
                .map(|f| pb::Filter {
                    column: f.column.clone(),
                    operator: f.op.to_pb() as i32,
                    values: f.values.clone(),
                })
                .collect(),
            delete_after: self.delete_after.map(pb_duration),
            batch_size: self.batch_size,
            mode: match self.mode {
                PolicyMode::Archive => pb::PolicyMode::Archive,
                PolicyMode::Purge => pb::PolicyMode::Purge,
            } as i32,
            create_time: None,
            update_time: None,
        }
    }
}

impl From<pb::ArchivePolicy> for ArchivePolicy {
    fn from(p: pb::ArchivePolicy) -> Self {
        ArchivePolicy {
            id: p.id,
            name: p.name,
            schema_name: p.schema_name,
            table_name: p.table_name,
            time_column: p.time_column,
            key_columns: p.key_columns,
            archive_after: duration(p.archive_after).unwrap_or_default(),
            filters: p
                .filters
                .into_iter()
                .map(|f| Filter { column: f.column, op: FilterOp::from_pb(f.operator), values: f.values })
                .collect(),
            delete_after: duration(p.delete_after),
            batch_size: p.batch_size,
            mode: if p.mode == pb::PolicyMode::Purge as i32 { PolicyMode::Purge } else { PolicyMode::Archive },
            created_at: time(p.create_time),
            updated_at: time(p.update_time),
        }
    }
}

/// What a run would move now.
#[derive(Debug, Clone, Serialize)]
pub struct ArchivePlan {
    /// Rows due.
    pub rows: i64,
    /// Their estimated size in the table.
    pub estimated_bytes: i64,
    /// Oldest due row.
    pub oldest: Option<DateTime<Utc>>,
    /// Newest due row.
    pub newest: Option<DateTime<Utc>>,
    /// Batches (segments).
    pub batches: i64,
    /// Rows older than this are due.
    pub cutoff: Option<DateTime<Utc>>,
}

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// Rows into segments.
    Archive,
    /// Rows deleted.
    Purge,
    /// Segments back into the table.
    Restore,
    /// Expired segments deleted.
    Retention,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Working.
    Running,
    /// Done.
    Succeeded,
    /// Stopped by an error or interrupted.
    Failed,
    /// Stopped on request or at shutdown.
    Cancelled,
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveRun {
    /// Id.
    pub id: String,
    /// Policy.
    pub policy_id: String,
    /// Kind.
    pub kind: RunKind,
    /// State.
    pub state: RunState,
    /// Cutoff.
    pub cutoff: Option<DateTime<Utc>>,
    /// Rows archived, purged or restored.
    pub rows_done: i64,
    /// Rows skipped on restore (key existed).
    pub rows_skipped: i64,
    /// Segments.
    pub segments_done: i64,
    /// JSON Lines bytes.
    pub raw_bytes: i64,
    /// Compressed bytes.
    pub compressed_bytes: i64,
    /// raw / compressed.
    pub compression_ratio: f64,
    /// Rows per second.
    pub rows_per_second: f64,
    /// Longest batch transaction.
    #[serde(with = "crate::types::secs")]
    pub longest_transaction: Duration,
    /// Error.
    pub error: String,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// A cancel was requested.
    pub cancel_requested: bool,
}

impl From<pb::ArchiveRun> for ArchiveRun {
    fn from(r: pb::ArchiveRun) -> Self {
        use pb::{RunKind as K, RunState as S};
        ArchiveRun {
            kind: match K::try_from(r.kind).unwrap_or(K::Unspecified) {
                K::Purge => RunKind::Purge,
                K::Restore => RunKind::Restore,
                K::Retention => RunKind::Retention,
                K::Archive | K::Unspecified => RunKind::Archive,
            },
            state: match S::try_from(r.state).unwrap_or(S::Unspecified) {
                S::Running => RunState::Running,
                S::Succeeded => RunState::Succeeded,
                S::Cancelled => RunState::Cancelled,
                S::Failed | S::Unspecified => RunState::Failed,
            },
            id: r.id,
            policy_id: r.policy_id,
            cutoff: time(r.cutoff_time),
            rows_done: r.rows_done,
            rows_skipped: r.rows_skipped,
            segments_done: r.segments_done,
            raw_bytes: r.raw_bytes,
            compressed_bytes: r.compressed_bytes,
            compression_ratio: r.compression_ratio,
            rows_per_second: r.rows_per_second,
            longest_transaction: duration(r.longest_transaction).unwrap_or_default(),
            error: r.error,
            started_at: time(r.start_time),
            ended_at: time(r.end_time),
            cancel_requested: r.cancel_requested,
        }
    }
}

/// An archived segment.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveSegment {
    /// Id.
    pub id: String,
    /// Policy.
    pub policy_id: String,
    /// Run that wrote it.
    pub run_id: String,
    /// Object key.
    pub object_key: String,
    /// Its rows were restored.
    pub restored: bool,
    /// Rows.
    pub row_count: i64,
    /// JSON Lines bytes.
    pub raw_bytes: i64,
    /// Object bytes.
    pub compressed_bytes: i64,
    /// SHA-256 of the object.
    pub sha256: String,
    /// Oldest row.
    pub min_time: Option<DateTime<Utc>>,
    /// Newest row.
    pub max_time: Option<DateTime<Utc>>,
    /// First key (JSON).
    pub first_key: String,
    /// Last key (JSON).
    pub last_key: String,
    /// Columns ("name type").
    pub columns: Vec<String>,
}

impl From<pb::ArchiveSegment> for ArchiveSegment {
    fn from(s: pb::ArchiveSegment) -> Self {
        ArchiveSegment {
            restored: s.state == pb::SegmentState::Restored as i32,
            id: s.id,
            policy_id: s.policy_id,
            run_id: s.run_id,
            object_key: s.object_key,
            row_count: s.row_count,
            raw_bytes: s.raw_bytes,
            compressed_bytes: s.compressed_bytes,
            sha256: s.sha256,
            min_time: time(s.min_time),
            max_time: time(s.max_time),
            first_key: s.first_key,
            last_key: s.last_key,
            columns: s.columns,
        }
    }
}

/// Which segments a restore or read covers.
#[derive(Debug, Clone, Default)]
pub struct SegmentSelection {
    /// Segments with rows at or after this time.
    pub start: Option<DateTime<Utc>>,
    /// Segments with rows before this time.
    pub end: Option<DateTime<Utc>>,
    /// Exactly these (then no time range).
    pub ids: Vec<String>,
}

impl Client {
    /// The generated ArchiveService client.
    pub(crate) fn archive_service(&self) -> ArchiveServiceClient<Svc> {
        ArchiveServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(8 << 20)
    }

    /// Creates a policy (checked against the live schema).
    pub async fn create_policy(&self, policy: &ArchivePolicy) -> Result<ArchivePolicy, Error> {
        let r = self.archive_service().create_policy(pb::CreatePolicyRequest { policy: Some(policy.to_pb()) }).await?;
        Ok(r.into_inner().policy.unwrap_or_default().into())
    }

    /// Replaces the fields named in `fields` (empty: all settable fields) of policy `policy.id`.
    pub async fn update_policy(&self, policy: &ArchivePolicy, fields: &[&str]) -> Result<ArchivePolicy, Error> {
        let r = self
            .archive_service()
            .update_policy(pb::UpdatePolicyRequest {
                policy: Some(policy.to_pb()),
                update_mask: Some(prost_types::FieldMask { paths: fields.iter().map(|f| f.to_string()).collect() }),
            })
            .await?;
        Ok(r.into_inner().policy.unwrap_or_default().into())
    }

    /// A policy by id or name.
    pub async fn policy(&self, policy: &str) -> Result<ArchivePolicy, Error> {
        let r = self.archive_service().get_policy(pb::GetPolicyRequest { policy: policy.into() }).await?;
        Ok(r.into_inner().policy.unwrap_or_default().into())
    }

    /// Every policy.
    pub async fn list_policies(&self) -> Result<Vec<ArchivePolicy>, Error> {
        let r = self.archive_service().list_policies(pb::ListPoliciesRequest {}).await?;
        Ok(r.into_inner().policies.into_iter().map(Into::into).collect())
    }

    /// Deletes a policy with no segments left.
    pub async fn delete_policy(&self, policy: &str) -> Result<(), Error> {
        self.archive_service().delete_policy(pb::DeletePolicyRequest { policy: policy.into() }).await?;
        Ok(())
    }

    /// What a run of `policy` would move now.
    pub async fn plan_archive(&self, policy: &str) -> Result<ArchivePlan, Error> {
        let r = self.archive_service().plan_archive(pb::PlanArchiveRequest { policy: policy.into() }).await?;
        let r = r.into_inner();
        Ok(ArchivePlan {
            rows: r.rows,
            estimated_bytes: r.estimated_bytes,
            oldest: time(r.oldest_time),
            newest: time(r.newest_time),
            batches: r.batches,
            cutoff: time(r.cutoff_time),
        })
    }

    /// Starts a run of `policy`.
    pub async fn run_archive(&self, policy: &str) -> Result<ArchiveRun, Error> {
        let r = self.archive_service().run_archive(pb::RunArchiveRequest { policy: policy.into() }).await?;
        Ok(r.into_inner().run.unwrap_or_default().into())
    }

    /// A run.
    pub async fn archive_run(&self, run_id: &str) -> Result<ArchiveRun, Error> {
        let r = self.archive_service().get_run(pb::GetRunRequest { run_id: run_id.into() }).await?;
        Ok(r.into_inner().run.unwrap_or_default().into())
    }

    /// Polls a run every `interval` until it ends.
    pub async fn wait_archive_run(&self, run_id: &str, interval: Duration) -> Result<ArchiveRun, Error> {
        loop {
            let r = self.archive_run(run_id).await?;
            if r.state != RunState::Running {
                return Ok(r);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Runs newest first (of one policy when given), up to `limit`.
    pub async fn list_archive_runs(&self, policy: Option<&str>, limit: usize) -> Result<Vec<ArchiveRun>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .archive_service()
                .list_runs(pb::ListRunsRequest {
                    policy: policy.unwrap_or_default().into(),
                    page_size: (limit - out.len()).min(1000) as i32,
                    page_token: token,
                })
                .await?
                .into_inner();
            out.extend(r.runs.into_iter().map(ArchiveRun::from));
            if r.next_page_token.is_empty() || out.len() >= limit {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }

    /// Asks a run to stop after its current batch.
    pub async fn cancel_archive_run(&self, run_id: &str) -> Result<ArchiveRun, Error> {
        let r = self.archive_service().cancel_run(pb::CancelRunRequest { run_id: run_id.into() }).await?;
        Ok(r.into_inner().run.unwrap_or_default().into())
    }

    /// Starts restoring the selected segments of `policy`.
    pub async fn restore_archive(&self, policy: &str, sel: &SegmentSelection) -> Result<ArchiveRun, Error> {
        let r = self
            .archive_service()
            .restore_archive(pb::RestoreArchiveRequest {
                policy: policy.into(),
                start_time: sel.start.map(timestamp),
                end_time: sel.end.map(timestamp),
                segment_ids: sel.ids.clone(),
            })
            .await?;
        Ok(r.into_inner().run.unwrap_or_default().into())
    }

    /// Starts deleting the expired segments of `policy`.
    pub async fn apply_retention(&self, policy: &str) -> Result<ArchiveRun, Error> {
        let r = self.archive_service().apply_retention(pb::ApplyRetentionRequest { policy: policy.into() }).await?;
        Ok(r.into_inner().run.unwrap_or_default().into())
    }

    /// Every segment of `policy`, oldest first.
    pub async fn list_segments(&self, policy: &str) -> Result<Vec<ArchiveSegment>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .archive_service()
                .list_segments(pb::ListSegmentsRequest { policy: policy.into(), page_size: 1000, page_token: token })
                .await?
                .into_inner();
            out.extend(r.segments.into_iter().map(ArchiveSegment::from));
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }

    /// Archived rows (JSON objects) of the selected segments, calling `each(segment_id, rows)` per
    /// received chunk.
    pub async fn read_archive(
        &self,
        policy: &str,
        sel: &SegmentSelection,
        mut each: impl FnMut(&str, Vec<String>) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut stream = self
            .archive_service()
            .read_archive(pb::ReadArchiveRequest {
                policy: policy.into(),
                start_time: sel.start.map(timestamp),
                end_time: sel.end.map(timestamp),
                segment_ids: sel.ids.clone(),
            })
            .await?
            .into_inner();
        let mut n = 0;
        while let Some(chunk) = stream.try_next().await? {
            n += chunk.rows.len() as u64;
            each(&chunk.segment_id, chunk.rows)?;
        }
        Ok(n)
    }
}
