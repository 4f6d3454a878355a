//! The Prometheus metrics of one server: an explicit registry (no process-wide recorder: tests run
//! several servers in one process, and each must export only its own figures), the families every
//! layer records into, and the two text encodings `/metrics` serves. Every metric is documented in
//! `docs/metrics.md` (a test compares the two).
//!
//! Two kinds of figures:
//! - events this instance saw (calls, object-store requests, bytes moved, runs it finished):
//!   counters and histograms, incremented where they happen; summed over instances they are the
//!   fleet's;
//! - state read from the catalog or the pools at scrape time (table sizes, alerts, the health
//!   score, pool occupancy): gauges set just before each encoding. Catalog gauges are the same on
//!   every instance: aggregate them with `max`, not `sum`.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// A float gauge.
pub type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
/// A family of histograms sharing one set of buckets.
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// gRPC's usual latency buckets (as the Go and Java gRPC interceptors use), seconds.
const RPC_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BUCKETS)
}

/// Pool checkouts: from 50 µs (an idle connection at hand) to the acquire timeout's order (seconds).
fn acquire_histogram() -> Histogram {
    Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
}

/// Object-store requests: a local file's stat (tens of µs) to a large part's upload (tens of s).
fn objects_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0])
}

/// Job runs: a snapshot (ms) to a long archive or VACUUM (hours).
fn runs_histogram() -> Histogram {
    Histogram::new([0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0])
}

/// One RPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// Fully-qualified service name.
    pub grpc_service: &'static str,
    /// Method name.
    pub grpc_method: &'static str,
}

/// One RPC method and how its calls ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcCodeLabels {
    /// As [`RpcLabels`].
    pub grpc_type: &'static str,
    /// As [`RpcLabels`].
    pub grpc_service: &'static str,
    /// As [`RpcLabels`].
    pub grpc_method: &'static str,
    /// The status code's name (`OK`, `NOT_FOUND`, …).
    pub grpc_code: &'static str,
}

/// A database node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// `primary`, `replica1`, …
    pub node: String,
    /// `primary` or `replica`.
    pub role: &'static str,
}

/// An object-store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `put`, `get`, `head`, `delete`, `list`, `write_begin`, `write_part`, `write_finish`, …
    pub operation: &'static str,
}

/// An object-store operation and its outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// As [`OperationLabels`].
    pub operation: &'static str,
    /// `ok`, `not_found`, `cancelled` or `error`.
    pub outcome: &'static str,
}

/// Which way a file moved.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `upload` or `download`.
    pub direction: &'static str,
}

/// A failed transfer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `upload` or `download`.
    pub direction: &'static str,
    /// The status code's name the call ended with (`DATA_LOSS`, `CANCELLED`, …).
    pub reason: &'static str,
}

/// A job and how its run ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// Job name (not `job`: Prometheus gives that label to the scrape job).
    pub job_name: String,
    /// Job kind (`metrics_snapshot`, `archive`, …).
    pub kind: &'static str,
    /// `succeeded`, `failed`, `cancelled`, `interrupted`, …
    pub state: &'static str,
}

/// A job kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Job kind.
    pub kind: &'static str,
}

/// A job.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// Job name (not `job`: Prometheus gives that label to the scrape job).
    pub job_name: String,
}

/// A table of the application's database.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// `schema.table` (PostgreSQL) or the table's name (SQLite).
    pub table: String,
}

/// Alerts of one severity in one state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    /// `firing`, `acknowledged` or `resolved`.
    pub state: &'static str,
}

/// A strata service as the health service names it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Fully-qualified service name.
    pub service: &'static str,
}

/// The build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// strata's version.
    pub version: &'static str,
}

/// RPC metrics, in the names the gRPC ecosystem's interceptors use (go-grpc-prometheus).
pub struct Rpc {
    /// Calls started.
    pub started: Family<RpcLabels, Counter>,
    /// Calls ended, by status code.
    pub handled: Family<RpcCodeLabels, Counter>,
    /// Time from the request's headers to the call's status.
    pub handling: Histograms<RpcLabels>,
    /// Messages received on streaming calls.
    pub msg_received: Family<RpcLabels, Counter>,
    /// Messages sent on streaming calls.
    pub msg_sent: Family<RpcLabels, Counter>,
}

