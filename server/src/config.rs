//! Configuration, layered: built-in defaults → TOML file (`--config`) → `STRATA_*` environment
//! variables → command-line flags. Each setting's doc comment below is its `--help` text.
//!
//! | flag / TOML key            | env                            | default                              |
//! |----------------------------|--------------------------------|--------------------------------------|
//! | `--config`                 | `STRATA_CONFIG`                | none                                 |
//! | `listen`                   | `STRATA_LISTEN`                | `127.0.0.1:50051`                    |
//! | `database_url`             | `STRATA_DATABASE_URL`          | `sqlite://./strata-data/strata.db`   |
//! | `replica_urls`             | `STRATA_REPLICA_URLS` (comma)  | none                                 |
//! | `object_store_url`         | `STRATA_OBJECT_STORE_URL`      | `file://./strata-data/objects`       |
//! | `pool_max_size`            | `STRATA_POOL_MAX_SIZE`         | 16                                   |
//! | `pool_acquire_timeout`     | `STRATA_POOL_ACQUIRE_TIMEOUT`  | 5s                                   |
//! | `statement_timeout`        | `STRATA_STATEMENT_TIMEOUT`     | 30s                                  |
//! | `connect_timeout`          | `STRATA_CONNECT_TIMEOUT`       | 3s                                   |
//! | `max_replica_lag`          | `STRATA_MAX_REPLICA_LAG`       | 10s                                  |
//! | `health_check_interval`    | `STRATA_HEALTH_CHECK_INTERVAL` | 500ms                                |
//! | `shutdown_grace`           | `STRATA_SHUTDOWN_GRACE`        | 10s                                  |
//! | `run_scheduler`            | `STRATA_RUN_SCHEDULER`         | true                                 |
//! | `scheduler_poll_interval`  | `STRATA_SCHEDULER_POLL_INTERVAL` | 1s                                 |
//! | `scheduler_catch_up`       | `STRATA_SCHEDULER_CATCH_UP`    | 10m                                  |
//! | `job_history`              | `STRATA_JOB_HISTORY`           | 100 runs per job                     |
//! | `alert_history`            | `STRATA_ALERT_HISTORY`         | 1000 resolved alerts                 |
//! | `alert_webhook_url`        | `STRATA_ALERT_WEBHOOK_URL`     | none                                 |
//! | `alert_webhook_secret`     | `STRATA_ALERT_WEBHOOK_SECRET`  | none (unsigned)                      |
//! | `alert_smtp_url`           | `STRATA_ALERT_SMTP_URL`        | none                                 |
//! | `alert_email_from`         | `STRATA_ALERT_EMAIL_FROM`      | `strata@localhost`                   |
//! | `alert_email_to`           | `STRATA_ALERT_EMAIL_TO` (comma) | none                                |
//! | `alert_notify_attempts`    | `STRATA_ALERT_NOTIFY_ATTEMPTS` | 8                                    |
//! | `startup_timeout`          | `STRATA_STARTUP_TIMEOUT`       | 60s                                  |
//! | `tokens` / `--auth-token`  | `STRATA_AUTH_TOKENS` (comma)   | none: loopback clients only          |
//! | `log_format`               | `STRATA_LOG_FORMAT`            | `text` (`json` for log shippers)     |
//! | `s3_part_size`             | `STRATA_S3_PART_SIZE`          | 8 MiB (≥ 5 MiB)                      |
//! | `s3_concurrency`           | `STRATA_S3_CONCURRENCY`        | 4 parts in flight per upload         |
//! | `s3_storage_class`         | `STRATA_S3_STORAGE_CLASS`      | the bucket's default                 |
//! | `max_file_size`            | `STRATA_MAX_FILE_SIZE`         | 10 GiB                               |
//! | `allowed_content_types`    | `STRATA_ALLOWED_CONTENT_TYPES` | any                                  |
//! | `upload_expiry`            | `STRATA_UPLOAD_EXPIRY`         | 24h                                  |
//! | `always_sha256`            | `STRATA_ALWAYS_SHA256`         | false                                |
//! | `run_lease`                | `STRATA_RUN_LEASE`             | 30s                                  |
//! | `backup_keep_daily`        | `STRATA_BACKUP_KEEP_DAILY`     | 7                                    |
//! | `backup_keep_weekly`       | `STRATA_BACKUP_KEEP_WEEKLY`    | 4                                    |
//! | `backup_keep_monthly`      | `STRATA_BACKUP_KEEP_MONTHLY`   | 12                                   |
//! | `pg_bin_dir`               | `STRATA_PG_BIN_DIR`            | `pg_dump` / `pg_restore` from `PATH` |
//!
//! `docs/configuration.md` explains each one. Secrets (database passwords, tokens) are never logged:
//! URLs are shown with the password replaced and tokens are configured as SHA-256 hashes only.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;

