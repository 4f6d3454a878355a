//! Configuration, layered: built-in defaults → TOML file (`--config`) → `STRATA_*` environment
//! variables → command-line flags. Each setting is declared once, as a field of [`Config`]: its
//! flag, variable and default in `#[arg]`, its TOML key is the field's name (or its `serde`
//! rename), and its doc comment is its `--help` text. clap resolves flag, variable and default;
//! [`Config::load`] puts the file under the first two.
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
//! | `maintenance_timeout`      | `STRATA_MAINTENANCE_TIMEOUT`   | 6h (0: no limit)                     |
//! | `connect_timeout`          | `STRATA_CONNECT_TIMEOUT`       | 3s                                   |
//! | `max_replica_lag`          | `STRATA_MAX_REPLICA_LAG`       | 10s                                  |
//! | `health_check_interval`    | `STRATA_HEALTH_CHECK_INTERVAL` | 500ms                                |
//! | `admin_listen`             | `STRATA_ADMIN_LISTEN`          | `127.0.0.1:9464` (`off`: none)       |
//! | `metrics`                  | `STRATA_METRICS`               | true (`/metrics` on `admin_listen`)  |
//! | `metrics_max_tables`       | `STRATA_METRICS_MAX_TABLES`    | 50 largest tables                    |
//! | `otlp_endpoint`            | `STRATA_OTLP_ENDPOINT`         | none: no traces sent                 |
//! | `shutdown_delay`           | `STRATA_SHUTDOWN_DELAY`        | 5s                                   |
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
//! | `tls_cert`, `tls_key`      | `STRATA_TLS_CERT`, `STRATA_TLS_KEY` | none: plaintext                 |
//! | `tls_client_ca`            | `STRATA_TLS_CLIENT_CA`         | none: no client certificates         |
//! | `tls_client_roles` / `--tls-client-role` | `STRATA_TLS_CLIENT_ROLES` (comma) | none               |
//! | `trusted_proxies` / `--trusted-proxy` | `STRATA_TRUSTED_PROXIES` (comma) | none: no PROXY headers |
//! | `*_file` (database_url, replica_urls, object_store_url, alert_webhook_secret, alert_smtp_url, tokens) | `STRATA_*_FILE` | none |
//! | `reflection`               | `STRATA_REFLECTION`            | `public` (`viewer`, `off`)           |
//! | `log_format`               | `STRATA_LOG_FORMAT`            | `text` (`json` for log shippers)     |
//! | `s3_part_size`             | `STRATA_S3_PART_SIZE`          | 8 MiB (≥ 5 MiB)                      |
//! | `s3_concurrency`           | `STRATA_S3_CONCURRENCY`        | 4 parts in flight per upload         |
//! | `s3_storage_class`         | `STRATA_S3_STORAGE_CLASS`      | the bucket's default                 |
//! | `s3_connect_timeout`       | `STRATA_S3_CONNECT_TIMEOUT`    | 5s                                   |
//! | `s3_read_timeout`          | `STRATA_S3_READ_TIMEOUT`       | 30s                                  |
//! | `s3_attempt_timeout`       | `STRATA_S3_ATTEMPT_TIMEOUT`    | 2m                                   |
//! | `s3_max_attempts`          | `STRATA_S3_MAX_ATTEMPTS`       | 3                                    |
//! | `max_file_size`            | `STRATA_MAX_FILE_SIZE`         | 10 GiB                               |
//! | `allowed_content_types`    | `STRATA_ALLOWED_CONTENT_TYPES` | any                                  |
//! | `upload_expiry`            | `STRATA_UPLOAD_EXPIRY`         | 24h                                  |
//! | `always_sha256`            | `STRATA_ALWAYS_SHA256`         | false                                |
//! | `run_lease`                | `STRATA_RUN_LEASE`             | 30s                                  |
//! | `sqlite_sleep_coef`        | `STRATA_SQLITE_SLEEP_COEF`     | 0.5 × a batch's time (0: no pause)   |
//! | `sqlite_batch_target`      | `STRATA_SQLITE_BATCH_TARGET`   | 25ms (0: batches of `batch_size`)    |
//! | `backup_keep_daily`        | `STRATA_BACKUP_KEEP_DAILY`     | 7                                    |
//! | `backup_keep_weekly`       | `STRATA_BACKUP_KEEP_WEEKLY`    | 4                                    |
//! | `backup_keep_monthly`      | `STRATA_BACKUP_KEEP_MONTHLY`   | 12                                   |
//! | `partition_premake_ranges` | `STRATA_PARTITION_PREMAKE_RANGES` | 4 integer ranges ahead          |
//! | `pg_bin_dir`               | `STRATA_PG_BIN_DIR`            | `pg_dump` / `pg_restore` from `PATH` |
//!
//! `docs/configuration.md` explains each one. Secrets (database passwords, tokens) are never logged:
//! URLs are shown with the password replaced and tokens are configured as SHA-256 hashes only.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    sync::OnceLock,
    time::Duration,
};

