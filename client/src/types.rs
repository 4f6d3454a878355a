//! Domain types returned by the SDK. They serialize to JSON (the CLI's `--json`); durations are
//! written as fractional seconds and times as RFC 3339.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Serializes a [`Duration`] (or an optional one) as fractional seconds.
pub(crate) mod secs {
    use std::time::Duration;

    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(crate) mod opt {
        use std::time::Duration;

        use serde::Serializer;

        pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&d.as_secs_f64()),
                None => s.serialize_none(),
            }
        }
    }
}

/// Database backend of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// PostgreSQL primary with optional replicas.
    Postgres,
    /// Embedded SQLite file.
    Sqlite,
}

/// Role of a database node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Writable primary (or the SQLite file).
    Primary,
    /// Read-only replica.
    Replica,
}

/// How reads are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingState {
    /// Reads go to healthy replicas (or there are none to use).
    Normal,
    /// A replica is down or lagging; reads fall back to the primary.
    Degraded,
    /// The primary is unreachable.
    PrimaryDown,
}

/// Health of one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeHealth {
    /// Node name (`primary`, `replica-0`, …).
    pub name: String,
    /// Node role.
    pub role: NodeRole,
    /// Address without password.
    pub address: String,
    /// Whether the last probe succeeded.
    pub healthy: bool,
    /// Whether reads are routed to it (replicas).
    pub serving_reads: bool,
    /// Replication lag, when known.
    #[serde(with = "secs::opt", rename = "replication_lag_seconds")]
    pub replication_lag: Option<Duration>,
    /// Last probe error.
    pub last_error: String,
    /// When last probed.
    pub last_checked: Option<DateTime<Utc>>,
    /// The server that answered the last successful probe (`host:port`): with several hosts in the
    /// database URL, the one chosen (after a failover, the new primary). Empty when unknown.
    pub server_address: String,
}

/// Non-secret configuration summary.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigSummary {
    /// gRPC listen address.
    pub listen_address: String,
    /// Object store URL.
    pub object_store_url: String,
    /// Max connections per pool.
    pub pool_max_size: u32,
    /// Pool acquire timeout.
    #[serde(with = "secs", rename = "pool_acquire_timeout_seconds")]
    pub pool_acquire_timeout: Duration,
    /// Statement timeout.
    #[serde(with = "secs", rename = "statement_timeout_seconds")]
    pub statement_timeout: Duration,
    /// Max replica lag tolerated for reads.
    #[serde(with = "secs", rename = "max_replica_lag_seconds")]
    pub max_replica_lag: Duration,
    /// Whether this instance runs scheduled jobs.
    pub run_scheduler: bool,
    /// Number of configured tokens.
    pub auth_token_count: u32,
    /// Whether only loopback clients are accepted.
    pub loopback_only: bool,
}

/// What `GetInfo` returns.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// Server version.
    pub version: String,
    /// Backend in use.
    pub backend: Backend,
    /// Read routing state.
    pub routing_state: RoutingState,
    /// Every node's health.
    pub nodes: Vec<NodeHealth>,
    /// Start time.
    pub started_at: Option<DateTime<Utc>>,
    /// Uptime.
    #[serde(with = "secs", rename = "uptime_seconds")]
    pub uptime: Duration,
    /// Config summary.
    pub config: Option<ConfigSummary>,
    /// Reads that fell back from a replica to the primary.
    pub replica_fallbacks: u64,
}

/// One round trip measured by `TestConnection`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionProbe {
    /// Node name.
    pub name: String,
    /// Node role.
    pub role: NodeRole,
    /// Whether it succeeded.
    pub ok: bool,
    /// Round trip time.
    #[serde(with = "secs::opt", rename = "round_trip_seconds")]
    pub round_trip: Option<Duration>,
    /// Error when it failed.
    pub error: String,
}

/// Source of a table's row figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowCountSource {
    /// Planner statistics (estimate).
    Statistics,
    /// Counted b-tree cells (exact).
    BtreeCells,
    /// No statistics yet.
    None,
}

