//! Database access: one [`Db`] for both backends, chosen at run time by URL, with explicit routing
//! (`write`, `read`, `read_prefer_primary`), node health, pool statistics and migrations.
//!
//! Queries are written once and expanded per backend with [`db_run!`], because generic functions
//! over `AsyncConnection` do not compose with Diesel's `as_select()` and backend-specific SQL types.

pub mod alerts;
pub mod archive;
pub mod audit;
pub mod backups;
pub mod blob_migration;
mod clock;
pub mod files;
pub mod maintenance;
pub mod migrations;
pub mod operations;
pub mod partitions;
mod pg_connect;
pub mod scheduler;
pub mod schema;
pub mod snapshots;
mod sqlite;
pub mod stats;
pub mod tokens;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use diesel::ConnectionError;
use diesel_async::{
    AsyncConnection, AsyncPgConnection, SimpleAsyncConnection,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, bb8},
};
use futures::FutureExt;
use tokio::sync::watch;

use crate::telemetry::{Metrics, metrics::NodeLabels};

pub use sqlite::SqliteConn;
type PgPool = bb8::Pool<AsyncPgConnection>;
type SqlitePool = bb8::Pool<SqliteConn>;
type PgPooled = bb8::PooledConnection<'static, AsyncPgConnection>;
type SqlitePooled = bb8::PooledConnection<'static, SqliteConn>;

/// Checking out a replica connection is bounded by this, not by the (longer) acquire timeout:
/// a replica that cannot hand out a connection quickly is treated as unavailable and the read
/// falls back to the primary instead of making the caller wait.
const REPLICA_CHECKOUT_TIMEOUT: Duration = Duration::from_millis(500);

/// A health probe slower than this counts as a failure. Together with the probe interval (500 ms by
/// default) it bounds how long an unreachable primary can still be reported SERVING: under 2 s.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No pooled connection became free within the acquire timeout.
    #[error("no database connection to {node} became available within {timeout:?}")]
    PoolTimeout { node: String, timeout: Duration },
    /// A connection could not be opened.
    #[error("cannot connect to {node}: {message}")]
    Connect { node: String, message: String },
    /// A query failed; `kind` says how, so no layer above has to look inside Diesel's error.
    #[error("{source}")]
    Query {
        /// The class of failure, decided once where the error is converted.
        kind: QueryFailure,
        /// Diesel's error, whose message the caller sees.
        source: diesel::result::Error,
    },
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The URL names no supported backend.
    #[error("unsupported database url {0:?}: expected postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    /// The operation needs a backend feature the connected database lacks.
    #[error("{0}")]
    Unsupported(String),
    /// A catalog column holds a value this version does not know.
    #[error(transparent)]
    UnknownValue(#[from] crate::model::UnknownValue),
}

/// Result alias of this layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a query failed. Decided once, in [`QueryFailure::of`]; the gRPC edge maps each to a status
/// code and the services may branch on it, but nothing above `db/` inspects Diesel's errors or
/// database message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryFailure {
    /// The query expected a row and found none.
    NotFound,
    /// The statement ran past `statement_timeout`.
    Timeout,
    /// SQLite: another connection holds the write lock past the busy timeout.
    Busy,
    /// A constraint rejected the write (unique, foreign key, check, not null).
    Conflict,
    /// A serializable transaction lost to a concurrent one; retrying may succeed.
    Serialization,
    /// A write reached a read-only session (a replica, or a primary demoted under us).
    ReadOnly,
    /// The connection broke mid-query.
    Unavailable,
    /// Anything else: a bug or an unexpected database state.
    Other,
}