use clap::{ArgAction, ArgMatches, FromArgMatches, builder::Resettable, parser::ValueSource};
use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor},
};

/// A role a bearer token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only RPCs.
    Viewer,
    /// Everything that reads or changes the application's storage.
    Operator,
    /// Token management and cluster-wide switches (scheduler start/stop), and everything else.
    Admin,
}

impl Role {
    /// The role's name, as configured and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (expected viewer, operator or admin)")),
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

/// A rule giving clients whose certificate carries a name (mutual TLS) a role: `NAME:ROLE:cn=VALUE`
/// matches the subject's common name, `NAME:ROLE:san=VALUE` any subject alternative name (DNS name,
/// URI, e-mail or IP address). The first rule that matches decides; a verified certificate that no
/// rule matches gets no role (its calls need a token).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRule {
    /// The caller's name in logs and records.
    pub name: String,
    /// Granted role.
    pub role: Role,
    /// The subject common name to match exactly.
    #[serde(default)]
    pub cn: Option<String>,
    /// The subject alternative name to match exactly.
    #[serde(default)]
    pub san: Option<String>,
}

impl FromStr for CertRule {
    type Err = String;
    /// `NAME:ROLE:cn=VALUE` or `NAME:ROLE:san=VALUE` (the value may hold `:`, as URIs do).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.trim().splitn(3, ':');
        let (Some(name), Some(role), Some(m)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("expected NAME:ROLE:cn=VALUE or NAME:ROLE:san=VALUE".into());
        };
        let (cn, san) = match m.split_once('=') {
            Some(("cn", v)) => (Some(v.to_owned()), None),
            Some(("san", v)) => (None, Some(v.to_owned())),
            _ => return Err(format!("{m:?}: expected cn=VALUE or san=VALUE")),
        };
        let rule = CertRule { name: name.to_owned(), role: role.parse()?, cn, san };
        rule.validate()?;
        Ok(rule)
    }
}

impl CertRule {
    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("tls_client_roles: a rule's name is empty".into());
        }
        match (&self.cn, &self.san) {
            (Some(v), None) | (None, Some(v)) if !v.is_empty() => Ok(()),
            _ => Err(format!("tls_client_roles {:?}: set exactly one of cn and san, not empty", self.name)),
        }
    }
}

/// A trusted proxy (`trusted_proxies`): an address, or a network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet {
    addr: IpAddr,
    prefix: u8,
}