/// A role a bearer token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only RPCs.
    Viewer,
    /// Everything.
    Operator,
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => Err(format!("unknown role {other:?} (expected viewer or operator)")),
        }
    }
}

/// A configured token: its name (for logs), role and the hex SHA-256 of the secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// Name shown in logs instead of the token.
    pub name: String,
    /// Granted role.
    pub role: Role,
    /// Lower-case hex SHA-256 of the token (`strata-server hash-token` prints it).
    pub sha256: String,
}

impl FromStr for TokenSpec {
    type Err = String;
    /// `NAME:ROLE:SHA256HEX`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let [name, role, hash] = parts[..] else {
            return Err("expected NAME:ROLE:SHA256HEX".into());
        };
        let spec = TokenSpec { name: name.to_owned(), role: role.parse()?, sha256: hash.to_ascii_lowercase() };
        spec.validate()?;
        Ok(spec)
    }
}

impl TokenSpec {
    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("token name is empty".into());
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "token {:?}: sha256 must be 64 hex digits (use `strata-server hash-token`)",
                self.name
            ));
        }
        Ok(())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Settings from flags and `STRATA_*` environment variables; unset ones fall through to the TOML
/// file and then to the defaults.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file; its keys are the long flag names with `_` instead of `-`.
    #[arg(long, env = "STRATA_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address the gRPC server listens on.
    #[arg(long, env = "STRATA_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,
    /// Application database: `postgres://user:pass@host:port/db` (primary) or `sqlite://PATH`.
    #[arg(long, env = "STRATA_DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// PostgreSQL read replica URL; repeat the flag or separate with commas.
    #[arg(
        long = "replica-url",
        env = "STRATA_REPLICA_URLS",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    pub replica_urls: Vec<String>,
    /// Object store: `file://DIR` or `s3://BUCKET?endpoint=…`.
    #[arg(long, env = "STRATA_OBJECT_STORE_URL", hide_env_values = true, global = true)]
    pub object_store_url: Option<String>,
    /// Maximum connections in each pool (primary and every replica).
    #[arg(long, env = "STRATA_POOL_MAX_SIZE", global = true)]
    pub pool_max_size: Option<u32>,
    /// How long a request waits for a pooled connection before failing with UNAVAILABLE.
    #[arg(long, env = "STRATA_POOL_ACQUIRE_TIMEOUT", value_parser = parse_duration, global = true)]
    pub pool_acquire_timeout: Option<Duration>,
    /// Longest a single SQL statement may run (PostgreSQL `statement_timeout`).
    #[arg(long, env = "STRATA_STATEMENT_TIMEOUT", value_parser = parse_duration, global = true)]
    pub statement_timeout: Option<Duration>,
    /// Longest opening one database connection or health probe may take.
    #[arg(long, env = "STRATA_CONNECT_TIMEOUT", value_parser = parse_duration, global = true)]
    pub connect_timeout: Option<Duration>,
    /// Replicas lagging more than this are skipped for reads (reads go to the primary).
    #[arg(long, env = "STRATA_MAX_REPLICA_LAG", value_parser = parse_duration, global = true)]
    pub max_replica_lag: Option<Duration>,
    /// How often every database node is probed (drives health status and read routing).
    #[arg(long, env = "STRATA_HEALTH_CHECK_INTERVAL", value_parser = parse_duration, global = true)]
    pub health_check_interval: Option<Duration>,
    /// How long a stopping server lets calls in progress and background runs finish before it
    /// closes the remaining connections.
    #[arg(long, env = "STRATA_SHUTDOWN_GRACE", value_parser = parse_duration, global = true)]
    pub shutdown_grace: Option<Duration>,
    /// Whether this instance runs scheduled jobs (false: it serves RPCs only). Any number of
    /// instances may: each occurrence of a job runs exactly once among them.
    #[arg(long, env = "STRATA_RUN_SCHEDULER", global = true)]
    pub run_scheduler: Option<bool>,
    /// How often the scheduler looks for due jobs and lapsed runs: the delay between a job's
    /// time and its start is at most this.
    #[arg(long, env = "STRATA_SCHEDULER_POLL_INTERVAL", value_parser = parse_duration, global = true)]
    pub scheduler_poll_interval: Option<Duration>,
    /// Occurrences missed (no instance up, or the job's previous run still going) are run late
    /// when they are at most this old; older ones are recorded once as `missed`.
    #[arg(long, env = "STRATA_SCHEDULER_CATCH_UP", value_parser = parse_duration, global = true)]
    pub scheduler_catch_up: Option<Duration>,
    /// Finished runs kept per job (older ones are pruned).
    #[arg(long, env = "STRATA_JOB_HISTORY", global = true)]
    pub job_history: Option<i64>,
    /// Resolved alerts kept (the oldest are deleted with their timelines).
    #[arg(long, env = "STRATA_ALERT_HISTORY", global = true)]
    pub alert_history: Option<i64>,
    /// Webhook that receives every alert change as a JSON POST.
    #[arg(long, env = "STRATA_ALERT_WEBHOOK_URL", global = true)]
    pub alert_webhook_url: Option<String>,
    /// Shared secret: webhooks carry `X-Strata-Signature: sha256=HMAC(secret, timestamp.body)`.
    #[arg(long, env = "STRATA_ALERT_WEBHOOK_SECRET", hide_env_values = true, global = true)]
    pub alert_webhook_secret: Option<String>,
    /// SMTP server for alert emails: `smtp://[user:pass@]host[:port]` (STARTTLS with
    /// `?tls=required`) or `smtps://…` (TLS).
    #[arg(long, env = "STRATA_ALERT_SMTP_URL", hide_env_values = true, global = true)]
    pub alert_smtp_url: Option<String>,
    /// Sender of alert emails.
    #[arg(long, env = "STRATA_ALERT_EMAIL_FROM", global = true)]
    pub alert_email_from: Option<String>,
    /// Recipient of alert emails; repeat or separate with commas.
    #[arg(long = "alert-email-to", env = "STRATA_ALERT_EMAIL_TO", value_delimiter = ',', global = true)]
    pub alert_email_to: Vec<String>,
    /// Delivery attempts per notification (exponential backoff from 1 s to 5 min) before it is
    /// recorded as failed.
    #[arg(long, env = "STRATA_ALERT_NOTIFY_ATTEMPTS", global = true)]
    pub alert_notify_attempts: Option<u32>,
    /// How long start-up waits for the primary database before giving up.
    #[arg(long, env = "STRATA_STARTUP_TIMEOUT", value_parser = parse_duration, global = true)]
    pub startup_timeout: Option<Duration>,
    /// Bearer token as `NAME:ROLE:SHA256HEX` (role viewer or operator); repeat or separate with
    /// commas. Without any token only loopback clients are served.
    #[arg(
        long = "auth-token",
        env = "STRATA_AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    pub auth_tokens: Vec<TokenSpec>,
    /// Log format.
    #[arg(long, env = "STRATA_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// S3 multipart part size in bytes (at least 5 MiB); larger parts for files above 10 000 parts.
    #[arg(long, env = "STRATA_S3_PART_SIZE", global = true)]
    pub s3_part_size: Option<u64>,
    /// Parts of one upload sent to S3 concurrently.
    #[arg(long, env = "STRATA_S3_CONCURRENCY", global = true)]
    pub s3_concurrency: Option<usize>,
    /// S3 storage class of new objects (e.g. STANDARD_IA); default: the bucket's.
    #[arg(long, env = "STRATA_S3_STORAGE_CLASS", global = true)]
    pub s3_storage_class: Option<String>,
    /// Largest file accepted, in bytes.
    #[arg(long, env = "STRATA_MAX_FILE_SIZE", global = true)]
    pub max_file_size: Option<u64>,
    /// Accepted MIME types (`image/*` wildcards allowed); repeat or separate with commas. Default: any.
    #[arg(long = "allowed-content-type", env = "STRATA_ALLOWED_CONTENT_TYPES", value_delimiter = ',', global = true)]
    pub allowed_content_types: Vec<String>,
    /// Open uploads expire this long after they were created.
    #[arg(long, env = "STRATA_UPLOAD_EXPIRY", value_parser = parse_duration, global = true)]
    pub upload_expiry: Option<Duration>,
    /// Compute and store SHA-256 of every file, not only when the client declares one.
    #[arg(long, env = "STRATA_ALWAYS_SHA256", global = true)]
    pub always_sha256: Option<bool>,
    /// A run (archive, restore, retention) holds its policy this long past its last batch; a run
    /// whose server died is taken over by the next run after it expires.
    #[arg(long, env = "STRATA_RUN_LEASE", value_parser = parse_duration, global = true)]
    pub run_lease: Option<Duration>,
    /// Backup rotation keeps the newest backup of each of this many recent days.
    #[arg(long, env = "STRATA_BACKUP_KEEP_DAILY", global = true)]
    pub backup_keep_daily: Option<usize>,
    /// ... of this many recent ISO weeks.
    #[arg(long, env = "STRATA_BACKUP_KEEP_WEEKLY", global = true)]
    pub backup_keep_weekly: Option<usize>,
    /// ... and of this many recent months.
    #[arg(long, env = "STRATA_BACKUP_KEEP_MONTHLY", global = true)]
    pub backup_keep_monthly: Option<usize>,
    /// Directory holding `pg_dump` and `pg_restore` (default: found on PATH). Their major version
    /// must be at least the server's.
    #[arg(long, env = "STRATA_PG_BIN_DIR", global = true)]
    pub pg_bin_dir: Option<std::path::PathBuf>,
}