/// Database pools and nodes.
pub struct Pools {
    /// Largest size.
    pub max: Family<NodeLabels, Gauge>,
    /// Open connections.
    pub connections: Family<NodeLabels, Gauge>,
    /// Idle connections.
    pub idle: Family<NodeLabels, Gauge>,
    /// Connections checked out.
    pub in_use: Family<NodeLabels, Gauge>,
    /// Checkouts that waited for a connection (caught up from the pool's own count at scrape).
    pub waits: Family<NodeLabels, Counter>,
    /// Checkouts that timed out (caught up from the pool's own count at scrape).
    pub timeouts: Family<NodeLabels, Counter>,
    /// Checkout time.
    pub acquire: Histograms<NodeLabels>,
    /// 1 while the node answered its last probe.
    pub up: Family<NodeLabels, Gauge>,
    /// 1 while reads go to the node.
    pub serving_reads: Family<NodeLabels, Gauge>,
    /// Replication lag.
    pub replica_lag: Family<NodeLabels, FGauge>,
    /// Reads that fell back from the replicas to the primary (caught up at scrape).
    pub replica_fallbacks: Counter,
    /// SQLite point reads that took the pooled path (caught up at scrape).
    pub point_read_fallbacks: Counter,
}

/// The application's storage, from the latest snapshot.
pub struct Storage {
    /// Whole database size.
    pub database_bytes: Gauge,
    /// When the snapshot was taken (Unix seconds).
    pub snapshot_time: FGauge,
    /// Per table: total bytes (heap, indexes, TOAST).
    pub table_bytes: Family<TableLabels, Gauge>,
    /// Per table: estimated rows.
    pub table_rows: Family<TableLabels, Gauge>,
    /// Per table: dead rows (PostgreSQL).
    pub table_dead_rows: Family<TableLabels, Gauge>,
    /// Tables of the snapshot left out by `metrics_max_tables`.
    pub tables_omitted: Gauge,
    /// Growth of the database, bytes per day (least squares over the growth window).
    pub growth_bytes_per_day: FGauge,
    /// Time until the database's disk is full at that rate (absent without a forecast).
    pub until_full: Family<Vec<(String, String)>, FGauge>,
}

/// Job runs.
pub struct Scheduler {
    /// Runs this instance finished, by job and final state.
    pub runs: Family<RunLabels, Counter>,
    /// Duration of the runs this instance finished, by job kind.
    pub run_seconds: Histograms<KindLabels>,
    /// How far past its due time each enabled job's next occurrence is (0 when not yet due).
    pub next_due_lag: Family<JobLabels, FGauge>,
}

/// Archival by this instance.
pub struct Archive {
    /// Rows moved into segments.
    pub rows: Counter,
    /// Segments written.
    pub segments: Counter,
    /// Bytes of the rows before compression (their JSON lines).
    pub raw_bytes: Counter,
    /// Bytes of the segments as stored.
    pub compressed_bytes: Counter,
}

/// File transfers through this instance.
pub struct Files {
    /// Files whose upload completed.
    pub transferred: Family<DirectionLabels, Counter>,
    /// Bytes received by uploads / sent by downloads.
    pub bytes: Family<DirectionLabels, Counter>,
    /// Transfer calls that failed.
    pub failures: Family<FailureLabels, Counter>,
}

/// Object-store requests of this instance.
pub struct Objects {
    /// Requests by operation and outcome.
    pub requests: Family<OutcomeLabels, Counter>,
    /// Their latency.
    pub seconds: Histograms<OperationLabels>,
    /// 1 while the store answered the last probe.
    pub up: Gauge,
}

/// Alerts and health, from the catalog.
pub struct Alerts {
    /// Alerts by severity and state.
    pub alerts: Family<AlertLabels, Gauge>,
    /// The health score, 0–100 (GetHealthReport).
    pub health_score: Gauge,
    /// Per strata service: 1 while its health status is SERVING.
    pub serving: Family<ServiceLabels, Gauge>,
}

/// Backups, from the catalog.
pub struct Backups {
    /// When the newest successful backup finished (Unix seconds; absent: none yet).
    pub last_success_time: Family<Vec<(String, String)>, FGauge>,
    /// Its size.
    pub last_success_bytes: Family<Vec<(String, String)>, Gauge>,
}