impl ProxyNet {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 peer counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for ProxyNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|e| format!("{s:?}: {e}: expected an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for ProxyNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for ProxyNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
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

/// Who may use server reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Reflection {
    /// Anyone who can connect.
    #[default]
    Public,
    /// Callers with the viewer role or above.
    Viewer,
    /// Not served.
    Off,
}

/// An address to listen on, or none: `off` (or an empty value) turns the listener off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub Option<SocketAddr>);

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" | "off" => Ok(Self(None)),
            addr => addr.parse().map(|a| Self(Some(a))).map_err(|e| format!("{e}: expected IP:PORT or off")),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("off"),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(de::Error::custom)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// The effective configuration, and the one declaration of every setting: its flag and
/// `STRATA_*` variable (`#[arg]`), default (`default_value`), TOML key (the field's name, which
/// is also its clap id) and doc comment, which is its `--help`. [`Config::load`] layers them.
#[derive(Debug, Clone, clap::Args, Deserialize)]
// A key the file leaves out keeps its default. Unknown keys are refused by `KnownKeys`.
#[serde(default)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "STRATA_LISTEN", default_value = "127.0.0.1:50051", global = true)]
    pub listen: SocketAddr,
    /// Application database: `postgres://user:pass@host:port/db` (primary) or `sqlite://PATH`.
    // May hold a password: never log it, use `db::redact_url`.
    #[arg(
        long,
        env = "STRATA_DATABASE_URL",
        default_value = "sqlite://./strata-data/strata.db",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,
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
    #[arg(
        long,
        env = "STRATA_OBJECT_STORE_URL",
        default_value = "file://./strata-data/objects",
        hide_env_values = true,
        global = true
    )]
    pub object_store_url: String,
    /// Maximum connections in each pool (primary and every replica).
    // Sixteen connections serve a busy control plane; PostgreSQL's default max_connections
    // (100) leaves room for the application and several strata instances.
    #[arg(long, env = "STRATA_POOL_MAX_SIZE", default_value_t = 16, global = true)]
    pub pool_max_size: u32,
    /// How long a request waits for a pooled connection before failing with UNAVAILABLE.
    // Long enough to ride out a burst, short enough that callers get UNAVAILABLE instead of
    // hanging when the database is saturated.
    #[arg(long, env = "STRATA_POOL_ACQUIRE_TIMEOUT", value_parser = parse_duration, default_value = "5s", global = true)]
    #[serde(with = "humantime_serde")]
    pub pool_acquire_timeout: Duration,
    /// Longest a single SQL statement may run (PostgreSQL `statement_timeout`).
    #[arg(long, env = "STRATA_STATEMENT_TIMEOUT", value_parser = parse_duration, default_value = "30s", global = true)]
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Statement timeout of work whose length is the data's: VACUUM/ANALYZE, counting and
    /// rescuing default-partition rows (a job's own timeout wins when it has one). 0: no limit.
    #[arg(long, env = "STRATA_MAINTENANCE_TIMEOUT", value_parser = parse_duration, default_value = "6h", global = true)]
    #[serde(with = "humantime_serde")]
    pub maintenance_timeout: Duration,
    /// Longest opening one database connection or health probe may take.
    #[arg(long, env = "STRATA_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "3s", global = true)]
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Replicas lagging more than this are skipped for reads (reads go to the primary).
    #[arg(long, env = "STRATA_MAX_REPLICA_LAG", value_parser = parse_duration, default_value = "10s", global = true)]
    #[serde(with = "humantime_serde")]
    pub max_replica_lag: Duration,
    /// How often every database node is probed (drives health status and read routing).
    // Probing twice a second reports a lost primary well within two seconds.
    #[arg(
        long,
        env = "STRATA_HEALTH_CHECK_INTERVAL",
        value_parser = parse_duration,
        default_value = "500ms",
        global = true
    )]
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Address of the HTTP admin listener (`/livez`, `/readyz` for load balancers); `off` or
    /// empty: none.
    // Loopback by default: a probe runs beside the instance (or on a trusted network, given an
    // address there); nothing it serves needs a token.
    #[arg(long, env = "STRATA_ADMIN_LISTEN", default_value = "127.0.0.1:9464", global = true)]
    pub admin_listen: ListenAddr,
    /// Serve Prometheus metrics at `/metrics` on the admin listener and count every call, request
    /// and transfer for them (docs/metrics.md). `false`: no `/metrics`, nothing counted.
    #[arg(long, env = "STRATA_METRICS", action = ArgAction::Set, default_value_t = true, global = true)]
    pub metrics: bool,
    /// The largest tables exported per table by `/metrics` (`strata_storage_table_*`); the rest
    /// are counted in `strata_storage_tables_omitted`.
    // Each table is three series; 50 keeps a scrape small while covering the tables that matter.
    #[arg(long, env = "STRATA_METRICS_MAX_TABLES", default_value_t = 50, global = true)]
    pub metrics_max_tables: usize,
    /// Send traces (a span per call, per background task, per job run) to this OpenTelemetry
    /// collector over OTLP/gRPC, e.g. `http://127.0.0.1:4317`; default: none. The standard
    /// `OTEL_*` variables tune the exporter and sampler (e.g. `OTEL_TRACES_SAMPLER_ARG`).
    #[arg(long, env = "STRATA_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// How long a stopping server keeps serving, its health NOT_SERVING and `/readyz` 503, before
    /// it stops accepting calls: time for load balancers' probes to notice and route elsewhere.
    // A few intervals of a load balancer's usual probe (HAProxy checks every 2 s by default);
    // with `shutdown_grace`, still within the 30 s an orchestrator allows between SIGTERM and
    // SIGKILL.
    #[arg(long, env = "STRATA_SHUTDOWN_DELAY", value_parser = parse_duration, default_value = "5s", global = true)]
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// How long a stopping server lets calls in progress and background runs finish before it
    /// closes the remaining connections (after `shutdown_delay`).
    // Within the usual 30 s an orchestrator allows between SIGTERM and SIGKILL.
    #[arg(long, env = "STRATA_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "10s", global = true)]
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Whether this instance runs scheduled jobs (false: it serves RPCs only). Any number of
    /// instances may: each occurrence of a job runs exactly once among them.
    // `Set`: the flag takes a value (`--run-scheduler false`), as the variable does.
    #[arg(long, env = "STRATA_RUN_SCHEDULER", action = ArgAction::Set, default_value_t = true, global = true)]
    pub run_scheduler: bool,
    /// How often the scheduler looks for due jobs and lapsed runs: the delay between a job's
    /// time and its start is at most this.
    // Once a second: jobs start within a second of their time, and an idle poll is two indexed
    // queries.
    #[arg(
        long,
        env = "STRATA_SCHEDULER_POLL_INTERVAL",
        value_parser = parse_duration,
        default_value = "1s",
        global = true
    )]
    #[serde(with = "humantime_serde")]
    pub scheduler_poll_interval: Duration,
    /// Occurrences missed (no instance up, or the job's previous run still going) are run late
    /// when they are at most this old; older ones are recorded once as `missed`.
    #[arg(long, env = "STRATA_SCHEDULER_CATCH_UP", value_parser = parse_duration, default_value = "10m", global = true)]
    #[serde(with = "humantime_serde")]
    pub scheduler_catch_up: Duration,
    /// Finished runs kept per job (older ones are pruned).
    #[arg(long, env = "STRATA_JOB_HISTORY", default_value_t = 100, global = true)]
    pub job_history: i64,
    /// Resolved alerts kept (the oldest are deleted with their timelines).
    #[arg(long, env = "STRATA_ALERT_HISTORY", default_value_t = 1000, global = true)]
    pub alert_history: i64,
    /// Webhook that receives every alert change as a JSON POST.
    #[arg(long, env = "STRATA_ALERT_WEBHOOK_URL", global = true)]
    pub alert_webhook_url: Option<String>,
    /// Shared secret: webhooks carry `X-Strata-Signature: sha256=HMAC(secret, timestamp.body)`.
    // Never log it.
    #[arg(long, env = "STRATA_ALERT_WEBHOOK_SECRET", hide_env_values = true, global = true)]
    pub alert_webhook_secret: Option<String>,
    /// SMTP server for alert emails: `smtp://[user:pass@]host[:port]` (STARTTLS with
    /// `?tls=required`) or `smtps://…` (TLS).
    // May hold a password: never log it.
    #[arg(long, env = "STRATA_ALERT_SMTP_URL", hide_env_values = true, global = true)]
    pub alert_smtp_url: Option<String>,
    /// Sender of alert emails.
    #[arg(long, env = "STRATA_ALERT_EMAIL_FROM", default_value = "strata@localhost", global = true)]
    pub alert_email_from: String,
    /// Recipient of alert emails; repeat or separate with commas.
    #[arg(long = "alert-email-to", env = "STRATA_ALERT_EMAIL_TO", value_delimiter = ',', global = true)]
    pub alert_email_to: Vec<String>,
    /// Delivery attempts per notification (exponential backoff from 1 s to 5 min) before it is
    /// recorded as failed.
    // 1 + 2 + … + 64 s between the first seven: a receiver down for two minutes still gets every
    // notification.
    #[arg(long, env = "STRATA_ALERT_NOTIFY_ATTEMPTS", default_value_t = 8, global = true)]
    pub alert_notify_attempts: u32,
    /// How long start-up waits for the primary database before giving up.
    #[arg(long, env = "STRATA_STARTUP_TIMEOUT", value_parser = parse_duration, default_value = "60s", global = true)]
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Bootstrap bearer token as `NAME:ROLE:SHA256HEX` (role viewer, operator or admin); repeat or
    /// separate with commas. More are made at run time with TokenService (`strata tokens create`).
    /// Without any token only loopback clients are served (as admin).
    // `[[tokens]]` tables in the file. Only the SHA-256 is configured, so the token itself is
    // never in the configuration.
    #[arg(
        long = "auth-token",
        env = "STRATA_AUTH_TOKENS",
        value_name = "AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    pub tokens: Vec<TokenSpec>,
    /// PEM certificate chain of the gRPC port: with `tls_key`, the port speaks TLS only (h2 over
    /// TLS 1.2/1.3). Reloaded when the file changes or on SIGHUP.
    #[arg(long, env = "STRATA_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[arg(long, env = "STRATA_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// PEM certificates of the CA(s) that sign client certificates: with it, every client must
    /// present one (mutual TLS), and `tls_client_roles` map them to roles.
    #[arg(long, env = "STRATA_TLS_CLIENT_CA", global = true)]
    pub tls_client_ca: Option<PathBuf>,
    /// Role of clients by their certificate: `NAME:ROLE:cn=VALUE` or `NAME:ROLE:san=VALUE`; repeat
    /// or separate with commas. The first matching rule decides.
    // `[[tls_client_roles]]` tables in the file (`name`, `role`, and `cn` or `san`).
    #[arg(long = "tls-client-role", env = "STRATA_TLS_CLIENT_ROLES", value_delimiter = ',', global = true)]
    pub tls_client_roles: Vec<CertRule>,
    /// Load balancers allowed to speak for their clients with the PROXY protocol version 2
    /// (HAProxy `send-proxy-v2`): addresses or CIDR networks; repeat or separate with commas.
    /// Connections from them must start with the header; a header from anyone else is refused.
    /// With any set, loopback peers are no longer trusted without credentials.
    #[arg(long = "trusted-proxy", env = "STRATA_TRUSTED_PROXIES", value_delimiter = ',', global = true)]
    pub trusted_proxies: Vec<ProxyNet>,
    /// Log format.
    #[arg(long, env = "STRATA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// A file holding `database_url` (instead of the setting, whose value would show in the
    /// process list or environment); it takes precedence over `database_url`.
    #[arg(long, env = "STRATA_DATABASE_URL_FILE", global = true)]
    pub database_url_file: Option<PathBuf>,
    /// A file holding the replica URLs, one per line (`#` comments and empty lines skipped); they
    /// replace `replica_urls`.
    #[arg(long, env = "STRATA_REPLICA_URLS_FILE", global = true)]
    pub replica_urls_file: Option<PathBuf>,
    /// A file holding `object_store_url` (S3 keys in its userinfo); it takes precedence.
    #[arg(long, env = "STRATA_OBJECT_STORE_URL_FILE", global = true)]
    pub object_store_url_file: Option<PathBuf>,
    /// A file holding `alert_webhook_secret`; it takes precedence.
    #[arg(long, env = "STRATA_ALERT_WEBHOOK_SECRET_FILE", global = true)]
    pub alert_webhook_secret_file: Option<PathBuf>,
    /// A file holding `alert_smtp_url` (its password in the userinfo); it takes precedence.
    #[arg(long, env = "STRATA_ALERT_SMTP_URL_FILE", global = true)]
    pub alert_smtp_url_file: Option<PathBuf>,
    /// A file of more tokens, `NAME:ROLE:SHA256HEX` one per line (`#` comments and empty lines
    /// skipped), added to `tokens`.
    #[arg(long, env = "STRATA_AUTH_TOKENS_FILE", global = true)]
    pub tokens_file: Option<PathBuf>,
    /// Server reflection (what grpcurl and other tools use to learn the API): `public` (no token),
    /// `viewer` (needs a token or certificate of any role), or `off`.
    #[arg(long, env = "STRATA_REFLECTION", value_enum, default_value_t = Reflection::Public, global = true)]
    pub reflection: Reflection,
    /// How long an instance trusts what it read of an API token (TokenService): a revocation or an
    /// expiry reaches every instance within this time. `0` reads the catalog on every call.
    #[arg(long, env = "STRATA_TOKEN_CACHE_TTL", value_parser = parse_duration, default_value = "2s", global = true)]
    #[serde(with = "humantime_serde")]
    pub token_cache_ttl: Duration,
    /// Record every mutating call and every denied call (caller, how it was recognised, client
    /// address, method, resource, outcome) in the catalog (`ListAuditEvents`) and as a log line
    /// (target `strata::audit`).
    #[arg(long, env = "STRATA_AUDIT", action = ArgAction::Set, default_value_t = true, global = true)]
    pub audit: bool,
    /// Calls per second each caller may make (a token bucket per token name, certificate rule, or
    /// client address when refused); over it, RESOURCE_EXHAUSTED with the delay to wait. `0`: no
    /// limit. Health checks are never limited.
    #[arg(long, env = "STRATA_RATE_LIMIT", default_value_t = 2000, global = true)]
    pub rate_limit: u32,
    /// Calls a caller may make at once above `rate_limit` after a quiet spell (the bucket's size).
    #[arg(long, env = "STRATA_RATE_BURST", default_value_t = 4000, global = true)]
    pub rate_burst: u32,
    /// Calls (and streams) in progress per caller at most; one more is refused with
    /// RESOURCE_EXHAUSTED at once, never queued. `0`: no cap.
    #[arg(long, env = "STRATA_MAX_CALLS_PER_CALLER", default_value_t = 256, global = true)]
    pub max_calls_per_caller: u32,
    /// WatchAlerts subscribers per instance at most; one more is RESOURCE_EXHAUSTED.
    #[arg(long, env = "STRATA_MAX_ALERT_WATCHERS", default_value_t = 1000, global = true)]
    pub max_alert_watchers: u32,
    /// HTTP/2 streams (calls) open at once on one connection at most, as the server announces to
    /// clients.
    #[arg(long, env = "STRATA_MAX_STREAMS_PER_CONNECTION", default_value_t = 1024, global = true)]
    pub max_streams_per_connection: u32,
    /// The deadline of a unary call whose client sets none (`grpc-timeout`): past it the call is
    /// answered DEADLINE_EXCEEDED (long work runs as operations and runs, never in one call).
    /// `0`: none.
    #[arg(long, env = "STRATA_UNARY_DEADLINE", value_parser = parse_duration, default_value = "60s", global = true)]
    #[serde(with = "humantime_serde")]
    pub unary_deadline: Duration,
    /// How long audit events are kept in the catalog.
    #[arg(long, env = "STRATA_AUDIT_RETENTION", value_parser = parse_duration, default_value = "90d", global = true)]
    #[serde(with = "humantime_serde")]
    pub audit_retention: Duration,
    /// S3 multipart part size in bytes (at least 5 MiB); larger parts for files above 10 000 parts.
    // 8 MiB parts: big enough for throughput, small enough that a dropped stream loses little
    // (an incomplete part is sent again) and memory stays at (4 + 1) × 8 MiB per upload.
    #[arg(long, env = "STRATA_S3_PART_SIZE", default_value_t = 8 << 20, global = true)]
    pub s3_part_size: u64,
    /// Parts of one upload sent to S3 concurrently.
    #[arg(long, env = "STRATA_S3_CONCURRENCY", default_value_t = 4, global = true)]
    pub s3_concurrency: usize,
    /// S3 storage class of new objects (e.g. STANDARD_IA); default: the bucket's.
    #[arg(long, env = "STRATA_S3_STORAGE_CLASS", global = true)]
    pub s3_storage_class: Option<String>,
    /// Time to open a connection to S3 before the attempt fails (and is retried).
    #[arg(long, env = "STRATA_S3_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "5s", global = true)]
    #[serde(with = "humantime_serde")]
    pub s3_connect_timeout: Duration,
    /// Longest wait for S3's response bytes before the attempt fails (and is retried).
    #[arg(long, env = "STRATA_S3_READ_TIMEOUT", value_parser = parse_duration, default_value = "30s", global = true)]
    #[serde(with = "humantime_serde")]
    pub s3_read_timeout: Duration,
    /// Longest one attempt of one S3 call may take, sending a part or segment included.
    #[arg(long, env = "STRATA_S3_ATTEMPT_TIMEOUT", value_parser = parse_duration, default_value = "2m", global = true)]
    #[serde(with = "humantime_serde")]
    pub s3_attempt_timeout: Duration,
    /// Attempts per S3 call, the first included, before it fails.
    #[arg(long, env = "STRATA_S3_MAX_ATTEMPTS", default_value_t = 3, global = true)]
    pub s3_max_attempts: u32,
    /// Largest file accepted, in bytes.
    #[arg(long, env = "STRATA_MAX_FILE_SIZE", default_value_t = 10 << 30, global = true)]
    pub max_file_size: u64,
    /// Accepted MIME types (`image/*` wildcards allowed); repeat or separate with commas. Default: any.
    #[arg(long = "allowed-content-type", env = "STRATA_ALLOWED_CONTENT_TYPES", value_delimiter = ',', global = true)]
    pub allowed_content_types: Vec<String>,
    /// Open uploads expire this long after their last recorded progress (or creation).
    #[arg(long, env = "STRATA_UPLOAD_EXPIRY", value_parser = parse_duration, default_value = "24h", global = true)]
    #[serde(with = "humantime_serde")]
    pub upload_expiry: Duration,
    /// Compute and store SHA-256 of every file, not only when the client declares one.
    #[arg(long, env = "STRATA_ALWAYS_SHA256", action = ArgAction::Set, default_value_t = false, global = true)]
    pub always_sha256: bool,
    /// Lease of background work on the database's clock: a run (archive, restore, retention) holds
    /// its policy this long past its last batch, a job run and a blob migration this long past
    /// their last renewal (every third of it), an upload stream its upload this long past its last
    /// recorded progress (every second); work whose instance died is taken over by another
    /// instance once its lease lapses.
    #[arg(long, env = "STRATA_RUN_LEASE", value_parser = parse_duration, default_value = "30s", global = true)]
    #[serde(with = "humantime_serde")]
    pub run_lease: Duration,
    /// On SQLite, the pause after each archive or purge batch, as a multiple of the time the
    /// batch held the write lock, so that the application's writers waiting for that lock get it
    /// in between (as pt-archiver's `--sleep-coef`); never shorter than SQLite's busy handler then
    /// sleeps between two attempts. 0: no pause. PostgreSQL runs do not pause: a batch there locks
    /// only its own rows.
    // 0.5 (with `sqlite_batch_target`): an application inserting during a run waits tens of ms
    // (p99 ≈ 40 ms) instead of seconds, and the run keeps ≈ 0.6 of its unpaused rows/s
    // (docs/benchmarks.md, "Fair sharing of SQLite during archival"). With 25 ms batches the
    // pause is mostly the busy handler's sleep (15 ms), not the coefficient.
    #[arg(long, env = "STRATA_SQLITE_SLEEP_COEF", default_value_t = 0.5, global = true)]
    pub sqlite_sleep_coef: f64,
    /// On SQLite, an archive or purge batch that held the write lock longer than this makes the
    /// next one smaller (down to 500 rows, or batch_size when smaller) and a quicker one lets it
    /// grow back; an application's write waits about as long as a batch holds the lock. 0:
    /// batches of batch_size.
    // 25 ms: SQLite's busy handler retries 18 and 33 ms into a wait, so a writer waits ≈ 33 ms
    // behind a batch of up to 33 ms but 53 ms behind a longer one; 20 ms cost a fifth more of the
    // run's speed for no lower p99, 30–35 ms and unbounded batches (≈ 45 ms) gave p99 55–80 ms.
    #[arg(
        long,
        env = "STRATA_SQLITE_BATCH_TARGET",
        value_parser = parse_duration,
        default_value = "25ms",
        global = true
    )]
    #[serde(with = "humantime_serde")]
    pub sqlite_batch_target: Duration,
    /// Ranges EnsurePartitions creates beyond the one holding an integer-range table's largest key
    /// when the request's `premake` is 0 (0–1000).
    // Four ranges ahead: ensured regularly, inserts stay off the default partition unless four
    // ranges fill between two calls (then widen the ranges or ask for more).
    #[arg(long, env = "STRATA_PARTITION_PREMAKE_RANGES", default_value_t = 4, global = true)]
    pub partition_premake_ranges: u32,
    /// Backup rotation.
    // Read from the same table by `Config::load`: serde's `flatten` would buffer the values and
    // lose where in the file a wrong one is.
    #[command(flatten)]
    #[serde(skip)]
    pub backup_retention: BackupRetention,
    /// Directory holding `pg_dump` and `pg_restore` (default: found on PATH). Their major version
    /// must be at least the server's.
    #[arg(long, env = "STRATA_PG_BIN_DIR", global = true)]
    pub pg_bin_dir: Option<PathBuf>,
}