/// The TOML file: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    replica_urls: Option<Vec<String>>,
    object_store_url: Option<String>,
    pool_max_size: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pool_acquire_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    statement_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_replica_lag: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    health_check_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    run_scheduler: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    scheduler_poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    scheduler_catch_up: Option<Duration>,
    job_history: Option<i64>,
    alert_history: Option<i64>,
    alert_webhook_url: Option<String>,
    alert_webhook_secret: Option<String>,
    alert_smtp_url: Option<String>,
    alert_email_from: Option<String>,
    alert_email_to: Option<Vec<String>>,
    alert_notify_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    startup_timeout: Option<Duration>,
    tokens: Option<Vec<TokenSpec>>,
    log_format: Option<LogFormat>,
    s3_part_size: Option<u64>,
    s3_concurrency: Option<usize>,
    s3_storage_class: Option<String>,
    max_file_size: Option<u64>,
    allowed_content_types: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    upload_expiry: Option<Duration>,
    always_sha256: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    run_lease: Option<Duration>,
    backup_keep_daily: Option<usize>,
    backup_keep_weekly: Option<usize>,
    backup_keep_monthly: Option<usize>,
    pg_bin_dir: Option<std::path::PathBuf>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Primary / SQLite URL (may hold a password: never log it, use `db::redact_url`).
    pub database_url: String,
    /// Replica URLs.
    pub replica_urls: Vec<String>,
    /// Object store URL.
    pub object_store_url: String,
    /// Max connections per pool.
    pub pool_max_size: u32,
    /// Pool acquire timeout.
    pub pool_acquire_timeout: Duration,
    /// Statement timeout.
    pub statement_timeout: Duration,
    /// Connect / probe timeout.
    pub connect_timeout: Duration,
    /// Max replica lag for reads.
    pub max_replica_lag: Duration,
    /// Probe interval.
    pub health_check_interval: Duration,
    /// What shutdown waits for calls and runs in progress.
    pub shutdown_grace: Duration,
    /// This instance runs scheduled jobs.
    pub run_scheduler: bool,
    /// Scheduler poll interval.
    pub scheduler_poll_interval: Duration,
    /// How late a missed occurrence may still run.
    pub scheduler_catch_up: Duration,
    /// Finished runs kept per job.
    pub job_history: i64,
    /// Resolved alerts kept.
    pub alert_history: i64,
    /// Alert webhook.
    pub alert_webhook_url: Option<String>,
    /// Webhook signing secret (never log it).
    pub alert_webhook_secret: Option<String>,
    /// SMTP URL (may hold a password: never log it).
    pub alert_smtp_url: Option<String>,
    /// Email sender.
    pub alert_email_from: String,
    /// Email recipients.
    pub alert_email_to: Vec<String>,
    /// Delivery attempts per notification.
    pub alert_notify_attempts: u32,
    /// Start-up wait for the primary.
    pub startup_timeout: Duration,
    /// Configured tokens.
    pub tokens: Vec<TokenSpec>,
    /// Log format.
    pub log_format: LogFormat,
    /// S3 part size.
    pub s3_part_size: u64,
    /// S3 parts in flight per upload.
    pub s3_concurrency: usize,
    /// S3 storage class.
    pub s3_storage_class: Option<String>,
    /// Largest file.
    pub max_file_size: u64,
    /// Accepted MIME types (empty: any).
    pub allowed_content_types: Vec<String>,
    /// Open upload lifetime.
    pub upload_expiry: Duration,
    /// SHA-256 for every file.
    pub always_sha256: bool,
    /// Lease of a run on its policy.
    pub run_lease: Duration,
    /// Backup rotation.
    pub backup_retention: crate::service::backup::Retention,
    /// Where pg_dump and pg_restore are (None: PATH).
    pub pg_bin_dir: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: "sqlite://./strata-data/strata.db".into(),
            replica_urls: Vec::new(),
            object_store_url: "file://./strata-data/objects".into(),
            // Sixteen connections serve a busy control plane; PostgreSQL's default max_connections
            // (100) leaves room for the application and several strata instances.
            pool_max_size: 16,
            // Long enough to ride out a burst, short enough that callers get UNAVAILABLE instead of
            // hanging when the database is saturated.
            pool_acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            max_replica_lag: Duration::from_secs(10),
            // Probing twice a second reports a lost primary well within two seconds.
            health_check_interval: Duration::from_millis(500),
            // Within the usual 30 s an orchestrator allows between SIGTERM and SIGKILL.
            shutdown_grace: Duration::from_secs(10),
            run_scheduler: true,
            // Once a second: jobs start within a second of their time, and an idle poll is two
            // indexed queries.
            scheduler_poll_interval: Duration::from_secs(1),
            scheduler_catch_up: Duration::from_secs(600),
            job_history: 100,
            alert_history: 1000,
            alert_webhook_url: None,
            alert_webhook_secret: None,
            alert_smtp_url: None,
            alert_email_from: "strata@localhost".into(),
            alert_email_to: Vec::new(),
            // 1 + 2 + … + 64 s between the first seven: a receiver down for two minutes still
            // gets every notification.
            alert_notify_attempts: 8,
            startup_timeout: Duration::from_secs(60),
            tokens: Vec::new(),
            log_format: LogFormat::Text,
            // 8 MiB parts: big enough for throughput, small enough that a dropped stream loses
            // little (an incomplete part is sent again) and memory stays at (4 + 1) × 8 MiB per upload.
            s3_part_size: 8 << 20,
            s3_concurrency: 4,
            s3_storage_class: None,
            max_file_size: 10 << 30,
            allowed_content_types: Vec::new(),
            upload_expiry: Duration::from_secs(24 * 3600),
            always_sha256: false,
            run_lease: Duration::from_secs(30),
            backup_retention: crate::service::backup::Retention { daily: 7, weekly: 4, monthly: 12 },
            pg_bin_dir: None,
        }
    }
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range.
    #[error("invalid setting {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the TOML file named by `args.config`, then `args` (flags and env).
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::Parse { path: path.clone(), message: e.to_string() })?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let pick = |flag: Option<Duration>, file: Option<Duration>, def: Duration| flag.or(file).unwrap_or(def);
        let c = Config {
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            database_url: args.database_url.clone().or(file.database_url).unwrap_or(d.database_url),
            replica_urls: if args.replica_urls.is_empty() {
                file.replica_urls.unwrap_or_default()
            } else {
                args.replica_urls.clone()
            },
            object_store_url: args.object_store_url.clone().or(file.object_store_url).unwrap_or(d.object_store_url),
            pool_max_size: args.pool_max_size.or(file.pool_max_size).unwrap_or(d.pool_max_size),
            pool_acquire_timeout: pick(args.pool_acquire_timeout, file.pool_acquire_timeout, d.pool_acquire_timeout),
            statement_timeout: pick(args.statement_timeout, file.statement_timeout, d.statement_timeout),
            connect_timeout: pick(args.connect_timeout, file.connect_timeout, d.connect_timeout),
            max_replica_lag: pick(args.max_replica_lag, file.max_replica_lag, d.max_replica_lag),
            health_check_interval: pick(
                args.health_check_interval,
                file.health_check_interval,
                d.health_check_interval,
            ),
            shutdown_grace: pick(args.shutdown_grace, file.shutdown_grace, d.shutdown_grace),
            run_scheduler: args.run_scheduler.or(file.run_scheduler).unwrap_or(d.run_scheduler),
            scheduler_poll_interval: pick(
                args.scheduler_poll_interval,
                file.scheduler_poll_interval,
                d.scheduler_poll_interval,
            ),
            scheduler_catch_up: pick(args.scheduler_catch_up, file.scheduler_catch_up, d.scheduler_catch_up),
            job_history: args.job_history.or(file.job_history).unwrap_or(d.job_history),
            alert_history: args.alert_history.or(file.alert_history).unwrap_or(d.alert_history),
            alert_webhook_url: args.alert_webhook_url.clone().or(file.alert_webhook_url),
            alert_webhook_secret: args.alert_webhook_secret.clone().or(file.alert_webhook_secret),
            alert_smtp_url: args.alert_smtp_url.clone().or(file.alert_smtp_url),
            alert_email_from: args.alert_email_from.clone().or(file.alert_email_from).unwrap_or(d.alert_email_from),
            alert_email_to: if args.alert_email_to.is_empty() {
                file.alert_email_to.unwrap_or_default()
            } else {
                args.alert_email_to.clone()
            },
            alert_notify_attempts: args
                .alert_notify_attempts
                .or(file.alert_notify_attempts)
                .unwrap_or(d.alert_notify_attempts),
            startup_timeout: pick(args.startup_timeout, file.startup_timeout, d.startup_timeout),
            tokens: if args.auth_tokens.is_empty() {
                file.tokens.unwrap_or_default()
            } else {
                args.auth_tokens.clone()
            },
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            s3_part_size: args.s3_part_size.or(file.s3_part_size).unwrap_or(d.s3_part_size),
            s3_concurrency: args.s3_concurrency.or(file.s3_concurrency).unwrap_or(d.s3_concurrency),
            s3_storage_class: args.s3_storage_class.clone().or(file.s3_storage_class),
            max_file_size: args.max_file_size.or(file.max_file_size).unwrap_or(d.max_file_size),
            allowed_content_types: if args.allowed_content_types.is_empty() {
                file.allowed_content_types.unwrap_or_default()
            } else {
                args.allowed_content_types.clone()
            },
            upload_expiry: pick(args.upload_expiry, file.upload_expiry, d.upload_expiry),
            always_sha256: args.always_sha256.or(file.always_sha256).unwrap_or(d.always_sha256),
            run_lease: pick(args.run_lease, file.run_lease, d.run_lease),
            backup_retention: crate::service::backup::Retention {
                daily: args.backup_keep_daily.or(file.backup_keep_daily).unwrap_or(d.backup_retention.daily),
                weekly: args.backup_keep_weekly.or(file.backup_keep_weekly).unwrap_or(d.backup_retention.weekly),
                monthly: args.backup_keep_monthly.or(file.backup_keep_monthly).unwrap_or(d.backup_retention.monthly),
            },
            pg_bin_dir: args.pg_bin_dir.clone().or(file.pg_bin_dir),
        };
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.pool_max_size == 0 {
            return Err(ConfigError::Invalid("pool_max_size must be at least 1".into()));
        }
        for (name, d) in [
            ("pool_acquire_timeout", self.pool_acquire_timeout),
            ("connect_timeout", self.connect_timeout),
            ("health_check_interval", self.health_check_interval),
            ("statement_timeout", self.statement_timeout),
            ("upload_expiry", self.upload_expiry),
            ("run_lease", self.run_lease),
            ("scheduler_poll_interval", self.scheduler_poll_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!("{name} must be greater than zero")));
            }
        }
        if self.s3_part_size < crate::objects::MIN_PART_SIZE {
            return Err(ConfigError::Invalid(format!(
                "s3_part_size must be at least {}",
                crate::objects::MIN_PART_SIZE
            )));
        }
        if self.alert_history < 1 {
            return Err(ConfigError::Invalid("alert_history must be at least 1".into()));
        }
        if self.alert_notify_attempts < 1 {
            return Err(ConfigError::Invalid("alert_notify_attempts must be at least 1".into()));
        }
        if let Some(u) = &self.alert_webhook_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError::Invalid("alert_webhook_url must be an http:// or https:// URL".into()));
        }
        if self.job_history < 1 {
            return Err(ConfigError::Invalid("job_history must be at least 1".into()));
        }
        if self.s3_concurrency == 0 {
            return Err(ConfigError::Invalid("s3_concurrency must be at least 1".into()));
        }
        for t in &self.tokens {
            t.validate().map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(
            &path,
            r#"
            listen = "127.0.0.1:6000"
            pool_max_size = 4
            statement_timeout = "10s"
            [[tokens]]
            name = "ops"
            role = "operator"
            sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            "#,
        )
        .unwrap();
        // The flag wins over the file, the file over the default.
        let args = ConfigArgs { config: Some(path), pool_max_size: Some(8), ..Default::default() };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.pool_max_size, 8);
        assert_eq!(c.statement_timeout, Duration::from_secs(10));
        assert_eq!(c.pool_acquire_timeout, Duration::from_secs(5));
        assert_eq!(c.tokens.len(), 1);
        assert_eq!(c.tokens[0].role, Role::Operator);
        assert_eq!(c.database_url, "sqlite://./strata-data/strata.db");
    }

    #[test]
    fn rejects_unknown_keys_and_bad_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, "listne = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(&ConfigArgs { config: Some(path), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
        assert!("ops:admin:abc".parse::<TokenSpec>().unwrap_err().contains("unknown role"));
        assert!("ops:viewer:abc".parse::<TokenSpec>().unwrap_err().contains("64 hex"));
        let ok: TokenSpec =
            "ops:viewer:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08".parse().unwrap();
        assert_eq!(ok.sha256, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    }

    #[test]
    fn example_file_parses_to_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.example.toml");
        let c = Config::load(&ConfigArgs { config: Some(path), ..Default::default() }).unwrap();
        let d = Config::default();
        assert_eq!((c.listen, c.pool_max_size, c.statement_timeout), (d.listen, d.pool_max_size, d.statement_timeout));
        assert_eq!(c.scheduler_poll_interval, d.scheduler_poll_interval);
    }

    #[test]
    fn zero_pool_is_rejected() {
        let err = Config::load(&ConfigArgs { pool_max_size: Some(0), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("pool_max_size"));
    }
}
