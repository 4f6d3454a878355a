//! The `strata` command line, as a library so tests can drive it in-process.

mod alerts;
mod archive;
mod jobs;

use std::{io::Write, process::ExitCode};

use crate::{
    Client, HealthStatus,
    types::{GrowthQuery, GrowthWindow, RowCountSource},
};
use clap::{Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

/// Command-line client for strata, the storage-lifecycle control plane.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about)]
pub struct Cli {
    /// Server URL.
    #[arg(long, env = "STRATA_URL", default_value = "http://127.0.0.1:50051", global = true)]
    url: String,
    /// Bearer token (viewer or operator).
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
    /// gRPC health status (exit code 1 unless SERVING).
    Health {
        /// Service name; empty for the whole server.
        #[arg(default_value = "")]
        service: String,
    },
}

/// `strata partitions …` (PostgreSQL).
#[derive(Debug, Subcommand)]
pub enum PartitionsCommand {
    /// Create missing partitions ahead of time (operator).
    Ensure {
        /// The partitioned table.
        table: String,
        /// Schema.
        #[arg(long, default_value = "public")]
        schema: String,
        /// Partition length.
        #[arg(long, value_enum, default_value_t = crate::partitions::PartitionInterval::Monthly)]
        interval: crate::partitions::PartitionInterval,
        /// Periods ahead of the current one.
        #[arg(long, default_value_t = 3)]
        premake: i32,
        /// Periods before the current one.
        #[arg(long, default_value_t = 0)]
        past: i32,
    },
    /// Partitions, gaps, coverage and default-partition rows.
    Health {
        /// The partitioned table.
        table: String,
        /// Schema.
        #[arg(long, default_value = "public")]
        schema: String,
    },
    /// Drop partitions whose whole range is older than --older-than (operator; their rows are gone).
    Drop {
        /// The partitioned table.
        table: String,
        /// Schema.
        #[arg(long, default_value = "public")]
        schema: String,
        /// Age, e.g. 365d.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Only list them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Archive whole partitions older than an archive policy's cutoff into segments, then drop
    /// them (operator).
    Archive {
        /// Archive policy (its table is the partitioned parent).
        policy: String,
        /// Wait for the run to end.
        #[arg(long)]
        wait: bool,
    },
    /// Move rows out of the default partition into proper partitions (operator).
    Rescue {
        /// The partitioned table.
        table: String,
        /// Schema.
        #[arg(long, default_value = "public")]
        schema: String,
        /// Length of the partitions created for them.
        #[arg(long, value_enum, default_value_t = crate::partitions::PartitionInterval::Monthly)]
        interval: crate::partitions::PartitionInterval,
        /// Only count.
        #[arg(long)]
        dry_run: bool,
    },
}

fn print_partitions(out: &mut dyn Write, parts: &[crate::partitions::PartitionInfo]) -> anyhow::Result<()> {
    let mut t = table(&["partition", "from", "to", "size", "rows (est.)"]);
    for p in parts {
        let when = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
        t.add_row(vec![
            p.name.clone(),
            if p.is_default { "DEFAULT".into() } else { when(p.start) },
            if p.is_default { String::new() } else { when(p.end) },
            bytes(p.total_size_bytes),
            p.estimated_rows.to_string(),
        ]);
    }
    writeln!(out, "{t}")?;
    Ok(())
}

/// `strata backup …`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Start a backup (operator).
    Run {
        /// Wait until it is written and checked.
        #[arg(long)]
        wait: bool,
    },
    /// List backups, newest first.
    Ls {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// `strata blobs …`.
#[derive(Debug, Subcommand)]
pub enum BlobsCommand {
    /// Start moving a blob column into files; prints the migration id (operator).
    Migrate {
        /// Table holding the blobs.
        #[arg(long)]
        table: String,
        /// Schema of the table (default: public on PostgreSQL, main on SQLite).
        #[arg(long, default_value = "")]
        schema: String,
        /// Column holding the blobs.
        #[arg(long)]
        column: String,
        /// Unique key column.
        #[arg(long, default_value = "id")]
        key: String,
        /// Column receiving the file id.
        #[arg(long)]
        ref_column: String,
        /// The blob column holds raw bytes (bytea) instead of base64 text.
        #[arg(long)]
        bytea: bool,
        /// Rows per batch.
        #[arg(long, default_value_t = 100)]
        batch_size: i32,
        /// Only count rows and bytes.
        #[arg(long)]
        dry_run: bool,
        /// Owner recorded on the created files.
        #[arg(long, default_value = "")]
        owner: String,
    },
    /// Progress of a migration.
    Status {
        /// Migration id.
        id: String,
    },
}

/// `strata files …`.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// List files, newest first.
    Ls {
        /// Only this owner's files.
        #[arg(long)]
        owner: Option<String>,
        /// Only names starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i32,
    },
    /// Show one file.
    Stat {
        /// File id.
        id: String,
    },
    /// Delete a file (operator).
    Rm {
        /// File id.
        id: String,
    },
    /// Compare the object store with the catalog (operator).
    Reconcile {
        /// Delete orphan objects older than the grace period and mark lost content.
        #[arg(long)]
        repair: bool,
        /// Orphans younger than this many seconds are kept.
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
    },
}

fn print_file(out: &mut dyn Write, f: &crate::types::File) -> anyhow::Result<()> {
    writeln!(
        out,
        "{}  {}  {}  {}  blake3 {}{}",
        f.id,
        f.name,
        bytes(f.size_bytes as i64),
        f.content_type,
        f.blake3,
        f.sha256.as_ref().map(|s| format!("  sha256 {s}")).unwrap_or_default()
    )?;
    Ok(())
}

fn bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(headers.iter().copied());
    t
}

/// `KEY=VALUE` arguments (job options, rule labels).
fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// A UTC time to the second, or `-`.
fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
}