/// How many backups rotation keeps: the `backup_keep_*` settings (`service::backup` rotates by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args, Deserialize)]
// The file's other keys are `Config`'s.
#[serde(default)]
pub struct BackupRetention {
    /// Backup rotation keeps the newest backup of each of this many recent days.
    #[arg(
        id = "backup_keep_daily",
        long = "backup-keep-daily",
        env = "STRATA_BACKUP_KEEP_DAILY",
        value_name = "BACKUP_KEEP_DAILY",
        default_value_t = 7,
        global = true
    )]
    #[serde(rename = "backup_keep_daily")]
    pub daily: usize,
    /// ... of this many recent ISO weeks.
    #[arg(
        id = "backup_keep_weekly",
        long = "backup-keep-weekly",
        env = "STRATA_BACKUP_KEEP_WEEKLY",
        value_name = "BACKUP_KEEP_WEEKLY",
        default_value_t = 4,
        global = true
    )]
    #[serde(rename = "backup_keep_weekly")]
    pub weekly: usize,
    /// ... and of this many recent months.
    #[arg(
        id = "backup_keep_monthly",
        long = "backup-keep-monthly",
        env = "STRATA_BACKUP_KEEP_MONTHLY",
        value_name = "BACKUP_KEEP_MONTHLY",
        default_value_t = 12,
        global = true
    )]
    #[serde(rename = "backup_keep_monthly")]
    pub monthly: usize,
}