impl QueryFailure {
    /// Classifies a Diesel error. PostgreSQL's query cancellation (SQLSTATE 57014, what
    /// `statement_timeout` raises) and SQLite's SQLITE_BUSY reach Diesel as `Unknown` kinds, so
    /// those two are told apart by the database's own message — here only.
    pub fn of(e: &diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind as K, Error as E};
        match e {
            E::NotFound => Self::NotFound,
            E::DatabaseError(K::ClosedConnection, _) => Self::Unavailable,
            E::DatabaseError(K::SerializationFailure, _) => Self::Serialization,
            E::DatabaseError(K::ReadOnlyTransaction, _) => Self::ReadOnly,
            E::DatabaseError(
                K::UniqueViolation | K::ForeignKeyViolation | K::CheckViolation | K::NotNullViolation,
                _,
            ) => Self::Conflict,
            E::DatabaseError(_, info) if info.message().contains("statement timeout") => Self::Timeout,
            E::DatabaseError(_, info) if info.message().contains("database is locked") => Self::Busy,
            _ => Self::Other,
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(source: diesel::result::Error) -> Self {
        Self::Query { kind: QueryFailure::of(&source), source }
    }
}

impl Error {
    /// The query failure class, when this is a query error.
    pub fn query_failure(&self) -> Option<QueryFailure> {
        match self {
            Self::Query { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Connection and pool settings.
#[derive(Debug, Clone)]
pub struct DbSettings {
    /// Primary URL (`postgres://…`) or SQLite URL (`sqlite://PATH`).
    pub url: String,
    /// Replica URLs (PostgreSQL only).
    pub replica_urls: Vec<String>,
    /// Max connections per pool.
    pub pool_max_size: u32,
    /// How long a caller waits for a pooled connection.
    pub acquire_timeout: Duration,
    /// Per-statement timeout (PostgreSQL `statement_timeout`).
    pub statement_timeout: Duration,
    /// Timeout for opening a connection.
    pub connect_timeout: Duration,
    /// Replicas lagging more than this are skipped for reads.
    pub max_replica_lag: Duration,
    /// Where checkout times are recorded (`strata_db_pool_acquire_seconds`, per node).
    pub metrics: Metrics,
}

/// Which backend is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// Role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Primary (or SQLite file).
    Primary,
    /// Replica.
    Replica,
}

/// Last known health of a node, updated by the monitor and by failed checkouts.
#[derive(Debug, Clone, Default)]
pub struct NodeHealth {
    /// Whether the last probe succeeded.
    pub healthy: bool,
    /// Replication lag (replicas).
    pub lag: Option<Duration>,
    /// Last probe error.
    pub last_error: Option<String>,
    /// When last probed.
    pub checked_at: Option<DateTime<Utc>>,
    /// The server that answered the last probe (`host:port`; PostgreSQL): with several hosts in the
    /// URL, the one that accepted it — after a failover, the new primary.
    pub server: Option<String>,
}

/// Snapshot of a pool's state.
#[derive(Debug, Clone)]
pub struct PoolStats {
    /// Node name.
    pub name: String,
    /// Node role.
    pub role: Role,
    /// Max size.
    pub max_size: u32,
    /// Open connections.
    pub connections: u32,
    /// Idle connections.
    pub idle: u32,
    /// Checkouts served at once.
    pub gets_direct: u64,
    /// Checkouts that waited.
    pub gets_waited: u64,
    /// Checkouts that timed out.
    pub gets_timed_out: u64,
    /// Total waiting time.
    pub wait_time: Duration,
}

/// One database node with its pool and health.
struct Node<P> {
    name: String,
    role: Role,
    /// URL with the password removed, for logs and `GetInfo`.
    address: String,
    /// Full URL (may hold a password): used only to open connections, never logged.
    url: String,
    pool: P,
    health: Mutex<NodeHealth>,
    /// Checkouts that our own deadline ended before the pool's did: bb8 counts only the timeouts it
    /// reaches itself, and the two deadlines are equal for the acquire timeout (which one fires
    /// first is a race), shorter for replicas.
    timed_out_outside: AtomicU64,
    /// Checkout times.
    acquire: prometheus_client::metrics::histogram::Histogram,
}

impl<P> Node<P> {
    fn health(&self) -> NodeHealth {
        self.health.lock().expect("health lock").clone()
    }
    fn set_health(&self, h: NodeHealth) {
        *self.health.lock().expect("health lock") = h;
    }
}

/// A view of one node for callers outside this module.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Address without password.
    pub address: String,
    /// Health.
    pub health: NodeHealth,
    /// Whether reads currently go there.
    pub serving_reads: bool,
}

enum Backend {
    Postgres {
        primary: Node<PgPool>,
        replicas: Vec<Node<PgPool>>,
    },
    Sqlite {
        node: Node<SqlitePool>,
        /// Read-only connections whose statements run inline, for [`Db::point_read`]. Not a node of
        /// their own in the pool statistics: a reader is held for one poll of the caller, never
        /// waited for (none idle: the read takes the pooled path).
        readers: SqlitePool,
        path: String,
    },
}

struct Inner {
    backend: Backend,
    settings: DbSettings,
    replica_fallbacks: AtomicU64,
    /// Point reads that ran through the pool instead of inline ([`Db::point_read`]).
    point_read_fallbacks: AtomicU64,
    primary_up: watch::Sender<bool>,
    /// The primary's recent WAL positions (PostgreSQL), for replica lag.
    wal_history: Mutex<stats::WalHistory>,
    /// The database's time, read by each probe of the primary.
    clock: clock::Clock,
}

/// Handle to the application's database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

/// A connection of either backend. Use [`db_run!`] to run a query on it.
#[expect(clippy::large_enum_variant, reason = "short-lived, one per request; boxing buys nothing")]
pub enum Conn {
    /// PostgreSQL connection.
    Pg(PgConn),
    /// SQLite connection.
    Sqlite(SqlitePooled),
}

/// A PostgreSQL session: from the pool, or opened for one piece of long work
/// ([`Db::long_work`]) and closed after it.
#[expect(clippy::large_enum_variant, reason = "as Conn: short-lived, the pooled kind is the common one")]
pub enum PgConn {
    /// From the pool, with the pooled `statement_timeout`.
    Pooled(PgPooled),
    /// A session of its own.
    Own(Box<AsyncPgConnection>),
}

impl std::ops::Deref for PgConn {
    type Target = AsyncPgConnection;

    fn deref(&self) -> &AsyncPgConnection {
        match self {
            Self::Pooled(c) => c,
            Self::Own(c) => c,
        }
    }
}

impl std::ops::DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        match self {
            Self::Pooled(c) => c,
            Self::Own(c) => c,
        }
    }
}

/// Runs the same Diesel body on whichever backend `$conn` is, with the matching catalog schema
/// module (`schema::pg` or `schema::sqlite`) imported as `schema`.
#[macro_export]
macro_rules! db_run {
    ($conn:ident, $body:block) => {
        match $conn {
            $crate::db::Conn::Pg($conn) => {
                #[allow(unused_imports)]
                use $crate::db::schema::pg as schema;
                let $conn: &mut diesel_async::AsyncPgConnection = &mut *$conn;
                $body
            }
            $crate::db::Conn::Sqlite($conn) => {
                #[allow(unused_imports)]
                use $crate::db::schema::sqlite as schema;
                let $conn: &mut $crate::db::SqliteConn = &mut *$conn;
                $body
            }
        }
    };
}

/// Whether a write failed on a unique index: the callers' "exists already" / "busy" answer.
pub(crate) fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(e, diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _))
}