/// Metrics of one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableMetrics {
    /// Schema.
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Estimated rows.
    pub estimated_rows: i64,
    /// Where the row figure comes from.
    pub row_count_source: RowCountSource,
    /// Heap bytes.
    pub table_size_bytes: i64,
    /// Index bytes.
    pub index_size_bytes: i64,
    /// TOAST bytes.
    pub toast_size_bytes: i64,
    /// Total bytes.
    pub total_size_bytes: i64,
    /// Dead rows (PostgreSQL).
    pub dead_rows: Option<i64>,
    /// Last vacuum.
    pub last_vacuum: Option<DateTime<Utc>>,
    /// Last analyze.
    pub last_analyze: Option<DateTime<Utc>>,
    /// Sequential scans (PostgreSQL).
    pub seq_scans: Option<i64>,
    /// Index scans (PostgreSQL).
    pub index_scans: Option<i64>,
    /// Whether byte figures are estimates.
    pub sizes_estimated: bool,
}

/// Statistics of a connection pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStats {
    /// Pool name.
    pub name: String,
    /// Node role.
    pub role: NodeRole,
    /// Max size.
    pub max_size: u32,
    /// Open connections.
    pub connections: u32,
    /// Idle connections.
    pub idle_connections: u32,
    /// Connections in use.
    pub in_use_connections: u32,
    /// Checkouts served directly.
    pub gets_direct: u64,
    /// Checkouts that waited.
    pub gets_waited: u64,
    /// Checkouts that timed out.
    pub gets_timed_out: u64,
    /// Total wait time.
    #[serde(with = "secs", rename = "wait_time_seconds")]
    pub wait_time: Duration,
}

/// Replication lag of one replica.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaLag {
    /// Replica name.
    pub name: String,
    /// Healthy at last probe.
    pub healthy: bool,
    /// Lag.
    #[serde(with = "secs::opt", rename = "lag_seconds")]
    pub lag: Option<Duration>,
}

/// What `GetStorageMetrics` returns.
#[derive(Debug, Clone, Serialize)]
pub struct StorageMetrics {
    /// Backend.
    pub backend: Backend,
    /// Database name.
    pub database_name: String,
    /// Database size.
    pub database_size_bytes: i64,
    /// Application tables, largest first.
    pub tables: Vec<TableMetrics>,
    /// Pools.
    pub pools: Vec<PoolStats>,
    /// Replica lag.
    pub replicas: Vec<ReplicaLag>,
    /// When collected.
    pub collected_at: Option<DateTime<Utc>>,
    /// Node that answered.
    pub served_by: NodeRole,
    /// Reclaimable free bytes (SQLite).
    pub free_bytes: Option<i64>,
    /// Notes on estimates.
    pub notes: Vec<String>,
}

impl StorageMetrics {
    /// The metrics of `table`, if present.
    pub fn table(&self, table: &str) -> Option<&TableMetrics> {
        self.tables.iter().find(|t| t.table_name == table)
    }
}

/// A stored snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Id.
    pub id: i64,
    /// Taken at.
    pub taken_at: DateTime<Utc>,
    /// Database size.
    pub database_size_bytes: i64,
    /// Tables captured.
    pub table_count: i32,
}

/// One page of snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotPage {
    /// Snapshots, newest first.
    pub snapshots: Vec<Snapshot>,
    /// Next page token (empty: last page).
    pub next_page_token: String,
}

/// Growth window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum GrowthWindow {
    /// Last 24 hours.
    Day,
    /// Last 7 days.
    #[default]
    Week,
    /// Last 30 days.
    Month,
}

/// Parameters of `GetGrowth`.
#[derive(Debug, Clone, Default)]
pub struct GrowthQuery {
    /// Window.
    pub window: GrowthWindow,
    /// Forecast target size (None: no forecast).
    pub target_size_bytes: Option<i64>,
    /// Table name prefix filter.
    pub table_prefix: Option<String>,
}

/// A fitted trend.
#[derive(Debug, Clone, Serialize)]
pub struct GrowthTrend {
    /// Samples fitted.
    pub sample_count: i32,
    /// Newest size.
    pub current_size_bytes: i64,
    /// Newest rows.
    pub current_rows: i64,
    /// Bytes per day.
    pub bytes_per_day: f64,
    /// Rows per day.
    pub rows_per_day: f64,
    /// Days until the target size.
    pub days_until_target: Option<f64>,
    /// Target already reached.
    pub target_reached: bool,
}

/// Growth of one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableGrowth {
    /// Schema.
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Trend.
    pub trend: GrowthTrend,
}