/// The built-in defaults: every `default_value` of `T`'s arguments, without the environment.
fn builtin<T: clap::Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("strata-server")).mut_args(|a| a.env(Resettable::Reset));
    let matches = cmd.try_get_matches_from(["strata-server"]).expect("no setting is required");
    T::from_arg_matches(&matches).expect("every default parses")
}

impl Default for Config {
    fn default() -> Self {
        builtin()
    }
}

impl Default for BackupRetention {
    fn default() -> Self {
        builtin()
    }
}

/// The `--config` flag, on its own: the file is read by [`Config::load`], not a setting itself.
#[derive(clap::Args)]
struct ConfigFile {
    /// TOML configuration file; its keys are the long flag names with `_` instead of `-`.
    #[arg(long, env = "STRATA_CONFIG", global = true)]
    config: Option<PathBuf>,
}

/// What the command line says about the configuration: the TOML file to read, and the settings
/// given by flag or `STRATA_*` environment variable (clap already let a flag win over its
/// variable). Every setting of [`Config`] is a flag of it.
#[derive(Clone)]
pub struct ConfigArgs {
    /// TOML configuration file.
    pub config: Option<PathBuf>,
    /// Flags and variables as clap matched them, less the defaults: those are the lowest layer,
    /// under the file, so they are left to [`Config::load`].
    given: ArgMatches,
}