fn print_json<T: Serialize>(out: &mut dyn Write, v: &T) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

/// Runs one CLI command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(cli.url.clone()).await?;
    if let Some(t) = &cli.token {
        client = client.with_token(t)?;
    }
    match cli.command {
        Command::Info => {
            let i = client.info().await?;
            if cli.json {
                print_json(out, &i)?;
            } else {
                writeln!(
                    out,
                    "strata {}  backend {:?}  routing {:?}  uptime {:.0}s  replica fallbacks {}",
                    i.version,
                    i.backend,
                    i.routing_state,
                    i.uptime.as_secs_f64(),
                    i.replica_fallbacks
                )?;
                let mut t = table(&["node", "role", "address", "healthy", "reads", "lag", "last error"]);
                for n in &i.nodes {
                    t.add_row(vec![
                        n.name.clone(),
                        format!("{:?}", n.role).to_lowercase(),
                        n.address.clone(),
                        n.healthy.to_string(),
                        n.serving_reads.to_string(),
                        n.replication_lag.map_or("-".into(), |d| format!("{:.3}s", d.as_secs_f64())),
                        n.last_error.clone(),
                    ]);
                }
                writeln!(out, "{t}")?;
                if let Some(c) = &i.config {
                    writeln!(
                        out,
                        "listen {}  objects {}  pool {} (acquire {:?})  statement timeout {:?}  max replica lag {:?}  scheduler {}  tokens {}{}",
                        c.listen_address,
                        c.object_store_url,
                        c.pool_max_size,
                        c.pool_acquire_timeout,
                        c.statement_timeout,
                        c.max_replica_lag,
                        if c.run_scheduler { "on" } else { "off" },
                        c.auth_token_count,
                        if c.loopback_only { " (loopback only)" } else { "" }
                    )?;
                }
            }
        }
        Command::Metrics { prefix } => {
            let m = client.storage_metrics(prefix.as_deref()).await?;
            if cli.json {
                print_json(out, &m)?;
            } else {
                writeln!(
                    out,
                    "{} ({:?}, read from {:?}): {}",
                    m.database_name,
                    m.backend,
                    m.served_by,
                    bytes(m.database_size_bytes)
                )?;
                let mut t = table(&[
                    "table",
                    "rows",
                    "table",
                    "indexes",
                    "toast",
                    "total",
                    "dead rows",
                    "seq/idx scans",
                    "last vacuum",
                ]);
                for x in &m.tables {
                    t.add_row(vec![
                        format!("{}.{}", x.schema_name, x.table_name),
                        format!(
                            "{}{}",
                            x.estimated_rows,
                            if x.row_count_source == RowCountSource::Statistics { " ~" } else { "" }
                        ),
                        bytes(x.table_size_bytes),
                        bytes(x.index_size_bytes),
                        bytes(x.toast_size_bytes),
                        bytes(x.total_size_bytes),
                        x.dead_rows.map_or("-".into(), |d| d.to_string()),
                        match (x.seq_scans, x.index_scans) {
                            (Some(s), Some(i)) => format!("{s}/{i}"),
                            (Some(s), None) => format!("{s}/-"),
                            _ => "-".into(),
                        },
                        x.last_vacuum.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
                    ]);
                }
                writeln!(out, "{t}")?;
                let mut p = table(&["pool", "max", "open", "idle", "in use", "waited", "timed out"]);
                for x in &m.pools {
                    p.add_row(vec![
                        x.name.clone(),
                        x.max_size.to_string(),
                        x.connections.to_string(),
                        x.idle_connections.to_string(),
                        x.in_use_connections.to_string(),
                        x.gets_waited.to_string(),
                        x.gets_timed_out.to_string(),
                    ]);
                }
                writeln!(out, "{p}")?;
                for n in &m.notes {
                    writeln!(out, "note: {n}")?;
                }
            }
        }
        Command::Growth { window, target_bytes, prefix } => {
            let g =
                client.growth(GrowthQuery { window, target_size_bytes: target_bytes, table_prefix: prefix }).await?;
            if cli.json {
                print_json(out, &g)?;
            } else {
                let fmt_days = |d: Option<f64>| d.map_or("-".into(), |d| format!("{d:.1}"));
                let mut t = table(&["scope", "samples", "size", "bytes/day", "rows/day", "days to target"]);
                t.add_row(vec![
                    "database".into(),
                    g.database.sample_count.to_string(),
                    bytes(g.database.current_size_bytes),
                    bytes(g.database.bytes_per_day as i64),
                    "-".into(),
                    fmt_days(g.database.days_until_target),
                ]);
                for x in &g.tables {
                    t.add_row(vec![
                        format!("{}.{}", x.schema_name, x.table_name),
                        x.trend.sample_count.to_string(),
                        bytes(x.trend.current_size_bytes),
                        bytes(x.trend.bytes_per_day as i64),
                        format!("{:.1}", x.trend.rows_per_day),
                        fmt_days(x.trend.days_until_target),
                    ]);
                }
                writeln!(out, "window {:?}\n{t}", g.window)?;
            }
        }
        Command::Snapshot => {
            let s = client.record_snapshot().await?;
            if cli.json {
                print_json(out, &s)?;
            } else {
                writeln!(
                    out,
                    "snapshot {} at {}: {} in {} tables",
                    s.id,
                    s.taken_at,
                    bytes(s.database_size_bytes),
                    s.table_count
                )?;
            }
        }
        Command::TestConnection => {
            let probes = client.test_connection().await?;
            let failed = probes.iter().any(|p| !p.ok);
            if cli.json {
                print_json(out, &probes)?;
            } else {
                let mut t = table(&["node", "role", "ok", "round trip", "error"]);
                for p in &probes {
                    t.add_row(vec![
                        p.name.clone(),
                        format!("{:?}", p.role).to_lowercase(),
                        p.ok.to_string(),
                        p.round_trip.map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3)),
                        p.error.clone(),
                    ]);
                }
                writeln!(out, "{t}")?;
            }
            return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
        }
        Command::Upload { file, name, content_type, owner, sha256 } => {
            let opts = crate::types::UploadOptions { name, content_type, owner, sha256, ..Default::default() };
            let bar = if cli.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                indicatif::ProgressBar::hidden()
            } else {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                        .expect("valid template"),
                );
                b
            };
            let b = bar.clone();
            let f = client
                .upload_path(&file, &opts, move |sent, total| {
                    b.set_length(total);
                    b.set_position(sent);
                })
                .await?;
            bar.finish_and_clear();
            if cli.json { print_json(out, &f)? } else { print_file(out, &f)? }
        }
        Command::Download { id, output } => {
            let f = client.download_to(&id, &output).await?;
            if cli.json {
                print_json(out, &f)?;
            } else {
                writeln!(out, "{} → {} ({})", f.id, output.display(), bytes(f.size_bytes as i64))?;
            }
        }
        Command::Files { command } => match command {
            FilesCommand::Ls { owner, prefix, limit } => {
                let page = client
                    .list_files(&crate::types::FileQuery {
                        page_size: limit,
                        owner,
                        name_prefix: prefix,
                        ..Default::default()
                    })
                    .await?;
                if cli.json {
                    print_json(out, &page)?;
                } else {
                    let mut t = table(&["id", "name", "size", "type", "owner", "created"]);
                    for f in &page.files {
                        t.add_row(vec![
                            f.id.clone(),
                            f.name.clone(),
                            bytes(f.size_bytes as i64),
                            f.content_type.clone(),
                            f.owner.clone(),
                            f.created_at.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                        ]);
                    }
                    writeln!(out, "{t}")?;
                }
            }
            FilesCommand::Stat { id } => {
                let f = client.stat_file(&id).await?;
                if cli.json { print_json(out, &f)? } else { print_file(out, &f)? }
            }
            FilesCommand::Reconcile { repair, grace_secs } => {
                let r = client.reconcile_objects(repair, std::time::Duration::from_secs(grace_secs)).await?;
                if cli.json {
                    print_json(out, &r)?;
                } else {
                    writeln!(
                        out,
                        "scanned {} objects and {} blobs: {} orphan(s), {} deleted, {} lost content(s) in {} file(s)",
                        r.objects_scanned,
                        r.blobs_scanned,
                        r.orphan_object_keys.len(),
                        r.deleted_object_keys.len(),
                        r.lost_blake3.len(),
                        r.lost_file_ids.len()
                    )?;
                    for k in &r.orphan_object_keys {
                        writeln!(out, "orphan {k}")?;
                    }
                    for f in &r.lost_file_ids {
                        writeln!(out, "lost file {f}")?;
                    }
                }
            }
            FilesCommand::Rm { id } => {
                let gone = client.delete_file(&id).await?;
                if cli.json {
                    print_json(out, &serde_json::json!({ "id": id, "content_deleted": gone }))?;
                } else {
                    writeln!(
                        out,
                        "deleted {id}{}",
                        if gone { " (content removed)" } else { " (content still shared)" }
                    )?;
                }
            }
        },
        Command::Blobs { command } => match command {
            BlobsCommand::Migrate { table, schema, column, key, ref_column, bytea, batch_size, dry_run, owner } => {
                let spec = crate::types::BlobMigrationSpec {
                    schema_name: schema,
                    table_name: table,
                    key_column: key,
                    blob_column: column,
                    reference_column: ref_column,
                    base64: !bytea,
                    batch_size,
                    dry_run,
                    owner,
                };
                let r = client.start_blob_migration(&spec).await?;
                if cli.json {
                    print_json(out, &r)?;
                } else {
                    writeln!(out, "{} row(s) hold {} of blobs", r.pending_rows, bytes(r.pending_bytes))?;
                    if let Some(m) = r.migration {
                        writeln!(out, "migration {} started; follow it with `strata blobs status {}`", m.id, m.id)?;
                    }
                }
            }
            BlobsCommand::Status { id } => {
                let m = client.blob_migration(&id).await?;
                if cli.json {
                    print_json(out, &m)?;
                } else {
                    writeln!(
                        out,
                        "{} {}: {} row(s), {} moved{}",
                        m.id,
                        m.state,
                        m.rows_done,
                        bytes(m.bytes_done),
                        m.error.map(|e| format!(" — {e}")).unwrap_or_default()
                    )?;
                }
            }
        },
        Command::Maintenance { tables, full, skip_analyze, emergency } => {
            let done = if emergency {
                let report = client.emergency_maintenance().await?;
                for id in &report.started_runs {
                    writeln!(out, "started run {id} (follow it with `strata archive status {id}`)")?;
                }
                for s in &report.skipped_policies {
                    writeln!(out, "not started: {s}")?;
                }
                report.tables
            } else {
                client.run_maintenance(&tables, full, skip_analyze).await?
            };
            if cli.json {
                print_json(out, &done)?;
            } else {
                let mut t = table(&["table", "before", "after", "reclaimed", "dead rows", "time"]);
                for m in &done {
                    t.add_row(vec![
                        if m.schema_name.is_empty() {
                            m.table_name.clone()
                        } else {
                            format!("{}.{}", m.schema_name, m.table_name)
                        },
                        bytes(m.size_before_bytes),
                        bytes(m.size_after_bytes),
                        bytes(m.reclaimed_bytes),
                        m.dead_rows_before.to_string(),
                        format!("{:.2} s", m.duration.as_secs_f64()),
                    ]);
                }
                writeln!(out, "{t}")?;
            }
        }
        Command::Recommend { large_table_bytes } => {
            let recs = client.recommendations(large_table_bytes, 0).await?;
            if cli.json {
                print_json(out, &recs)?;
            } else if recs.is_empty() {
                writeln!(out, "no recommendations")?;
            } else {
                for r in &recs {
                    let ev: Vec<String> = r.evidence.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    writeln!(out, "[{}] {} ({})", r.kind, r.message, ev.join(", "))?;
                }
            }
        }
        Command::Partitions { command } => match command {
            PartitionsCommand::Ensure { table: t, schema, interval, premake, past } => {
                let (created, skipped) = client.ensure_partitions(&schema, &t, interval, premake, past).await?;
                if cli.json {
                    print_json(out, &created)?;
                } else {
                    writeln!(out, "{} partition(s) created, {skipped} period(s) already covered", created.len())?;
                    print_partitions(out, &created)?;
                }
            }
            PartitionsCommand::Health { table: t, schema } => {
                let h = client.partition_health(&schema, &t).await?;
                if cli.json {
                    print_json(out, &h)?;
                } else {
                    writeln!(
                        out,
                        "{schema}.{t} by {} ({}): {} partition(s), {} gap(s), {} row(s) in the default partition, covered {} ahead",
                        h.key_column,
                        h.key_type,
                        h.partitions.len(),
                        h.gaps.len(),
                        h.default_rows,
                        humantime::format_duration(std::time::Duration::from_secs(h.coverage_ahead.as_secs()))
                    )?;
                    print_partitions(out, &h.partitions)?;
                }
            }
            PartitionsCommand::Drop { table: t, schema, older_than, dry_run } => {
                let dropped = client.drop_partitions(&schema, &t, older_than, dry_run).await?;
                if cli.json {
                    print_json(out, &dropped)?;
                } else {
                    writeln!(
                        out,
                        "{} partition(s) {}",
                        dropped.len(),
                        if dry_run { "would be dropped" } else { "dropped" }
                    )?;
                    print_partitions(out, &dropped)?;
                }
            }
            PartitionsCommand::Archive { policy, wait } => {
                let mut r = client.archive_partitions(&policy).await?;
                if wait {
                    r = client.wait_archive_run(&r.id, std::time::Duration::from_millis(200)).await?;
                }
                if cli.json {
                    print_json(out, &r)?;
                } else {
                    writeln!(
                        out,
                        "run {} {:?}: {} row(s) in {} segment(s){}",
                        r.id,
                        r.state,
                        r.rows_done,
                        r.segments_done,
                        if r.error.is_empty() { String::new() } else { format!(" — {}", r.error) }
                    )?;
                }
                if r.state == crate::archive::RunState::Failed {
                    return Ok(ExitCode::FAILURE);
                }
            }
            PartitionsCommand::Rescue { table: t, schema, interval, dry_run } => {
                let r = client.rescue_default_rows(&schema, &t, interval, dry_run).await?;
                if cli.json {
                    print_json(out, &r)?;
                } else {
                    writeln!(
                        out,
                        "{} row(s) {} into {} partition(s); {} left in the default partition",
                        r.rows_moved,
                        if dry_run { "would move" } else { "moved" },
                        r.partitions_created.len(),
                        r.rows_left
                    )?;
                }
            }
        },
        Command::Backup { command } => match command {
            BackupCommand::Run { wait } => {
                let mut b = client.run_backup().await?;
                if wait {
                    b = client.wait_backup(&b.id, std::time::Duration::from_millis(200)).await?;
                }
                if cli.json {
                    print_json(out, &b)?;
                } else {
                    writeln!(
                        out,
                        "backup {} {:?}: {} {}{}",
                        b.id,
                        b.state,
                        bytes(b.size_bytes),
                        b.verification,
                        if b.error.is_empty() { String::new() } else { format!(" — {}", b.error) }
                    )?;
                }
                if b.state == crate::backup::BackupState::Failed {
                    return Ok(ExitCode::FAILURE);
                }
            }
            BackupCommand::Ls { limit } => {
                let all = client.list_backups(limit).await?;
                if cli.json {
                    print_json(out, &all)?;
                } else {
                    let mut t = table(&["id", "state", "format", "size", "started", "check"]);
                    for b in all {
                        t.add_row(vec![
                            b.id,
                            format!("{:?}", b.state).to_lowercase(),
                            b.format,
                            bytes(b.size_bytes),
                            b.started_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                            if b.error.is_empty() { b.verification } else { b.error },
                        ]);
                    }
                    writeln!(out, "{t}")?;
                }
            }
        },
        Command::Archive { command } => {
            if !archive::run(&client, command, cli.json, out).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Alerts { command } => {
            if !alerts::run(&client, command, cli.json, out).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::HealthReport => {
            alerts::health(&client, cli.json, out).await?;
        }
        Command::Jobs { command } => {
            if !jobs::run_jobs(&client, command, cli.json, out).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Scheduler { command } => {
            if !jobs::run_scheduler(&client, command, cli.json, out).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Health { service } => {
            let s = client.health(&service).await?;
            if cli.json {
                print_json(out, &serde_json::json!({ "service": service, "status": s }))?;
            } else {
                writeln!(out, "{s:?}")?;
            }
            return Ok(if s == HealthStatus::Serving { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
    }
    Ok(ExitCode::SUCCESS)
}