/// Quotes an SQL identifier (doubling embedded quotes). Callers check identifiers against the
/// live schema first; quoting keeps even odd but real names intact.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Removes the password from a URL so it can be shown or logged.
pub fn redact_url(raw: &str) -> String {
    match split_password(raw) {
        Some((url, Some(_))) => {
            let (before, after) = url.split_once("@").map_or((url.as_str(), ""), |(b, a)| (b, a));
            format!("{before}:***@{after}")
        }
        Some((url, None)) => url,
        None => "<unparseable url>".into(),
    }
}

/// Splits the password (as written, percent-encoded) out of a URL's userinfo: the URL without it,
/// and the password. Works on forms that URL parsers refuse, such as libpq's several hosts
/// (`postgres://u:p@h1:5432,h2:5432/db`). None for text that is no URL.
pub fn split_password(raw: &str) -> Option<(String, Option<String>)> {
    let (scheme, rest) = raw.split_once("://")?;
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return Some((raw.to_owned(), None));
    };
    Some(match userinfo.split_once(':') {
        Some((user, password)) => (format!("{scheme}://{user}@{hosts}{tail}"), Some(password.to_owned())),
        None => (raw.to_owned(), None),
    })
}

fn pg_setup(
    statement_timeout: Duration,
    connect_timeout: Duration,
    read_only: bool,
) -> diesel_async::pooled_connection::SetupCallback<AsyncPgConnection> {
    Box::new(move |url| {
        let url = url.to_owned();
        async move {
            let target = pg_connect::PgTarget::parse(&url)?;
            let mut conn = tokio::time::timeout(connect_timeout, target.connect()).await.map_err(|_| {
                ConnectionError::BadConnection(format!("connect timed out after {connect_timeout:?}"))
            })??;
            conn.batch_execute(&pg_session_settings(statement_timeout, read_only))
                .await
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    })
}

/// What every PostgreSQL session strata opens is set up with (pooled, [`Db::long_work`],
/// [`Db::bulk_session`]): the statement timeout; replica sessions are read-only so a routing
/// mistake can never write to a replica (it would fail there anyway, but with a clear error).
fn pg_session_settings(statement_timeout: Duration, read_only: bool) -> String {
    let mut sql =
        format!("SET statement_timeout = {}; SET application_name = 'strata';", statement_timeout.as_millis());
    if read_only {
        sql.push_str("SET default_transaction_read_only = on;");
    }
    sql
}

/// Logs connection errors of a pool (bb8 otherwise drops them: callers only see a timeout).
#[derive(Debug, Clone)]
struct LogErrors {
    node: String,
}

impl<E: std::fmt::Display> ::bb8::ErrorSink<E> for LogErrors {
    fn sink(&self, error: E) {
        tracing::warn!(node = %self.node, error = %error, "database connection failed");
    }
    fn boxed_clone(&self) -> Box<dyn ::bb8::ErrorSink<E>> {
        Box::new(self.clone())
    }
}

fn build_pool<C>(
    node: &str,
    url: &str,
    setup: diesel_async::pooled_connection::SetupCallback<C>,
    recycling: RecyclingMethod<C>,
    s: &DbSettings,
) -> bb8::Pool<C>
where
    C: diesel_async::pooled_connection::PoolableConnection + 'static,
    AsyncDieselConnectionManager<C>: ::bb8::ManageConnection<Error = diesel_async::pooled_connection::PoolError>,
{
    let mut config = ManagerConfig::default();
    config.custom_setup = setup;
    config.recycling_method = recycling;
    let manager = AsyncDieselConnectionManager::<C>::new_with_config(url, config);
    ::bb8::Builder::new()
        .max_size(s.pool_max_size)
        // Open no connection eagerly: the server must start (and report NOT_SERVING) even while a
        // node is down, and connections are created on first use.
        .min_idle(None)
        .connection_timeout(s.acquire_timeout)
        // A failed connect is reported to the waiting caller's timeout, not retried in a tight loop.
        .retry_connection(false)
        .error_sink(Box::new(LogErrors { node: node.to_owned() }))
        .build_unchecked(manager)
}

fn pool_stats<M: ::bb8::ManageConnection>(node: &Node<::bb8::Pool<M>>, max_size: u32) -> PoolStats {
    let st = node.pool.state();
    PoolStats {
        name: node.name.clone(),
        role: node.role,
        max_size,
        connections: st.connections,
        idle: st.idle_connections,
        gets_direct: st.statistics.get_direct,
        gets_waited: st.statistics.get_waited,
        gets_timed_out: st.statistics.get_timed_out + node.timed_out_outside.load(Ordering::Relaxed),
        wait_time: st.statistics.get_wait_time,
    }
}

/// The checkout-time histogram of node `name`.
fn acquire_histogram(
    settings: &DbSettings,
    name: &str,
    role: Role,
) -> prometheus_client::metrics::histogram::Histogram {
    settings.metrics.pools.acquire.get_or_create_owned(&NodeLabels { node: name.to_owned(), role: role.as_str() })
}

impl Role {
    /// `primary` or `replica`, as metrics label nodes.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))
}

impl Db {
    /// Builds the pools. Opens no connection: call [`Db::wait_ready`] to wait for the primary.
    pub async fn connect(settings: DbSettings) -> Result<Self> {
        let backend = if settings.url.starts_with("postgres://") || settings.url.starts_with("postgresql://") {
            let primary = Node {
                name: "primary".into(),
                role: Role::Primary,
                address: redact_url(&settings.url),
                url: settings.url.clone(),
                pool: build_pool(
                    "primary",
                    &settings.url,
                    pg_setup(settings.statement_timeout, settings.connect_timeout, false),
                    // A `SELECT 1` before each checkout: a pooled session whose server restarted or
                    // failed over is found before a caller's query, at one round trip's cost.
                    RecyclingMethod::Verified,
                    &settings,
                ),
                health: Mutex::new(NodeHealth::default()),
                timed_out_outside: AtomicU64::new(0),
                acquire: acquire_histogram(&settings, "primary", Role::Primary),
            };
            let mut replicas = Vec::new();
            for (i, url) in settings.replica_urls.iter().enumerate() {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(Error::UnsupportedUrl(redact_url(url)));
                }
                replicas.push(Node {
                    name: format!("replica-{i}"),
                    role: Role::Replica,
                    address: redact_url(url),
                    url: url.clone(),
                    pool: build_pool(
                        &format!("replica-{i}"),
                        url,
                        pg_setup(settings.statement_timeout, settings.connect_timeout, true),
                        RecyclingMethod::Verified,
                        &settings,
                    ),
                    health: Mutex::new(NodeHealth::default()),
                    timed_out_outside: AtomicU64::new(0),
                    acquire: acquire_histogram(&settings, &format!("replica-{i}"), Role::Replica),
                });
            }
            Backend::Postgres { primary, replicas }
        } else if let Some(path) = sqlite_path(&settings.url) {
            if !settings.replica_urls.is_empty() {
                return Err(Error::Unsupported("replicas are only supported with PostgreSQL".into()));
            }
            if let Some(parent) = std::path::Path::new(path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| Error::Connect {
                    node: "sqlite".into(),
                    message: format!("cannot create {}: {e}", parent.display()),
                })?;
            }
            // Create the (empty) file now: the embedded default needs no setup, and the health probe
            // treats a file that later disappears as a down database rather than recreating it.
            std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::Connect {
                node: "primary".into(),
                message: format!("cannot create {path}: {e}"),
            })?;
            let node = Node {
                name: "primary".into(),
                role: Role::Primary,
                address: settings.url.clone(),
                url: path.to_owned(),
                // No test query at checkout: a connection to a local file does not break the way a
                // network session does, and on SQLite each query crosses to a blocking thread and
                // back — a `SELECT 1` per checkout was a second crossing per read (StatFile gained a
                // third in calls/s without it; docs/benchmarks.md).
                pool: build_pool("primary", path, sqlite::setup(), RecyclingMethod::Fast, &settings),
                health: Mutex::new(NodeHealth::default()),
                timed_out_outside: AtomicU64::new(0),
                acquire: acquire_histogram(&settings, "primary", Role::Primary),
            };
            let readers = build_pool("primary", path, sqlite::reader_setup(), RecyclingMethod::Fast, &settings);
            Backend::Sqlite { node, readers, path: path.to_owned() }
        } else {
            return Err(Error::UnsupportedUrl(redact_url(&settings.url)));
        };
        let (primary_up, _) = watch::channel(false);
        let clock = match backend {
            Backend::Postgres { .. } => clock::Clock::database(),
            Backend::Sqlite { .. } => clock::Clock::local(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                settings,
                replica_fallbacks: AtomicU64::new(0),
                point_read_fallbacks: AtomicU64::new(0),
                primary_up,
                wal_history: Mutex::new(stats::WalHistory::default()),
                clock,
            }),
        })
    }

    /// The database's time now (microsecond precision), for every lease, due time, expiry and
    /// cutoff that other instances may compare: never this process's wall clock (see `db::clock`).
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// [`Db::now`] as the catalog's timestamp type.
    pub fn now_naive(&self) -> chrono::NaiveDateTime {
        self.inner.clock.now_naive()
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        match self.inner.backend {
            Backend::Postgres { .. } => BackendKind::Postgres,
            Backend::Sqlite { .. } => BackendKind::Sqlite,
        }
    }

    /// The settings the pools were built with.
    pub fn settings(&self) -> &DbSettings {
        &self.inner.settings
    }

    /// The SQLite file path, when on SQLite.
    pub fn sqlite_path(&self) -> Option<&str> {
        match &self.inner.backend {
            Backend::Sqlite { path, .. } => Some(path),
            Backend::Postgres { .. } => None,
        }
    }

    /// Reads that fell back from a replica to the primary since start.
    pub fn replica_fallbacks(&self) -> u64 {
        self.inner.replica_fallbacks.load(Ordering::Relaxed)
    }

    /// SQLite point reads that ran through the pool instead of inline since start.
    pub fn point_read_fallbacks(&self) -> u64 {
        self.inner.point_read_fallbacks.load(Ordering::Relaxed)
    }

    /// Follows the primary's reachability (true: up), as seen by the monitor.
    pub fn primary_up(&self) -> watch::Receiver<bool> {
        self.inner.primary_up.subscribe()
    }

    async fn checkout_pg(node: &Node<PgPool>, timeout: Duration) -> Result<PgPooled> {
        let start = Instant::now();
        match tokio::time::timeout(timeout, node.pool.get_owned()).await {
            Ok(Ok(c)) => {
                node.acquire.observe(start.elapsed().as_secs_f64());
                Ok(c)
            }
            Ok(Err(bb8::RunError::User(e))) => Err(Error::Connect { node: node.name.clone(), message: e.to_string() }),
            Ok(Err(bb8::RunError::TimedOut)) => Err(Error::PoolTimeout { node: node.name.clone(), timeout }),
            Err(_) => {
                node.timed_out_outside.fetch_add(1, Ordering::Relaxed);
                Err(Error::PoolTimeout { node: node.name.clone(), timeout })
            }
        }
    }

    async fn checkout_sqlite(node: &Node<SqlitePool>, timeout: Duration) -> Result<SqlitePooled> {
        let start = Instant::now();
        match tokio::time::timeout(timeout, node.pool.get_owned()).await {
            Ok(Ok(c)) => {
                node.acquire.observe(start.elapsed().as_secs_f64());
                Ok(c)
            }
            Ok(Err(bb8::RunError::User(e))) => Err(Error::Connect { node: node.name.clone(), message: e.to_string() }),
            Ok(Err(bb8::RunError::TimedOut)) => Err(Error::PoolTimeout { node: node.name.clone(), timeout }),
            Err(_) => {
                node.timed_out_outside.fetch_add(1, Ordering::Relaxed);
                Err(Error::PoolTimeout { node: node.name.clone(), timeout })
            }
        }
    }

    /// A connection to the primary for work whose length is the data's — VACUUM, counting or
    /// moving a partition's rows — whose statements may run for `timeout` (zero: no limit)
    /// instead of the pooled `statement_timeout`. On PostgreSQL it is a session of its own,
    /// closed when dropped: it holds no pool slot for hours, and no pooled session is ever left
    /// with another timeout (as one would be if the work were dropped before setting it back).
    /// SQLite has no statement timeout: a pooled connection.
    pub async fn long_work(&self, timeout: Duration) -> Result<Conn> {
        match &self.inner.backend {
            Backend::Postgres { primary, .. } => {
                let open = pg_setup(timeout, self.inner.settings.connect_timeout, false);
                let c = open(&primary.url)
                    .await
                    .map_err(|e| Error::Connect { node: primary.name.clone(), message: e.to_string() })?;
                Ok(Conn::Pg(PgConn::Own(Box::new(c))))
            }
            Backend::Sqlite { .. } => self.write().await,
        }
    }

    /// A tokio-postgres session of its own on the primary, set up as the pooled ones, for what
    /// Diesel cannot send: archive restore's `COPY … FROM STDIN`. Closed when dropped. Every
    /// tokio-postgres session strata opens is opened here.
    pub async fn bulk_session(&self) -> Result<tokio_postgres::Client> {
        let Backend::Postgres { primary, .. } = &self.inner.backend else {
            return Err(Error::Unsupported("bulk sessions are PostgreSQL's".into()));
        };
        let settings = &self.inner.settings;
        let fail = |message: String| Error::Connect { node: primary.name.clone(), message };
        let open = async {
            let client = pg_connect::PgTarget::parse(&primary.url)?.client().await?;
            client
                .batch_execute(&pg_session_settings(settings.statement_timeout, false))
                .await
                .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
            Ok::<_, ConnectionError>(client)
        };
        match tokio::time::timeout(settings.connect_timeout, open).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(_) => Err(fail(format!("connect timed out after {:?}", settings.connect_timeout))),
        }
    }

    /// A connection to the primary, for writes.
    pub async fn write(&self) -> Result<Conn> {
        let timeout = self.inner.settings.acquire_timeout;
        match &self.inner.backend {
            Backend::Postgres { primary, .. } => {
                Ok(Conn::Pg(PgConn::Pooled(Self::checkout_pg(primary, timeout).await?)))
            }
            Backend::Sqlite { node, .. } => Ok(Conn::Sqlite(Self::checkout_sqlite(node, timeout).await?)),
        }
    }

    /// A read-only connection to a healthy replica that lags at most `max_replica_lag`; falls back to
    /// the primary (counted in [`Db::replica_fallbacks`]) when none can serve. Returns the role used.
    pub async fn read(&self) -> Result<(Conn, Role)> {
        let timeout = self.inner.settings.acquire_timeout;
        match &self.inner.backend {
            Backend::Sqlite { node, .. } => {
                Ok((Conn::Sqlite(Self::checkout_sqlite(node, timeout).await?), Role::Primary))
            }
            Backend::Postgres { primary, replicas } => {
                for r in replicas.iter().filter(|r| self.replica_usable(r)) {
                    match Self::checkout_pg(r, REPLICA_CHECKOUT_TIMEOUT.min(timeout)).await {
                        Ok(c) => return Ok((Conn::Pg(PgConn::Pooled(c)), Role::Replica)),
                        Err(e) => {
                            tracing::warn!(node = %r.name, error = %e, "replica checkout failed; marking it down");
                            let mut h = r.health();
                            h.healthy = false;
                            h.last_error = Some(e.to_string());
                            r.set_health(h);
                        }
                    }
                }
                if !replicas.is_empty() {
                    self.inner.replica_fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("no replica can serve reads; reading from the primary");
                }
                Ok((Conn::Pg(PgConn::Pooled(Self::checkout_pg(primary, timeout).await?)), Role::Primary))
            }
        }
    }

    /// A connection to the primary for reads that must see the latest writes; falls back to a
    /// replica when the primary cannot hand out a connection.
    pub async fn read_prefer_primary(&self) -> Result<(Conn, Role)> {
        let timeout = self.inner.settings.acquire_timeout;
        match &self.inner.backend {
            Backend::Sqlite { node, .. } => {
                Ok((Conn::Sqlite(Self::checkout_sqlite(node, timeout).await?), Role::Primary))
            }
            Backend::Postgres { primary, replicas } => match Self::checkout_pg(primary, timeout).await {
                Ok(c) => Ok((Conn::Pg(PgConn::Pooled(c)), Role::Primary)),
                Err(primary_err) => {
                    for r in replicas.iter().filter(|r| self.replica_usable(r)) {
                        if let Ok(c) = Self::checkout_pg(r, REPLICA_CHECKOUT_TIMEOUT.min(timeout)).await {
                            tracing::warn!(node = %r.name, error = %primary_err, "primary unavailable; reading from a replica");
                            return Ok((Conn::Pg(PgConn::Pooled(c)), Role::Replica));
                        }
                    }
                    Err(primary_err)
                }
            },
        }
    }

    /// A short read by key — a handful of rows through an index — that must see the latest writes,
    /// routed as [`Db::read_prefer_primary`]. On SQLite it runs inline on the calling worker thread,
    /// through a read-only connection that never waits for a lock: such a read takes microseconds,
    /// several times less than the hand-off to a blocking thread and back that every other query
    /// pays. When no reader is idle, or the database answers busy (another connection recovering
    /// or cleaning up the WAL), the read runs the usual way instead — so `read` may be called
    /// twice, and must only read. Never for scans: they would stall the worker's other calls.
    pub async fn point_read<T, F>(&self, mut read: F) -> Result<T>
    where
        F: for<'c> FnMut(&'c mut Conn) -> futures::future::BoxFuture<'c, Result<T>>,
    {
        if let Backend::Sqlite { readers, .. } = &self.inner.backend {
            // Taken only if one is idle now: bb8 opens more in the background, up to the pool's size.
            if let Some(Ok(reader)) = readers.get_owned().now_or_never() {
                match read(&mut Conn::Sqlite(reader)).await {
                    Err(e) if e.query_failure() == Some(QueryFailure::Busy) => {
                        tracing::debug!(error = %e, "point read busy; reading through the pool");
                    }
                    done => return done,
                }
            }
            self.inner.point_read_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        let (mut conn, _) = self.read_prefer_primary().await?;
        read(&mut conn).await
    }

    fn replica_usable(&self, r: &Node<PgPool>) -> bool {
        let h = r.health();
        h.healthy && h.lag.is_none_or(|lag| lag <= self.inner.settings.max_replica_lag)
    }

    /// Every node with its health and whether it serves reads.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        match &self.inner.backend {
            Backend::Sqlite { node, .. } => vec![NodeInfo {
                name: node.name.clone(),
                role: node.role,
                address: node.address.clone(),
                health: node.health(),
                serving_reads: true,
            }],
            Backend::Postgres { primary, replicas } => {
                let any_replica = replicas.iter().any(|r| self.replica_usable(r));
                let mut v = vec![NodeInfo {
                    name: primary.name.clone(),
                    role: Role::Primary,
                    address: primary.address.clone(),
                    health: primary.health(),
                    serving_reads: !any_replica,
                }];
                v.extend(replicas.iter().map(|r| NodeInfo {
                    name: r.name.clone(),
                    role: Role::Replica,
                    address: r.address.clone(),
                    health: r.health(),
                    serving_reads: self.replica_usable(r),
                }));
                v
            }
        }
    }

    /// Pool statistics of every node.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let max = self.inner.settings.pool_max_size;
        match &self.inner.backend {
            Backend::Sqlite { node, .. } => vec![pool_stats(node, max)],
            Backend::Postgres { primary, replicas } => {
                let mut v = vec![pool_stats(primary, max)];
                v.extend(replicas.iter().map(|r| pool_stats(r, max)));
                v
            }
        }
    }

    /// Probes every node once on a fresh connection (so a busy pool cannot make a healthy node look
    /// down), updates their health and the primary-up signal. Returns the primary's health.
    pub async fn probe_all(&self) -> bool {
        let timeout = self.inner.settings.connect_timeout.min(PROBE_TIMEOUT);
        let primary_ok = match &self.inner.backend {
            Backend::Sqlite { node, path, .. } => {
                // A fresh connection, not a pooled one: a saturated pool is not a down database.
                let r = async {
                    // Opening a missing file would create an empty database and report it healthy.
                    if !std::path::Path::new(path).exists() {
                        return Err(Error::Connect {
                            node: node.name.clone(),
                            message: format!("{path} does not exist"),
                        });
                    }
                    let mut c = SqliteConn::establish(path)
                        .await
                        .map_err(|e| Error::Connect { node: node.name.clone(), message: e.to_string() })?;
                    c.batch_execute("SELECT 1").await?;
                    Ok::<_, Error>(())
                };
                let r = tokio::time::timeout(timeout, r).await.unwrap_or_else(|_| {
                    Err(Error::Connect {
                        node: node.name.clone(),
                        message: format!("probe timed out after {timeout:?}"),
                    })
                });
                record(node, r.map(|_| None), None)
            }
            Backend::Postgres { primary, replicas } => {
                // The primary first: its WAL position is the yardstick for the replicas' lag.
                let p = stats::probe_pg(&primary.name, &primary.url, timeout).await;
                if let Ok(probe) = &p {
                    self.inner.wal_history.lock().expect("wal history lock").push(Instant::now(), probe.lsn);
                    self.inner.clock.anchor(probe.time, probe.at);
                }
                let replayed =
                    futures::future::join_all(replicas.iter().map(|r| stats::probe_pg(&r.name, &r.url, timeout))).await;
                let now = Instant::now();
                let rs: Vec<(Result<Option<Duration>>, Option<String>)> = {
                    let history = self.inner.wal_history.lock().expect("wal history lock");
                    replayed
                        .into_iter()
                        .map(|r| match r {
                            Ok(p) => (Ok(Some(history.lag(p.lsn, now))), Some(p.server)),
                            Err(e) => (Err(e), None),
                        })
                        .collect()
                };
                for (r, (res, server)) in replicas.iter().zip(rs) {
                    let was = self.replica_usable(r);
                    record(r, res, server);
                    let now = self.replica_usable(r);
                    if was && !now {
                        let h = r.health();
                        tracing::warn!(node = %r.name, lag = ?h.lag, error = ?h.last_error, "replica unusable; reads fall back to the primary");
                    } else if !was && now {
                        tracing::info!(node = %r.name, "replica serving reads");
                    }
                }
                let server = p.as_ref().ok().map(|p| p.server.clone());
                record(primary, p.map(|_| None), server)
            }
        };
        let changed = self.inner.primary_up.send_if_modified(|up| {
            let changed = *up != primary_ok;
            *up = primary_ok;
            changed
        });
        if changed {
            if primary_ok {
                tracing::info!("primary database reachable");
            } else {
                tracing::error!("primary database unreachable");
            }
        }
        primary_ok
    }

    /// Times a `SELECT 1` through each node's pool (including checkout).
    pub async fn round_trips(&self) -> Vec<(String, Role, Result<Duration>)> {
        let timeout = self.inner.settings.acquire_timeout;
        match &self.inner.backend {
            Backend::Sqlite { node, .. } => {
                let start = Instant::now();
                let r = async {
                    let mut c = Self::checkout_sqlite(node, timeout).await?;
                    c.batch_execute("SELECT 1").await?;
                    Ok(start.elapsed())
                }
                .await;
                vec![(node.name.clone(), Role::Primary, r)]
            }
            Backend::Postgres { primary, replicas } => {
                let mut out = Vec::new();
                for n in std::iter::once(primary).chain(replicas.iter()) {
                    let start = Instant::now();
                    let r = async {
                        let mut c = Self::checkout_pg(n, timeout).await?;
                        c.batch_execute("SELECT 1").await?;
                        Ok(start.elapsed())
                    }
                    .await;
                    out.push((n.name.clone(), n.role, r));
                }
                out
            }
        }
    }

    /// Runs the embedded migrations of this backend, then checks that this strata understands the
    /// catalog (a newer strata may have upgraded it: see [`migrations::CATALOG_LEVEL`]).
    pub async fn migrate(&self) -> Result<usize> {
        let ran = match &self.inner.backend {
            Backend::Postgres { primary, .. } => migrations::run_postgres(&primary.url).await?,
            Backend::Sqlite { path, .. } => migrations::run_sqlite(path).await?,
        };
        let mut pooled = self.write().await?;
        let conn = &mut pooled;
        let level = db_run!(conn, {
            use diesel::{ExpressionMethods as _, QueryDsl as _};
            use diesel_async::RunQueryDsl as _;
            use schema::catalog_info as c;
            c::table.filter(c::id.eq(1)).select(c::compat_level).first::<i64>(conn).await?
        });
        migrations::check_level(level)?;
        Ok(ran)
    }

    /// Waits until the primary answers, retrying with a bounded backoff for at most `max_wait`.
    pub async fn wait_ready(&self, max_wait: Duration) -> Result<()> {
        let deadline = Instant::now() + max_wait;
        let mut delay = Duration::from_millis(100);
        loop {
            if self.probe_all().await && self.inner.clock.synced() {
                return Ok(());
            }
            let err = self.nodes().into_iter().next().and_then(|n| n.health.last_error).unwrap_or_default();
            if Instant::now() + delay > deadline {
                return Err(Error::Connect {
                    node: "primary".into(),
                    message: format!("not ready after {max_wait:?}: {err}"),
                });
            }
            tracing::warn!(error = %err, retry_in = ?delay, "waiting for the primary database");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// Stores a probe outcome in `node`'s health; returns whether it succeeded.
fn record<P>(node: &Node<P>, r: Result<Option<Duration>>, server: Option<String>) -> bool {
    let now = Some(Utc::now());
    let ok = r.is_ok();
    let before = node.health().server;
    if ok && server.is_some() && before.is_some() && server != before {
        tracing::warn!(node = %node.name, from = ?before, to = ?server, "the node's server changed (failover)");
    }
    node.set_health(match r {
        Ok(lag) => NodeHealth { healthy: true, lag, last_error: None, checked_at: now, server },
        Err(e) => {
            NodeHealth { healthy: false, lag: None, last_error: Some(e.to_string()), checked_at: now, server: before }
        }
    });
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_and_hidden_in_every_url_form() {
        assert_eq!(redact_url("postgres://u:p%2Bw@h:5432/db"), "postgres://u:***@h:5432/db");
        // libpq's several hosts, which URL parsers refuse.
        let multi = "postgres://u:s3cr3t@h1:5432,h2:5433/db?target_session_attrs=read-write";
        assert_eq!(redact_url(multi), "postgres://u:***@h1:5432,h2:5433/db?target_session_attrs=read-write");
        assert_eq!(
            split_password(multi),
            Some(("postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write".into(), Some("s3cr3t".into())))
        );
        // An '@' in the password (escaped or not) and none at all.
        assert_eq!(split_password("postgres://u:a@b@h/db").unwrap().1.as_deref(), Some("a@b"));
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("file:///var/lib/strata"), "file:///var/lib/strata");
        assert_eq!(redact_url("s3://key:secret@minio:9000/bucket"), "s3://key:***@minio:9000/bucket");
        assert_eq!(redact_url("not a url"), "<unparseable url>");
    }

    /// `SELECT v FROM t WHERE k = 1` as a point read.
    async fn point_value(db: &Db) -> Result<String> {
        #[derive(diesel::QueryableByName)]
        struct V {
            #[diesel(sql_type = diesel::sql_types::Text)]
            v: String,
        }
        db.point_read(|c| {
            async move {
                use diesel_async::RunQueryDsl as _;
                let Conn::Sqlite(c) = c else { unreachable!("sqlite") };
                let q = diesel::sql_query("SELECT v FROM t WHERE k = 1");
                Ok(q.get_result::<V>(&mut **c).await?.v)
            }
            .boxed()
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_point_reads_run_inline_read_only_beside_a_writer_and_retry_busy_through_the_pool() {
        use diesel::{Connection as _, connection::SimpleConnection as _};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.db");
        let db = Db::connect(DbSettings {
            url: format!("sqlite://{}", path.display()),
            replica_urls: vec![],
            pool_max_size: 2,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            max_replica_lag: Duration::from_secs(30),
            metrics: Default::default(),
        })
        .await
        .unwrap();
        let Conn::Sqlite(mut w) = db.write().await.unwrap() else { unreachable!("sqlite") };
        w.batch_execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t VALUES (1, 'one');")
            .await
            .unwrap();
        drop(w);

        // The first read finds no idle reader and takes the pool; the readers open in the background.
        assert_eq!(point_value(&db).await.unwrap(), "one");
        assert_eq!(db.point_read_fallbacks(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = db.point_read_fallbacks();
            assert_eq!(point_value(&db).await.unwrap(), "one");
            if db.point_read_fallbacks() == before {
                break;
            }
            assert!(Instant::now() < deadline, "no reader opened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let inline = db.point_read_fallbacks();
        for _ in 0..50 {
            assert_eq!(point_value(&db).await.unwrap(), "one");
        }
        assert_eq!(db.point_read_fallbacks(), inline, "reads by key run inline once a reader is idle");
        // Inline: the statement runs on the thread that polls the read, not on a blocking thread.
        let same_thread = db
            .point_read(|c| {
                async move {
                    let Conn::Sqlite(c) = c else { unreachable!("sqlite") };
                    let caller = std::thread::current().id();
                    Ok(c.spawn_blocking(move |_| Ok(std::thread::current().id() == caller)).await?)
                }
                .boxed()
            })
            .await
            .unwrap();
        assert!(same_thread);
        let (Conn::Sqlite(mut pooled), _) = db.read_prefer_primary().await.unwrap() else { unreachable!("sqlite") };
        let caller = std::thread::current().id();
        assert!(!pooled.spawn_blocking(move |_| Ok(std::thread::current().id() == caller)).await.unwrap());
        drop(pooled);

        // A reader cannot write, whatever the closure tries.
        let write = db
            .point_read(|c| {
                async move {
                    use diesel_async::RunQueryDsl as _;
                    let Conn::Sqlite(c) = c else { unreachable!("sqlite") };
                    Ok(diesel::sql_query("INSERT INTO t VALUES (2, 'two')").execute(&mut **c).await?)
                }
                .boxed()
            })
            .await;
        assert!(write.is_err(), "{write:?}");
        assert_ne!(write.unwrap_err().query_failure(), Some(QueryFailure::Busy));

        // A writer in another process holds an uncommitted change: reads by key neither wait for
        // it nor see it, and still run inline (WAL); once committed, they see it.
        let mut writer = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        writer.batch_execute("BEGIN IMMEDIATE; UPDATE t SET v = 'uno' WHERE k = 1;").unwrap();
        assert_eq!(point_value(&db).await.unwrap(), "one");
        writer.batch_execute("COMMIT").unwrap();
        assert_eq!(point_value(&db).await.unwrap(), "uno");
        assert_eq!(db.point_read_fallbacks(), inline);

        // An open WAL connection is not answered busy in practice (even an exclusive lock cannot be
        // taken while strata's connections are open); SQLite does answer busy to a reader while
        // another connection recovers the WAL. Such an answer sends the read through the pool.
        let calls = AtomicU64::new(0);
        let read = db
            .point_read(|c| {
                let first = calls.fetch_add(1, Ordering::Relaxed) == 0;
                async move {
                    use diesel_async::RunQueryDsl as _;
                    if first {
                        let busy = diesel::result::Error::DatabaseError(
                            diesel::result::DatabaseErrorKind::Unknown,
                            Box::new("database is locked".to_owned()),
                        );
                        return Err(busy.into());
                    }
                    let Conn::Sqlite(c) = c else { unreachable!("sqlite") };
                    Ok(diesel::sql_query("SELECT 1").execute(&mut **c).await?)
                }
                .boxed()
            })
            .await;
        assert!(read.is_ok(), "{read:?}");
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(db.point_read_fallbacks(), inline + 1);
        // The refused write above changed nothing.
        let Conn::Sqlite(mut w) = db.write().await.unwrap() else { unreachable!("sqlite") };
        assert_eq!(
            diesel_async::RunQueryDsl::execute(diesel::sql_query("DELETE FROM t WHERE k = 2"), &mut *w).await.unwrap(),
            0
        );
    }
}