impl std::fmt::Debug for ConfigArgs {
    /// Names only: values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigArgs")
            .field("config", &self.config)
            .field("given", &self.given.ids().map(|id| id.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl clap::Args for ConfigArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        <Config as clap::Args>::augment_args(ConfigFile::augment_args(cmd))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let config = ConfigFile::from_arg_matches(matches)?.config;
        let mut given = matches.clone();
        given.remove_subcommand();
        for id in matches.ids() {
            if matches.value_source(id.as_str()) < Some(ValueSource::EnvVariable) {
                given.try_clear_id(id.as_str()).expect("an id of these matches");
            }
        }
        Ok(Self { config, given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The TOML keys: the settings' clap ids, which are their field names (or, in a nested group,
/// their serde renames).
fn toml_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<&'static [&'static str]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let cmd = <Config as clap::Args>::augment_args(clap::Command::new("strata-server"));
        let keys: Vec<&'static str> = cmd.get_arguments().map(|a| &*a.get_id().as_str().to_owned().leak()).collect();
        keys.leak()
    })
}

/// A file whose keys are all settings. Its own pass, because `Config` and [`BackupRetention`] each
/// read only their keys from the table; the error is serde's (`unknown field …, expected one of
/// …`), at the key's place in the file.
struct KnownKeys;

impl<'de> Deserialize<'de> for KnownKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(KnownKeys)
    }
}