/// What `GetGrowth` returns.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    /// Window.
    pub window: GrowthWindow,
    /// Window start.
    pub window_start: Option<DateTime<Utc>>,
    /// Database trend.
    pub database: GrowthTrend,
    /// Table trends, fastest growing first.
    pub tables: Vec<TableGrowth>,
}

impl Growth {
    /// The trend of `table`, if present.
    pub fn table(&self, table: &str) -> Option<&GrowthTrend> {
        self.tables.iter().find(|t| t.table_name == table).map(|t| &t.trend)
    }
}

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct File {
    /// Server-generated id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Owner.
    pub owner: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// BLAKE3 of the content (hex).
    pub blake3: String,
    /// SHA-256 (hex), when computed.
    pub sha256: Option<String>,
    /// Application metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// When it was stored.
    pub created_at: Option<DateTime<Utc>>,
    /// The content was found missing from the object store.
    pub lost: bool,
}

/// What to declare when uploading.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Display name (default: the file's name).
    pub name: Option<String>,
    /// MIME type (default: application/octet-stream).
    pub content_type: Option<String>,
    /// Owner.
    pub owner: String,
    /// Application metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Compute SHA-256 before sending and have the server verify it.
    pub sha256: bool,
    /// Declared SHA-256 (hex), when already known.
    pub declared_sha256: Option<String>,
}

/// State of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    /// Accepting bytes.
    Open,
    /// Done.
    Complete,
    /// Failed or expired.
    Failed,
}

/// What `GetUploadStatus` returns.
#[derive(Debug, Clone, Serialize)]
pub struct UploadStatus {
    /// Upload id.
    pub upload_id: String,
    /// State.
    pub state: UploadState,
    /// Bytes durably stored: resume from here.
    pub committed_offset: u64,
    /// The file once complete.
    pub file_id: Option<String>,
    /// Failure reason.
    pub error: Option<String>,
}

/// Filters of `ListFiles`.
#[derive(Debug, Clone, Default)]
pub struct FileQuery {
    /// Page size (0: server default).
    pub page_size: i32,
    /// Page token.
    pub page_token: String,
    /// Owner filter.
    pub owner: Option<String>,
    /// Name prefix filter.
    pub name_prefix: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
}

/// One page of files.
#[derive(Debug, Clone, Serialize)]
pub struct FilePage {
    /// Files, newest first.
    pub files: Vec<File>,
    /// Next page token (empty: last page).
    pub next_page_token: String,
}

/// What `ReconcileObjects` found (and, with repair, did).
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    /// The operation that found it.
    pub operation_id: String,
    /// Objects no catalog row references.
    pub orphan_object_keys: Vec<String>,
    /// Orphans deleted.
    pub deleted_object_keys: Vec<String>,
    /// Content (BLAKE3) whose object is missing.
    pub lost_blake3: Vec<String>,
    /// Files whose content is missing.
    pub lost_file_ids: Vec<String>,
    /// Objects listed.
    pub objects_scanned: i64,
    /// Catalog blobs checked.
    pub blobs_scanned: i64,
}

/// A blob migration's progress.
#[derive(Debug, Clone, Serialize)]
pub struct BlobMigration {
    /// Id.
    pub id: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Rows moved.
    pub rows_done: i64,
    /// Bytes moved.
    pub bytes_done: i64,
    /// Failure.
    pub error: Option<String>,
}

/// What StartBlobMigration reports.
#[derive(Debug, Clone, Serialize)]
pub struct BlobMigrationStart {
    /// The migration (None for a dry run).
    pub migration: Option<BlobMigration>,
    /// Rows still holding a blob.
    pub pending_rows: i64,
    /// Bytes those blobs occupy.
    pub pending_bytes: i64,
}

/// Parameters of StartBlobMigration.
#[derive(Debug, Clone, Default)]
pub struct BlobMigrationSpec {
    /// Schema (default public).
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Key column.
    pub key_column: String,
    /// Blob column.
    pub blob_column: String,
    /// Reference column.
    pub reference_column: String,
    /// Base64 text (else bytea).
    pub base64: bool,
    /// Rows per batch (0: default).
    pub batch_size: i32,
    /// Count only.
    pub dry_run: bool,
    /// Owner of created files.
    pub owner: String,
}