/// Every metric of one server. Cheap to clone; clones share the figures.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// The families, by subject.
pub struct Inner {
    registry: Registry,
    /// Held while a family is refilled (cleared, then set) and while the registry is encoded, so
    /// that an encoding never shows a family half refilled.
    exclusive: std::sync::Mutex<()>,
    /// RPCs.
    pub rpc: Rpc,
    /// Database pools and nodes.
    pub pools: Pools,
    /// Storage of the application's database.
    pub storage: Storage,
    /// Job runs.
    pub scheduler: Scheduler,
    /// Archival.
    pub archive: Archive,
    /// File transfers.
    pub files: Files,
    /// Object-store requests.
    pub objects: Objects,
    /// Alerts and health.
    pub alerts: Alerts,
    /// Backups.
    pub backups: Backups,
    /// Times the catalog could not be read for a scrape (its gauges kept their last values).
    pub scrape_errors: Counter,
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` under `name` and returns it.
fn reg<M: prometheus_client::registry::Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

fn histograms<L>(f: fn() -> Histogram) -> Histograms<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(f)
}

impl Metrics {
    /// Every family, registered and empty.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let rpc = Rpc {
            started: reg(&mut r, "grpc_server_started", "RPCs started on the server", Family::default()),
            handled: reg(
                &mut r,
                "grpc_server_handled",
                "RPCs completed on the server, whatever their status code",
                Family::default(),
            ),
            handling: reg(
                &mut r,
                "grpc_server_handling_seconds",
                "Time from an RPC's request headers to its status, seconds",
                histograms(rpc_histogram),
            ),
            msg_received: reg(
                &mut r,
                "grpc_server_msg_received",
                "Messages received on streaming RPCs",
                Family::default(),
            ),
            msg_sent: reg(&mut r, "grpc_server_msg_sent", "Messages sent on streaming RPCs", Family::default()),
        };
        let pools = Pools {
            max: reg(&mut r, "strata_db_pool_max_connections", "Largest size of the node's pool", Family::default()),
            connections: reg(&mut r, "strata_db_pool_connections", "Open connections of the pool", Family::default()),
            idle: reg(&mut r, "strata_db_pool_idle_connections", "Idle connections of the pool", Family::default()),
            in_use: reg(
                &mut r,
                "strata_db_pool_in_use_connections",
                "Connections of the pool checked out",
                Family::default(),
            ),
            waits: reg(&mut r, "strata_db_pool_waits", "Checkouts that waited for a connection", Family::default()),
            timeouts: reg(&mut r, "strata_db_pool_timeouts", "Checkouts that timed out", Family::default()),
            acquire: reg(
                &mut r,
                "strata_db_pool_acquire_seconds",
                "Time to check a connection out of the pool, seconds",
                histograms(acquire_histogram),
            ),
            up: reg(&mut r, "strata_db_node_up", "1 while the node answered its last probe", Family::default()),
            serving_reads: reg(
                &mut r,
                "strata_db_node_serving_reads",
                "1 while reads are routed to the node",
                Family::default(),
            ),
            replica_lag: reg(
                &mut r,
                "strata_db_replica_lag_seconds",
                "Replication lag of the replica at its last probe, seconds",
                Family::default(),
            ),
            replica_fallbacks: reg(
                &mut r,
                "strata_db_replica_fallbacks",
                "Reads that fell back from the replicas to the primary",
                Counter::default(),
            ),
            point_read_fallbacks: reg(
                &mut r,
                "strata_db_point_read_fallbacks",
                "SQLite reads by key that ran through the pool instead of inline (no idle reader, or busy)",
                Counter::default(),
            ),
        };
        let storage = Storage {
            database_bytes: reg(
                &mut r,
                "strata_storage_database_bytes",
                "Size of the application's database at the latest snapshot, bytes",
                Gauge::default(),
            ),
            snapshot_time: reg(
                &mut r,
                "strata_storage_snapshot_timestamp_seconds",
                "When the latest storage snapshot was taken, Unix seconds",
                FGauge::default(),
            ),
            table_bytes: reg(
                &mut r,
                "strata_storage_table_bytes",
                "Total size of the table (heap, indexes, TOAST) at the latest snapshot, bytes; the \
                 metrics_max_tables largest tables",
                Family::default(),
            ),
            table_rows: reg(
                &mut r,
                "strata_storage_table_rows",
                "Estimated rows of the table at the latest snapshot",
                Family::default(),
            ),
            table_dead_rows: reg(
                &mut r,
                "strata_storage_table_dead_rows",
                "Dead rows of the table at the latest snapshot (PostgreSQL; 0 on SQLite)",
                Family::default(),
            ),
            tables_omitted: reg(
                &mut r,
                "strata_storage_tables_omitted",
                "Tables of the latest snapshot left out of the per-table metrics by metrics_max_tables",
                Gauge::default(),
            ),
            growth_bytes_per_day: reg(
                &mut r,
                "strata_storage_growth_bytes_per_day",
                "Growth of the database over the recent snapshots, bytes per day",
                FGauge::default(),
            ),
            until_full: reg(
                &mut r,
                "strata_storage_until_full_seconds",
                "Time until the database's file system is full at the current growth rate, seconds (absent \
                 while not growing or unknown)",
                Family::default(),
            ),
        };
        let scheduler = Scheduler {
            runs: reg(
                &mut r,
                "strata_scheduler_runs",
                "Job runs this instance finished, by job, kind and final state",
                Family::default(),
            ),
            run_seconds: reg(
                &mut r,
                "strata_scheduler_run_duration_seconds",
                "Duration of the job runs this instance finished, by job kind, seconds",
                histograms(runs_histogram),
            ),
            next_due_lag: reg(
                &mut r,
                "strata_scheduler_next_due_lag_seconds",
                "How long past its due time each enabled job's next occurrence is, seconds (0: not due \
                 yet)",
                Family::default(),
            ),
        };
        let archive = Archive {
            rows: reg(&mut r, "strata_archive_rows", "Rows archived by this instance", Counter::default()),
            segments: reg(&mut r, "strata_archive_segments", "Archive segments written", Counter::default()),
            raw_bytes: reg(
                &mut r,
                "strata_archive_raw_bytes",
                "Bytes of the archived rows before compression",
                Counter::default(),
            ),
            compressed_bytes: reg(
                &mut r,
                "strata_archive_compressed_bytes",
                "Bytes of the archive segments as stored",
                Counter::default(),
            ),
        };
        let files = Files {
            transferred: reg(
                &mut r,
                "strata_files",
                "Files whose upload completed or whose download was sent whole",
                Family::default(),
            ),
            bytes: reg(&mut r, "strata_files_bytes", "File bytes received and sent", Family::default()),
            failures: reg(
                &mut r,
                "strata_files_failures",
                "Transfer calls that failed, by direction and status code",
                Family::default(),
            ),
        };
        let objects = Objects {
            requests: reg(
                &mut r,
                "strata_object_store_requests",
                "Object-store operations by operation and outcome",
                Family::default(),
            ),
            seconds: reg(
                &mut r,
                "strata_object_store_request_seconds",
                "Latency of object-store operations, seconds",
                histograms(objects_histogram),
            ),
            up: reg(
                &mut r,
                "strata_object_store_up",
                "1 while the object store answered the last probe",
                Gauge::default(),
            ),
        };
        let alerts = Alerts {
            alerts: reg(&mut r, "strata_alerts", "Alerts in the catalog by severity and state", Family::default()),
            health_score: reg(&mut r, "strata_health_score", "The health score, 0 to 100", Gauge::default()),
            serving: reg(
                &mut r,
                "strata_service_serving",
                "1 while the service's gRPC health status is SERVING",
                Family::default(),
            ),
        };
        let backups = Backups {
            last_success_time: reg(
                &mut r,
                "strata_backup_last_success_timestamp_seconds",
                "When the newest successful backup finished, Unix seconds (absent: none)",
                Family::default(),
            ),
            last_success_bytes: reg(
                &mut r,
                "strata_backup_last_success_bytes",
                "Size of the newest successful backup, bytes",
                Family::default(),
            ),
        };
        let scrape_errors = reg(
            &mut r,
            "strata_metrics_catalog_errors",
            "Scrapes for which the catalog could not be read (its gauges kept their last values)",
            Counter::default(),
        );
        let build: Family<BuildLabels, Gauge> = reg(&mut r, "strata_build_info", "strata's version", Family::default());
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        Self {
            inner: Arc::new(Inner {
                registry: r,
                exclusive: std::sync::Mutex::new(()),
                rpc,
                pools,
                storage,
                scheduler,
                archive,
                files,
                objects,
                alerts,
                backups,
                scrape_errors,
            }),
        }
    }

    /// Counts one object-store request.
    pub fn object_request(&self, operation: &'static str, outcome: &'static str, took: std::time::Duration) {
        self.objects.requests.get_or_create(&OutcomeLabels { operation, outcome }).inc();
        self.objects.seconds.get_or_create(&OperationLabels { operation }).observe(took.as_secs_f64());
    }

    /// The counter of file bytes moving `direction` (`upload` or `download`), to count them as
    /// they pass.
    pub fn file_bytes(&self, direction: &'static str) -> Counter {
        self.files.bytes.get_or_create_owned(&DirectionLabels { direction })
    }

    /// Counts a file that moved whole (an upload completed, a download sent to its end).
    pub fn file_done(&self, direction: &'static str) {
        self.files.transferred.get_or_create(&DirectionLabels { direction }).inc();
    }

    /// Counts a failed transfer call, by the status code's name it ended with.
    pub fn file_failed(&self, direction: &'static str, reason: &'static str) {
        self.files.failures.get_or_create(&FailureLabels { direction, reason }).inc();
    }

    /// Counts a job run this instance finished.
    pub fn run_finished(&self, job: &str, kind: &'static str, state: &'static str, took: std::time::Duration) {
        self.scheduler.runs.get_or_create(&RunLabels { job_name: job.to_owned(), kind, state }).inc();
        self.scheduler.run_seconds.get_or_create(&KindLabels { kind }).observe(took.as_secs_f64());
    }

    /// Counts an archive batch: its rows, segments and bytes before and after compression.
    pub fn archived(&self, rows: u64, segments: u64, raw_bytes: u64, compressed_bytes: u64) {
        self.archive.rows.inc_by(rows);
        self.archive.segments.inc_by(segments);
        self.archive.raw_bytes.inc_by(raw_bytes);
        self.archive.compressed_bytes.inc_by(compressed_bytes);
    }

    /// Holds off encodings (and other refills) while families are refilled.
    pub fn exclusive(&self) -> std::sync::MutexGuard<'_, ()> {
        self.exclusive.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The exposition, in OpenMetrics text (`openmetrics`) or Prometheus text 0.0.4, with its
    /// content type.
    pub fn encode(&self, openmetrics: bool) -> (String, &'static str) {
        let mut out = String::with_capacity(64 << 10);
        let _exclusive = self.exclusive();
        // Writing to a String cannot fail.
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
            (out, "application/openmetrics-text; version=1.0.0; charset=utf-8")
        } else {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
            (out, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
        }
    }
}

/// A `Family` with no labels, for a figure that may be absent (present: one series).
pub fn no_labels() -> Vec<(String, String)> {
    Vec::new()
}

/// Raises `counter` to `total`, a count kept elsewhere (a pool's statistics) that only grows.
pub fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_encodings_name_the_families() {
        let m = Metrics::new();
        let l = RpcLabels { grpc_type: "unary", grpc_service: "strata.v1.AdminService", grpc_method: "GetInfo" };
        m.rpc.started.get_or_create(&l).inc();
        m.rpc.handling.get_or_create(&l).observe(0.002);
        let (text, ct) = m.encode(false);
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        assert!(text.contains("# TYPE grpc_server_started_total counter"), "{text}");
        assert!(
            text.contains(
                "grpc_server_started_total{grpc_type=\"unary\",grpc_service=\"strata.v1.AdminService\",grpc_method=\"GetInfo\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("grpc_server_handling_seconds_bucket{"), "{text}");
        assert!(text.contains("strata_build_info{version="), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let (om, ct) = m.encode(true);
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE grpc_server_started counter"), "{om}");
    }

    #[test]
    fn every_metric_is_documented() {
        let src = include_str!("metrics.rs");
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md")).unwrap();
        let names: Vec<&str> = src
            .split('"')
            .filter(|s| {
                (s.starts_with("strata_") || s.starts_with("grpc_server_"))
                    && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
            .collect();
        assert!(names.len() > 30, "{names:?}");
        let missing: Vec<_> = names.iter().filter(|n| !docs.contains(&format!("`{n}"))).collect();
        assert!(missing.is_empty(), "metrics missing from docs/metrics.md: {missing:?}");
    }
}