impl<'de> Visitor<'de> for KnownKeys {
    type Value = KnownKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table of settings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_key_seed(KnownKey)?.is_some() {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(self)
    }
}

/// One key of the file, refused unless it is a setting.
struct KnownKey;

impl<'de> DeserializeSeed<'de> for KnownKey {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let key = String::deserialize(deserializer)?;
        if toml_keys().contains(&key.as_str()) { Ok(()) } else { Err(de::Error::unknown_field(&key, toml_keys())) }
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
    /// Built-in defaults, then the TOML file named by `args.config`, then the settings `args`
    /// were given by `STRATA_*` environment variable or flag.
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let mut config = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                let parse_error =
                    |e: toml::de::Error| ConfigError::Parse { path: path.clone(), message: e.to_string() };
                toml::from_str::<KnownKeys>(&text).map_err(parse_error)?;
                let mut config = toml::from_str::<Config>(&text).map_err(parse_error)?;
                config.backup_retention = toml::from_str(&text).map_err(parse_error)?;
                config
            }
            None => Config::default(),
        };
        // Only what was given: clap's own defaults would otherwise undo the file.
        config.update_from_arg_matches(&args.given).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// The `*_file` settings' contents into the settings they hold.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        let read =
            |p: &PathBuf| std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.clone(), source });
        // One value: the file without its trailing newline (editors and `echo` add one).
        let one = |p: &PathBuf| -> Result<String, ConfigError> {
            let text = read(p)?;
            let value = text.trim_end_matches(['\n', '\r']).to_owned();
            if value.is_empty() {
                return Err(ConfigError::Invalid(format!("{} is empty", p.display())));
            }
            Ok(value)
        };
        let lines = |p: &PathBuf| -> Result<Vec<String>, ConfigError> {
            Ok(read(p)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect())
        };
        if let Some(p) = &self.database_url_file {
            self.database_url = one(p)?;
        }
        if let Some(p) = &self.replica_urls_file {
            self.replica_urls = lines(p)?;
        }
        if let Some(p) = &self.object_store_url_file {
            self.object_store_url = one(p)?;
        }
        if let Some(p) = &self.alert_webhook_secret_file {
            self.alert_webhook_secret = Some(one(p)?);
        }
        if let Some(p) = &self.alert_smtp_url_file {
            self.alert_smtp_url = Some(one(p)?);
        }
        if let Some(p) = &self.tokens_file {
            for (n, line) in lines(p)?.iter().enumerate() {
                // The line's number only: the line holds a hash, still not for logs.
                let token =
                    line.parse().map_err(|e| ConfigError::Invalid(format!("{} line {}: {e}", p.display(), n + 1)))?;
                self.tokens.push(token);
            }
        }
        Ok(())
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
            ("s3_connect_timeout", self.s3_connect_timeout),
            ("s3_read_timeout", self.s3_read_timeout),
            ("s3_attempt_timeout", self.s3_attempt_timeout),
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
        if self.s3_max_attempts == 0 {
            return Err(ConfigError::Invalid("s3_max_attempts must be at least 1".into()));
        }
        if self.partition_premake_ranges > 1000 {
            return Err(ConfigError::Invalid("partition_premake_ranges must be 0–1000".into()));
        }
        if !(0.0..=10.0).contains(&self.sqlite_sleep_coef) {
            return Err(ConfigError::Invalid("sqlite_sleep_coef must be between 0 and 10".into()));
        }
        if self.s3_concurrency == 0 {
            return Err(ConfigError::Invalid("s3_concurrency must be at least 1".into()));
        }
        for t in &self.tokens {
            t.validate().map_err(ConfigError::Invalid)?;
        }
        for r in &self.tls_client_roles {
            r.validate().map_err(ConfigError::Invalid)?;
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid("tls_cert and tls_key go together: set both or neither".into()));
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::Invalid("tls_client_ca needs tls_cert and tls_key (mutual TLS)".into()));
        }
        if !self.tls_client_roles.is_empty() && self.tls_client_ca.is_none() {
            return Err(ConfigError::Invalid(
                "tls_client_roles need tls_client_ca (clients present certificates only with mutual TLS)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
