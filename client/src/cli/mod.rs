//! The `strata` command line, as a library so tests can drive it in-process.
//!
//! One module per command group; [`run`] parses nothing and only dispatches. Output helpers
//! shared by every group (sizes, times, tables, JSON) are in `output`.

mod admin;
mod alerts;
mod archive;
mod backup;
mod files;
mod jobs;
mod maintenance;
mod ops;
mod output;
mod partitions;
mod storage;
mod tokens;

use std::{io::Write, process::ExitCode};

use clap::{Parser, Subcommand};

pub use self::{
    backup::BackupCommand,
    files::{BlobsCommand, FilesCommand},
    partitions::PartitionsCommand,
};
use crate::{Client, types::GrowthWindow};

/// Command-line client for strata, the storage-lifecycle control plane.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about)]
pub struct Cli {
    /// Server URL (`https://…` for a server with TLS).
    #[arg(long, env = "STRATA_URL", default_value = "http://127.0.0.1:50051", global = true)]
    url: String,
    /// PEM certificate of the CA that signs the server's certificate (https:// URLs; default: the
    /// public webpki roots).
    #[arg(long, env = "STRATA_CA", global = true)]
    ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for a server that asks for one (mutual TLS); with --key.
    #[arg(long, env = "STRATA_CERT", global = true, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "STRATA_KEY", global = true, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Bearer token: one made by `strata tokens create` (`strata_…`) or a configured one.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Server version, backend, routing state, node health and configuration.
    Info,
    /// Current database and table sizes, row estimates and pool statistics.
    Metrics {
        /// Only tables whose name starts with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Growth rates over a window and a forecast.
    Growth {
        /// Window to fit.
        #[arg(long, value_enum, default_value_t = GrowthWindow::Week)]
        window: GrowthWindow,
        /// Forecast: days until this size in bytes.
        #[arg(long)]
        target_bytes: Option<i64>,
        /// Only tables whose name starts with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Store a metrics snapshot now (operator).
    Snapshot,
    /// Round-trip time to the primary and each replica.
    TestConnection,
    /// Upload a file (streamed from disk, resumed after dropped connections) (operator).
    Upload {
        /// The file to upload.
        file: std::path::PathBuf,
        /// Display name (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// MIME type (default: application/octet-stream).
        #[arg(long)]
        content_type: Option<String>,
        /// Owner (a user or tenant id).
        #[arg(long, default_value = "")]
        owner: String,
        /// Compute SHA-256 first and have the server verify it.
        #[arg(long)]
        sha256: bool,
    },
    /// Download a file.
    Download {
        /// File id.
        id: String,
        /// Where to write it (written to a temporary name, then renamed).
        #[arg(short, long)]
        output: std::path::PathBuf,
    },
    /// List, inspect and delete files.
    Files {
        #[command(subcommand)]
        command: FilesCommand,
    },
    /// Move blobs stored in a table (base64 text or bytea/BLOB) into files.
    Blobs {
        #[command(subcommand)]
        command: BlobsCommand,
    },
    /// Archive old rows into compressed segments: policies, plans, runs, restore, read, retention.
    Archive {
        #[command(subcommand)]
        command: archive::ArchiveCommand,
    },
    /// VACUUM (and ANALYZE) tables, reporting bytes reclaimed (operator).
    Maintenance {
        /// Table ("schema.table" or "table"); repeat; default: every user table.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// VACUUM FULL (rewrites the table under an exclusive lock).
        #[arg(long)]
        full: bool,
        /// Skip ANALYZE.
        #[arg(long)]
        skip_analyze: bool,
        /// Space is running out: first start every purge policy's run and every retention now.
        #[arg(long)]
        emergency: bool,
        /// Follow the operation until it ends and print each table (exit code 1 unless it
        /// succeeded); without it, print the operation's id and return.
        #[arg(long)]
        wait: bool,
    },
    /// Long operations (maintenance, reconcile, rescue): list, follow, cancel, read results.
    Ops {
        #[command(subcommand)]
        command: ops::OpsCommand,
    },
    /// Advice from the statistics views, with the numbers behind each item.
    Recommend {
        /// Tables at least this large (bytes) are "large" (default 1 GiB).
        #[arg(long, default_value_t = 0)]
        large_table_bytes: i64,
    },
    /// Partition upkeep of time-range-partitioned PostgreSQL tables.
    Partitions {
        #[command(subcommand)]
        command: PartitionsCommand,
    },
    /// Database backups into the object store (pg_dump or a SQLite snapshot), checked and rotated.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Alerts: list, show with timeline, acknowledge, resolve, watch live; rules.
    Alerts {
        #[command(subcommand)]
        command: alerts::AlertsCommand,
    },
    /// A 0-100 health score with the factors behind it.
    HealthReport,
    /// Scheduled jobs: list, create, run now, pause, resume, history.
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Start, stop or inspect the scheduler across every instance.
    Scheduler {
        #[command(subcommand)]
        command: jobs::SchedulerCommand,
    },
    /// Bearer tokens: create (with a role, scope and expiry), list, show, revoke (admin).
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
    /// The audit trail: mutating and refused calls (admin).
    Audit {
        #[command(subcommand)]
        command: tokens::AuditCommand,
    },
    /// gRPC health status (exit code 1 unless SERVING).
    Health {
        /// Service name; empty for the whole server.
        #[arg(default_value = "")]
        service: String,
    },
}

/// `KEY=VALUE` arguments (job options, rule labels).
fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Runs one CLI command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let tls = crate::TlsOptions::from_files(cli.ca.as_deref(), cli.cert.as_deref(), cli.key.as_deref())?;
    let mut client = Client::connect_with(cli.url.clone(), &tls).await?;
    if let Some(t) = &cli.token {
        client = client.with_token(t)?;
    }
    let (client, json) = (&client, cli.json);
    // Each group says whether the command succeeded: a failed run it waited for, an unhealthy
    // node or service exits 1.
    let ok = match cli.command {
        Command::Info => admin::info(client, json, out).await?,
        Command::Metrics { prefix } => storage::metrics(client, prefix, json, out).await?,
        Command::Growth { window, target_bytes, prefix } => {
            storage::growth(client, window, target_bytes, prefix, json, out).await?
        }
        Command::Snapshot => storage::snapshot(client, json, out).await?,
        Command::TestConnection => admin::test_connection(client, json, out).await?,
        Command::Upload { file, name, content_type, owner, sha256 } => {
            let opts = crate::types::UploadOptions { name, content_type, owner, sha256, ..Default::default() };
            files::upload(client, &file, &opts, json, out).await?
        }
        Command::Download { id, output } => files::download(client, &id, &output, json, out).await?,
        Command::Files { command } => files::run_files(client, command, json, out).await?,
        Command::Blobs { command } => files::run_blobs(client, command, json, out).await?,
        Command::Maintenance { tables, full, skip_analyze, emergency, wait } => {
            maintenance::maintenance(client, &tables, full, skip_analyze, emergency, wait, json, out).await?
        }
        Command::Ops { command } => ops::run(client, command, json, out).await?,
        Command::Recommend { large_table_bytes } => {
            maintenance::recommend(client, large_table_bytes, json, out).await?
        }
        Command::Partitions { command } => partitions::run(client, command, json, out).await?,
        Command::Backup { command } => backup::run(client, command, json, out).await?,
        Command::Archive { command } => archive::run(client, command, json, out).await?,
        Command::Alerts { command } => alerts::run(client, command, json, out).await?,
        Command::HealthReport => alerts::health(client, json, out).await?,
        Command::Jobs { command } => jobs::run_jobs(client, command, json, out).await?,
        Command::Scheduler { command } => jobs::run_scheduler(client, command, json, out).await?,
        Command::Tokens { command } => tokens::run(client, command, json, out).await?,
        Command::Audit { command } => tokens::run_audit(client, command, json, out).await?,
        Command::Health { service } => admin::health(client, &service, json, out).await?,
    };
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
