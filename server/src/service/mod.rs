//! Domain logic per capability. Services take validated domain input and return domain output;
//! they know nothing of protobuf or gRPC.

pub mod admin;
pub mod alerts;
pub mod archive;
pub mod audit;
pub mod backup;
pub mod blob_migration;
pub mod exporter;
pub mod files;
pub mod maintenance;
pub mod metrics;
pub mod operation;
pub mod partitions;
pub mod scheduler;
pub mod tokens;

use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::{config::Config, db, objects::ObjectStore};

/// Errors of the service layer. `grpc::status` maps each to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something invalid; nothing was changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller may not do this (a scoped token naming an owner outside its scope).
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit is reached (WatchAlerts subscribers); retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The named resource does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A resource with that name exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The operation does not apply in the current state or on this backend.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Another run holds the resource (a policy's lease); retry once it ends or its lease lapses.
    #[error("{0}")]
    Busy(String),
    /// Data does not match what was declared (size, checksum); nothing was kept.
    #[error("{0}")]
    DataLoss(String),
    /// A range outside the resource.
    #[error("{0}")]
    OutOfRange(String),
    /// The caller went away or cancelled; work done so far is kept where it can be resumed.
    #[error("{0}")]
    Cancelled(String),
    /// A dependency (the object store) failed; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Another caller's concurrent work won (a newer writer of the same upload); retry to continue
    /// from what it recorded.
    #[error("{0}")]
    Aborted(String),
    /// An upload's stream ended cleanly before its declared size: the bytes so far are kept and it
    /// stays open at `committed`, to be continued.
    #[error("upload {id} holds {committed} of its {declared} declared bytes; continue it at offset {committed}")]
    UploadIncomplete {
        /// The upload's id.
        id: String,
        /// Its committed offset.
        committed: u64,
        /// Its declared size.
        declared: u64,
    },
    /// The database layer failed.
    #[error(transparent)]
    Db(#[from] db::Error),
}

/// Result alias of this layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The database errors this layer's [`Error::Db`] carries, classified by `db/`: the gRPC edge maps
/// them without importing `db/`.
pub use crate::db::{Error as DbError, QueryFailure};

/// Checks the shape of an SQL identifier from a client (63 bytes is PostgreSQL's limit); whether
/// it exists is for the live schema to say.
pub(crate) fn ident(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 63 || s.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!("{what} {s:?} is not a valid identifier")));
    }
    Ok(())
}

/// Names of jobs and alert rules: 1-100 letters, digits, '.', '_', '-', ':'.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 100 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c)) {
        return Err(Error::InvalidArgument(format!(
            "{what} name {name:?} must be 1-100 characters of letters, digits, '.', '_', '-', ':'"
        )));
    }
    Ok(())
}

/// An object-store failure during background work: the store is unavailable for now.
pub(crate) fn store_unavailable(e: crate::objects::Error) -> Error {
    match e {
        // Background work passes `Context::background`: it fired because the server is stopping.
        crate::objects::Error::Cancelled => Error::Cancelled("server stopping".into()),
        e => Error::Unavailable(e.to_string()),
    }
}

/// What every service needs: the database and the server's identity.
#[derive(Clone)]
pub struct Context {
    /// The application database.
    pub db: db::Db,
    /// The object store.
    pub objects: ObjectStore,
    /// File limits from the configuration.
    pub file_limits: files::FileLimits,
    /// Cancelled when the server stops: background work started by RPCs ends with it.
    pub background: tokio_util::sync::CancellationToken,
    /// Cancelled when a stopping server stops accepting calls (`shutdown_delay` after shutdown
    /// began): endless streams (WatchAlerts) end with it, so draining the RPCs in flight does not
    /// wait for them forever.
    pub closing: tokio_util::sync::CancellationToken,
    /// Background work started by RPCs (runs, migrations); awaited at shutdown so each records how
    /// it ended.
    pub tasks: tokio_util::task::TaskTracker,
    /// Effective configuration (holds secrets: never log it whole).
    pub config: std::sync::Arc<Config>,
    /// Wall-clock start time.
    pub started_at: DateTime<Utc>,
    /// Monotonic start time, for uptime.
    pub started: Instant,
    /// Alert changes for WatchAlerts subscribers (fed by `jobs::feed`).
    pub alert_feed: std::sync::Arc<alerts::Feed>,
    /// Starts a job run this instance holds (`jobs::dispatch::start`; see [`scheduler::StartRun`]).
    pub start_run: scheduler::StartRun,
    /// This process among strata instances (`host:pid:random`): owner of the job runs it holds.
    pub instance_id: String,
    /// The long operations this instance runs, so that a cancel asked of it stops one at once.
    pub operations: operation::Running,
    /// The audit trail's writer.
    pub audit: audit::Recorder,
    /// What this instance remembers of API tokens (for `token_cache_ttl`).
    pub tokens: std::sync::Arc<tokens::TokenCache>,
    /// This instance's Prometheus metrics (`/metrics`).
    pub metrics: crate::telemetry::Metrics,
    /// Whether the object store answered its last probe (`admin::probe_objects`); the health of
    /// FileService and ArchiveService follows it.
    pub objects_up: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Context {
    /// The database's time (microsecond precision), for everything written to the catalog: leases,
    /// due times, expiries, cutoffs and the times shown with them. Never this process's wall clock:
    /// other instances compare these values (see `db::Db::now`).
    pub fn now(&self) -> chrono::NaiveDateTime {
        self.db.now_naive()
    }

    /// `run_lease` as a span of the database's time: how long past its last renewal a run, job run
    /// or blob migration stays held.
    pub fn run_lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.run_lease).unwrap_or(chrono::Duration::seconds(30))
    }

    /// [`Context::now`] in UTC.
    pub fn now_utc(&self) -> DateTime<Utc> {
        self.db.now()
    }

    /// A context for a server starting now; `start_run` runs the job runs it claims.
    pub fn new(
        db: db::Db,
        objects: ObjectStore,
        config: Config,
        start_run: scheduler::StartRun,
        metrics: crate::telemetry::Metrics,
    ) -> Self {
        let file_limits = files::FileLimits {
            max_file_size: config.max_file_size,
            allowed_content_types: config.allowed_content_types.clone(),
            upload_expiry: config.upload_expiry,
            always_sha256: config.always_sha256,
        };
        let started_at = db.now();
        Self {
            db,
            objects,
            file_limits,
            background: Default::default(),
            closing: Default::default(),
            tasks: Default::default(),
            config: std::sync::Arc::new(config),
            started_at,
            started: Instant::now(),
            alert_feed: Default::default(),
            start_run,
            instance_id: format!(
                "{}:{}:{}",
                scheduler::host_name(),
                std::process::id(),
                &uuid::Uuid::now_v7().simple().to_string()[24..]
            ),
            operations: Default::default(),
            audit: Default::default(),
            tokens: Default::default(),
            metrics,
            // It opened (S3: HeadBucket answered) just before.
            objects_up: std::sync::Arc::new(tokio::sync::watch::Sender::new(true)),
        }
    }

    /// Spawns background work a call (or a job) started, among [`Context::tasks`], in a span of its
    /// own that carries the call's request id ([`crate::telemetry::task_span`]).
    pub fn spawn<F>(&self, task: &'static str, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        use tracing::Instrument as _;
        self.tasks.spawn(f.instrument(crate::telemetry::task_span(task)))
    }
}
