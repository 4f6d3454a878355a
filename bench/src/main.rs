//! strata's benchmarks. Each subcommand measures strata and its baseline in the same run and prints
//! the ratio; `docs/benchmarks.md` keeps the latest figures. Run in release mode:
//!
//! ```text
//! cargo run --release -p strata-bench -- metrics-latency
//! cargo build --release -p strata-server && cargo run --release -p strata-bench -- files
//! ```

mod archive;
mod auth;
mod fairness;
mod files;
mod fleet;
mod partitions;
mod prose;
mod reconcile;
mod restore;
mod rpc;
mod tls;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use diesel_async::SimpleAsyncConnection;
use strata_tests::{PgCluster, TestServer};

/// The allocator the `strata-server` binary ships with: benchmarks that run the server in this
/// process (metrics, archive, partitions) measure it as shipped, not with glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "strata-bench", about = "strata benchmarks (release mode)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// 1 GiB file benchmarks against a `strata-server` process: upload to file:// vs `cp`+`sync`
    /// (≥ 0.8), with a declared SHA-256 vs `openssl dgst -sha256` (≥ 0.9), download vs `cp`+`sync`
    /// (≥ 0.8), upload to S3 (s3s-fs) vs a direct aws-sdk-s3 multipart upload (≥ 0.9), and the
    /// server's peak RSS growth during an upload (≤ 64 MiB). Each comparison runs `--rounds` times,
    /// baseline and strata back to back; the verdict is on the median ratio.
    Files {
        /// File size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Rounds of every comparison (the machine is shared: one round can be off by 2×).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Directory for the files (default: a temporary one under the current directory).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Archival on PostgreSQL: strata's RunArchive into the S3 server (s3s-fs, in-process) vs the
    /// raw SQL move `INSERT INTO archive SELECT …; DELETE …` in one transaction (≥ 0.5× rows/s, longest
    /// strata transaction ≤ 2 s) and vs `COPY (SELECT row_to_json(t) …) TO STDOUT | zstd -3` (≥ 0.8×
    /// rows/s, compression ≥ the pipeline's). Identical copies of chat-like rows, half of them due.
    Archive {
        /// Rows per table.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// strata's rows per batch.
        #[arg(long, default_value_t = 10_000)]
        batch_size: i32,
        /// Rounds, each on fresh copies; the median ratio is judged.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Row-mode archival of a table partitioned by month (24 partitions of the archive bench's
    /// chat rows, half of them due) vs the same rows in an unpartitioned table, both by strata
    /// (≥ 0.8× rows/s).
    ArchivePartitioned {
        /// Rows per table.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// strata's rows per batch.
        #[arg(long, default_value_t = 10_000)]
        batch_size: i32,
        /// Rounds, each on fresh copies (alternating which goes first); the median ratio is judged.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Partition upkeep vs pg_partman on identical monthly-partitioned tables (12 partitions 13–24
    /// months old holding rows): strata's EnsurePartitions (24 ahead, 12 back) + DropPartitions
    /// (older than a year) vs `create_parent(p_premake := 24)` + retention 12 months +
    /// `run_maintenance_proc()` (target ratio ≤ 1.0). Needs Debian's postgresql-15-partman.
    Partitions {
        /// Fresh table pairs measured (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Rows in the old partitions of each table.
        #[arg(long, default_value_t = 200_000)]
        rows: u64,
    },
    /// A fleet of three `strata-server` processes behind HAProxy (HTTP/2, round-robin per call,
    /// checked on `/readyz`) on one PostgreSQL and one S3 server: GetInfo calls with `h2load`
    /// through HAProxy vs straight to one instance (≥ 0.7×), 1 GiB uploads to S3 through HAProxy
    /// vs straight (≥ 0.9×), 2 000 uploads of 64 KiB through HAProxy vs PutObject straight to S3
    /// (≥ 0.5× files/s), continuing an upload on another instance at 900 vs 100 MiB (≤ 1.5×);
    /// prints how soon a cancelled upload's offset is visible elsewhere, how long a SIGTERMed
    /// instance still gets calls (and that none failed) and how long a SIGKILLed blob-migration
    /// runner takes to be replaced.
    Fleet {
        /// Upload size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Rounds of each comparison (alternating which side goes first).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// GetInfo calls per h2load run.
        #[arg(long, default_value_t = 100_000)]
        calls: u64,
    },
    /// ReconcileObjects over a `file://` store of `--objects` objects (all but a few in the catalog,
    /// a few catalog rows without object) on a `strata-server` process (SQLite catalog) vs a bare
    /// directory walk plus one catalog query of the same keys compared in memory (≥ 0.5×), and the
    /// server's peak RSS growth during it (≤ 64 MiB); then the same objects on the S3 server
    /// (s3s-fs, in-process): the RSS bound only.
    Reconcile {
        /// Objects in the store.
        #[arg(long, default_value_t = 100_000)]
        objects: usize,
        /// Rounds (alternating which side goes first); the median ratio is judged.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// TLS on the gRPC port vs plaintext (both strata, in this process, SQLite + `file://`): 1 GiB
    /// uploads through the SDK (≥ 0.7×) and unary GetInfo with h2load, connections reused (≥ 0.8×).
    Tls {
        /// Upload size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Rounds, alternating which side goes first; the median ratio is judged.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// GetInfo calls per h2load run.
        #[arg(long, default_value_t = 200_000)]
        calls: u64,
    },
    /// Authentication and the audit trail (two servers in this process on one PostgreSQL): GetInfo
    /// with an API token vs Health/Check (≥ 0.8×); PauseJob with the audit trail on vs off
    /// (≥ 0.8×); prints how long a revocation takes to reach another instance.
    Auth {
        /// Rounds, alternating which side goes first; the median ratio is judged.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// GetInfo calls per h2load run (PauseJob: a quarter of it).
        #[arg(long, default_value_t = 200_000)]
        calls: u64,
    },
    /// Unary calls through h2load (4 connections × 64 streams): calls/s, p50 and p99 of
    /// Health/Check, GetInfo, StatFile, ListFiles and GetStorageMetrics on SQLite and on
    /// PostgreSQL; GetInfo with metrics on vs off (≥ 0.95); StatFile on SQLite vs Health/Check on
    /// the same server (≥ 0.25); StatFile on PostgreSQL over `--files` files at random vs the same
    /// SELECT through a diesel-async pool at the same concurrency (≥ 0.7).
    Rpc {
        /// Calls per h2load run (ListFiles and GetStorageMetrics: a tenth of it).
        #[arg(long, default_value_t = 200_000)]
        calls: u64,
        /// Files in the catalog (StatFile picks among them at random).
        #[arg(long, default_value_t = 100_000)]
        files: u64,
        /// Rounds of metrics on vs off, alternating which side goes first; the median is judged.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The SQLite figures only (no PostgreSQL cluster): for quick iteration on the embedded path.
        #[arg(long)]
        sqlite_only: bool,
    },
    /// Fair sharing of SQLite during archival: an application inserting one row every 5 ms into its
    /// table of the embedded database (own connection, busy timeout 10 s) while a run archives half
    /// of `--rows` chat rows; the run with its pause between batches switched off (as before) vs
    /// the default, on identical fresh tables, in alternating order. Targets on the default: the
    /// application's insert p99 ≤ 50 ms and max ≤ 250 ms during the run, the run's rows/s ≥ 0.5×
    /// the unpaused run's.
    SqliteFairness {
        /// Rows of the application's table (half of them due).
        #[arg(long, default_value_t = 600_000)]
        rows: u64,
        /// The policy's rows per batch (0: the server's default).
        #[arg(long, default_value_t = 0)]
        batch_size: i32,
        /// Rounds, each measuring both on fresh copies.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// `sqlite_sleep_coef` instead of the default (to explore).
        #[arg(long)]
        sleep_coef: Option<f64>,
        /// `sqlite_batch_target` in ms instead of the default (to explore).
        #[arg(long)]
        batch_target_ms: Option<u64>,
    },
    /// Restore on PostgreSQL: strata archives the due half of 1M chat rows (with a jsonb column),
    /// a tenth of the archived rows is put back, then strata's RestoreArchive of every segment vs
    /// `COPY … FROM` (CSV, psql) of the rows not present into an identical copy of the table in the
    /// same state (≥ 0.7× rows/s).
    Restore {
        /// Rows of the table.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// strata's rows per batch (segment) when archiving.
        #[arg(long, default_value_t = 10_000)]
        batch_size: i32,
        /// Rounds, each on fresh copies, alternating which side goes first; the median is judged.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// GetStorageMetrics p50 latency on PostgreSQL: a database with a 1M-row table vs one with a
    /// 10k-row table (target ratio ≤ 1.5), with `SELECT count(*)` on both as the contrast.
    MetricsLatency {
        /// Calls per database (after warm-up).
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// Rows of the large table.
        #[arg(long, default_value_t = 1_000_000)]
        large_rows: u64,
        /// Rows of the small table.
        #[arg(long, default_value_t = 10_000)]
        small_rows: u64,
    },
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn make_db(cluster: &PgCluster, name: &str, rows: u64) -> anyhow::Result<String> {
    let db = cluster.create_database(name).await?;
    let mut c = cluster.connect(&db).await?;
    // Chat-like rows: an id, a room, a timestamp and ~200 bytes of text.
    c.batch_execute(&format!(
        "CREATE TABLE messages (id BIGSERIAL PRIMARY KEY, room INT NOT NULL, sent_at TIMESTAMPTZ NOT NULL, body TEXT NOT NULL);
         INSERT INTO messages (room, sent_at, body)
              SELECT g % 100, now() - (g || ' seconds')::interval, repeat(md5(g::text), 6)
                FROM generate_series(1, {rows}) g;
         CREATE INDEX messages_room_idx ON messages (room, sent_at);"
    ))
    .await?;
    // On its own: VACUUM cannot run inside the implicit transaction of a multi-statement batch.
    c.batch_execute("VACUUM ANALYZE messages").await?;
    Ok(db)
}

async fn metrics_latency(iterations: usize, large_rows: u64, small_rows: u64) -> anyhow::Result<()> {
    println!("starting PostgreSQL primary + replica …");
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await??;
    let t = Instant::now();
    let small = make_db(&cluster, "bench_small", small_rows).await?;
    let large = make_db(&cluster, "bench_large", large_rows).await?;
    println!("loaded {small_rows} and {large_rows} rows in {:.1}s", t.elapsed().as_secs_f64());
    let dir = tempfile::tempdir()?;
    let s_small = TestServer::postgres(&cluster, &small, dir.path()).await?;
    let s_large = TestServer::postgres(&cluster, &large, dir.path()).await?;
    let (c_small, c_large) = (s_small.client().await, s_large.client().await);
    for _ in 0..20 {
        c_small.storage_metrics(None).await?;
        c_large.storage_metrics(None).await?;
    }
    // Interleave the two so machine noise hits both alike.
    let (mut a, mut b) = (Vec::with_capacity(iterations), Vec::with_capacity(iterations));
    for _ in 0..iterations {
        let t = Instant::now();
        let m = c_small.storage_metrics(None).await?;
        a.push(t.elapsed());
        anyhow::ensure!(m.table("messages").context("small table")?.estimated_rows == small_rows as i64);
        let t = Instant::now();
        let m = c_large.storage_metrics(None).await?;
        b.push(t.elapsed());
        let est = m.table("messages").context("large table")?.estimated_rows;
        anyhow::ensure!((est - large_rows as i64).abs() <= large_rows as i64 / 100, "estimate {est} off by > 1%");
    }
    // The baseline a naive implementation would pay: COUNT(*) on the same tables.
    let (mut cs, mut cl) = (Vec::new(), Vec::new());
    let mut conn_s = cluster.connect(&small).await?;
    let mut conn_l = cluster.connect(&large).await?;
    for _ in 0..5 {
        let t = Instant::now();
        conn_s.batch_execute("SELECT count(*) FROM messages").await?;
        cs.push(t.elapsed());
        let t = Instant::now();
        conn_l.batch_execute("SELECT count(*) FROM messages").await?;
        cl.push(t.elapsed());
    }
    let (p50a, p50b) = (percentile(&mut a, 0.5), percentile(&mut b, 0.5));
    let (p99a, p99b) = (percentile(&mut a, 0.99), percentile(&mut b, 0.99));
    let (ca, cb) = (percentile(&mut cs, 0.5), percentile(&mut cl, 0.5));
    println!("GetStorageMetrics  {small_rows:>9} rows: p50 {:.2} ms  p99 {:.2} ms", ms(p50a), ms(p99a));
    println!("GetStorageMetrics  {large_rows:>9} rows: p50 {:.2} ms  p99 {:.2} ms", ms(p50b), ms(p99b));
    let ratio = p50b.as_secs_f64() / p50a.as_secs_f64();
    println!("ratio p50 large/small: {ratio:.2} (target ≤ 1.50) {}", if ratio <= 1.5 { "PASS" } else { "FAIL" });
    println!(
        "baseline SELECT count(*): {:.2} ms vs {:.2} ms, ratio {:.1}",
        ms(ca),
        ms(cb),
        cb.as_secs_f64() / ca.as_secs_f64()
    );
    s_small.stop().await?;
    s_large.stop().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.command {
            Command::MetricsLatency { iterations, large_rows, small_rows } => {
                metrics_latency(iterations, large_rows, small_rows).await
            }
            Command::Files { size_mib, rounds, dir } => files::run(size_mib << 20, rounds.max(1), dir).await,
            Command::Archive { rows, batch_size, rounds } => archive::run(rows, batch_size, rounds.max(1)).await,
            Command::ArchivePartitioned { rows, batch_size, rounds } => {
                archive::run_partitioned(rows, batch_size, rounds.max(1)).await
            }
            Command::Partitions { rounds, rows } => partitions::run(rounds, rows).await,
            Command::Fleet { size_mib, rounds, calls } => fleet::run(size_mib, rounds.max(1), calls).await,
            Command::Reconcile { objects, rounds } => reconcile::run(objects, rounds.max(1)).await,
            Command::Tls { size_mib, rounds, calls } => tls::run(size_mib, rounds.max(1), calls).await,
            Command::Auth { rounds, calls } => auth::run(rounds.max(1), calls).await,
            Command::Rpc { calls, files, rounds, sqlite_only } => {
                rpc::run(calls, files.max(1), rounds.max(1), sqlite_only).await
            }
            Command::Restore { rows, batch_size, rounds } => restore::run(rows, batch_size, rounds.max(1)).await,
            Command::SqliteFairness { rows, batch_size, rounds, sleep_coef, batch_target_ms } => {
                let tuning = fairness::Tuning { sleep_coef, batch_target_ms };
                fairness::run(rows, batch_size, rounds.max(1), tuning).await
            }
        }
    })
}
