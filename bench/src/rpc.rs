//! `strata-bench rpc`: unary calls through `h2load` (4 connections × 64 streams, one thread), the
//! load generator the figures were measured with. Per backend (SQLite, PostgreSQL):
//! calls/s, p50 and p99 (from h2load's per-request log) of Health/Check, GetInfo, StatFile,
//! ListFiles and GetStorageMetrics, side by side. Then the targets:
//! - GetInfo with metrics on vs off (two servers, rounds alternating): ≥ 0.95×;
//! - StatFile on SQLite vs Health/Check on the same server: ≥ 0.25×;
//! - StatFile on PostgreSQL vs the same indexed `SELECT` sent straight through a diesel-async bb8
//!   pool of the server's size at the same concurrency: ≥ 0.7×.
//!
//! h2load sends one request body over and over, so its StatFile asks for one file. The catalog
//! holds `--files` files (rows written directly, one shared blob), and a second generator — 256
//! tonic calls in flight over 4 connections, on a runtime of its own — asks for them at random;
//! it also runs Health/Check, so its figures can be set beside h2load's.

use std::{
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::Context as _;
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl as _, SimpleAsyncConnection, pooled_connection::bb8};
use strata_client::pb;
use strata_tests::{PgCluster, TestServer, server::test_config};

use crate::fleet::{alternating, framed, h2load_rate, median, pass};

/// Connections and streams per connection of every generator.
const CONNECTIONS: usize = 4;
const STREAMS: usize = 64;
/// strata's default `pool_max_size`, for the server and the direct pool alike.
const POOL: u32 = 16;

/// One h2load run's figures.
#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `calls` calls of `method` with `body` through h2load; percentiles from its request log.
fn h2load(url: &str, method: &str, body: &[u8], calls: u64, work: &Path) -> anyhow::Result<Rate> {
    let data = work.join("body.bin");
    std::fs::write(&data, body)?;
    let log = work.join("h2load.log");
    // h2load appends to its log: a previous run's lines would count in this run's percentiles.
    let _ = std::fs::remove_file(&log);
    let out = Command::new("h2load")
        .args(["-n", &calls.to_string(), "-c", &CONNECTIONS.to_string(), "-m", &STREAMS.to_string(), "-t", "1"])
        .arg("-d")
        .arg(&data)
        .arg("--log-file")
        .arg(&log)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("{url}{method}"))
        .output()
        .context("h2load (apt-get install nghttp2-client)")?;
    let per_second = h2load_rate(&String::from_utf8_lossy(&out.stdout), calls)?;
    // Each line: start time, HTTP status, duration (µs).
    let mut micros: Vec<f64> = std::fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .collect();
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros.get(((micros.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0.0) / 1000.0;
    Ok(Rate { per_second, p50_ms: at(0.5), p99_ms: at(0.99) })
}

/// `calls` calls made by 256 tasks (64 per connection, 4 connections) on a runtime of their own:
/// `call(client, i)` makes call `i`. Returns calls/s.
fn generator<F, Fut>(url: &str, calls: u64, call: F) -> anyhow::Result<f64>
where
    F: Fn(tonic::transport::Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let mut channels = Vec::new();
            for _ in 0..CONNECTIONS {
                channels.push(tonic::transport::Endpoint::from_shared(url.clone())?.connect().await?);
            }
            let next = Arc::new(AtomicU64::new(0));
            let call = Arc::new(call);
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for t in 0..CONNECTIONS * STREAMS {
                let (channel, next, call) = (channels[t % CONNECTIONS].clone(), next.clone(), call.clone());
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= calls {
                            return Ok::<_, tonic::Status>(());
                        }
                        call(channel.clone(), i).await?;
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            Ok(calls as f64 / start.elapsed().as_secs_f64())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the generator panicked"))?
}

/// The id of seeded file `i`.
fn file_id(i: u64) -> String {
    format!("01900000-0000-7000-8000-{i:012x}")
}

/// A well-spread pseudo-random index below `n` for call `i` (splitmix64).
fn pick(i: u64, n: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % n
}

/// The statements that seed `n` files sharing one blob, in chunks of 1000 rows: `(files, blobs)`
/// are the catalog's table names on the backend.
fn seed_sql(n: u64, files: &str, blobs: &str) -> Vec<String> {
    let blake3 = "0".repeat(64);
    let mut out = vec![format!(
        "INSERT INTO {blobs} (blake3, object_key, size_bytes, ref_count, created_at) \
         VALUES ('{blake3}', 'blobs/bench', 1024, {n}, '2026-01-01 00:00:00')"
    )];
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "('{}', 'file-{i}.bin', 'application/octet-stream', 'bench', 1024, '{blake3}', NULL, '{{}}', '2026-01-01 00:00:00')",
                    file_id(*i)
                )
            })
            .collect();
        out.push(format!(
            "INSERT INTO {files} (id, name, content_type, owner, size_bytes, blake3, sha256, metadata, created_at) VALUES {}",
            values.join(", ")
        ));
    }
    out
}

/// The server's `GetFile` query (`db::files::get_file`), for the direct baseline.
const SELECT_FILE: &str = "SELECT f.id, f.name, f.content_type, f.owner, f.size_bytes, f.blake3, f.sha256, f.metadata, \
     f.created_at, b.lost_at, b.object_key FROM strata.files f JOIN strata.blobs b ON b.blake3 = f.blake3 WHERE f.id = $1";

#[derive(diesel::QueryableByName)]
struct Found {
    #[diesel(sql_type = Text)]
    #[expect(dead_code, reason = "read as the server reads it")]
    object_key: String,
}

/// The figures of one server: every method through h2load.
fn table(label: &str, url: &str, calls: u64, work: &Path) -> anyhow::Result<Vec<(&'static str, Rate)>> {
    let methods: [(&'static str, &str, Vec<u8>); 5] = [
        // An empty message: HealthCheckRequest { service: "" } (the server as a whole).
        ("Health/Check", "/grpc.health.v1.Health/Check", framed(&pb::GetInfoRequest {})),
        ("GetInfo", "/strata.v1.AdminService/GetInfo", framed(&pb::GetInfoRequest {})),
        ("StatFile", "/strata.v1.FileService/StatFile", framed(&pb::StatFileRequest { file_id: file_id(4242) })),
        (
            "ListFiles",
            "/strata.v1.FileService/ListFiles",
            framed(&pb::ListFilesRequest { page_size: 20, ..Default::default() }),
        ),
        (
            "GetStorageMetrics",
            "/strata.v1.StorageService/GetStorageMetrics",
            framed(&pb::GetStorageMetricsRequest::default()),
        ),
    ];
    let mut out = Vec::new();
    for (name, method, body) in methods {
        // Slow methods get fewer calls: each run lasts seconds, not minutes.
        let n = if name == "GetStorageMetrics" || name == "ListFiles" { calls / 10 } else { calls };
        let r = h2load(url, method, &body, n, work)?;
        println!(
            "  {label:<10} {name:<18} {:>9.0} calls/s   p50 {:>6.2} ms   p99 {:>7.2} ms",
            r.per_second, r.p50_ms, r.p99_ms
        );
        out.push((name, r));
    }
    Ok(out)
}

pub(crate) async fn run(calls: u64, files: u64, rounds: usize, sqlite_only: bool) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("strata-bench-rpc-").tempdir_in(".")?;
    let unlimited = |mut c: strata_server::config::Config| {
        // One caller (h2load) measured, not the per-caller limits.
        (c.rate_limit, c.max_calls_per_caller) = (0, 0);
        c.pool_max_size = POOL;
        c
    };

    // SQLite: metrics on, and a second server with metrics off for GetInfo.
    let sqlite = work.path().join("strata.db");
    let on = TestServer::start(unlimited(test_config(
        format!("sqlite://{}", sqlite.display()),
        vec![],
        &work.path().join("objects"),
    )))
    .await?;
    let mut off_config = unlimited(test_config(
        format!("sqlite://{}", work.path().join("off.db").display()),
        vec![],
        &work.path().join("objects-off"),
    ));
    off_config.metrics = false;
    let off = TestServer::start(off_config).await?;
    {
        use diesel::{Connection as _, connection::SimpleConnection as _};
        let mut c = diesel::SqliteConnection::establish(sqlite.to_str().context("path")?)?;
        c.batch_execute("PRAGMA busy_timeout = 10000; BEGIN")?;
        for s in seed_sql(files, "strata_files", "strata_blobs") {
            c.batch_execute(&s)?;
        }
        c.batch_execute("COMMIT")?;
    }
    println!("SQLite ({files} files in the catalog), h2load -c {CONNECTIONS} -m {STREAMS}:");
    // Blocking calls (h2load, the generator's thread) leave the runtime's workers to the servers.
    use tokio::task::block_in_place as blocking;
    let sqlite_table = blocking(|| table("SQLite", &on.url(), calls, work.path()))?;
    // StatFile on SQLite vs Health/Check, one file (h2load); files at random (generator) below.
    let rate = |t: &[(&str, Rate)], name: &str| t.iter().find(|(n, _)| *n == name).map_or(0.0, |(_, r)| r.per_second);
    let r = rate(&sqlite_table, "StatFile") / rate(&sqlite_table, "Health/Check");
    println!(
        "StatFile on SQLite vs Health/Check on the same server (h2load, one file): {r:.2} (target ≥ 0.25) {}",
        pass(r >= 0.25)
    );
    // Metrics on vs off.
    let info = framed(&pb::GetInfoRequest {});
    let pairs = blocking(|| {
        alternating(
            rounds,
            || h2load(&on.url(), "/strata.v1.AdminService/GetInfo", &info, calls, work.path()),
            || h2load(&off.url(), "/strata.v1.AdminService/GetInfo", &info, calls, work.path()),
        )
    })?;
    let ratios: Vec<f64> = pairs.iter().map(|(a, b)| a.per_second / b.per_second).collect();
    let r = median(ratios.clone());
    println!(
        "GetInfo with metrics on vs off (SQLite, h2load): {} → median {r:.2} over {rounds} rounds (target ≥ 0.95) {}",
        pairs.iter().map(|(a, b)| format!("{:.0}/{:.0}", a.per_second, b.per_second)).collect::<Vec<_>>().join(", "),
        pass(r >= 0.95)
    );

    let stat = move |channel, i| async move {
        let id = file_id(pick(i, files));
        pb::file_service_client::FileServiceClient::new(channel)
            .stat_file(pb::StatFileRequest { file_id: id })
            .await
            .map(|_| ())
    };
    let info = |channel, _| async move {
        let mut c = pb::admin_service_client::AdminServiceClient::new(channel);
        c.get_info(pb::GetInfoRequest {}).await.map(|_| ())
    };
    let random = blocking(|| generator(&on.url(), calls, stat))?;
    let info_gen = blocking(|| generator(&on.url(), calls, info))?;
    println!(
        "  generator: StatFile over {files} files at random {random:.0} calls/s, GetInfo {info_gen:.0} calls/s (h2load GetInfo {:.0})",
        rate(&sqlite_table, "GetInfo")
    );

    if sqlite_only {
        on.stop().await?;
        off.stop().await?;
        return Ok(());
    }

    // PostgreSQL last: its background work (autovacuum after the seeding) stays out of the SQLite figures.
    println!("starting PostgreSQL …");
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await??;
    let db = cluster.create_database("rpc").await?;
    let pg =
        TestServer::start(unlimited(test_config(cluster.primary_url(&db), vec![], &work.path().join("objects-pg"))))
            .await?;
    let mut c = cluster.connect(&db).await?;
    for s in seed_sql(files, "strata.files", "strata.blobs") {
        c.batch_execute(&s).await?;
    }
    c.batch_execute("ANALYZE strata.files; ANALYZE strata.blobs").await?;
    println!("PostgreSQL ({files} files in the catalog), h2load -c {CONNECTIONS} -m {STREAMS}:");
    let pg_table = blocking(|| table("PostgreSQL", &pg.url(), calls, work.path()))?;

    // StatFile on PostgreSQL vs the same SELECT through a diesel-async pool.
    let pg_random = blocking(|| generator(&pg.url(), calls, stat))?;
    let direct = {
        let manager = diesel_async::pooled_connection::AsyncDieselConnectionManager::<AsyncPgConnection>::new(
            cluster.primary_url(&db),
        );
        let pool = bb8::Pool::builder().max_size(POOL).build(manager).await?;
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..CONNECTIONS * STREAMS {
            let (pool, next) = (pool.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let mut conn = pool.get().await?;
                    let found: Vec<Found> = diesel::sql_query(SELECT_FILE)
                        .bind::<Text, _>(file_id(pick(i, files)))
                        .load(&mut *conn)
                        .await?;
                    anyhow::ensure!(found.len() == 1, "file {} not found", file_id(pick(i, files)));
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        calls as f64 / start.elapsed().as_secs_f64()
    };
    let r = pg_random / direct;
    println!(
        "StatFile on PostgreSQL over {files} files at random vs the same SELECT through a diesel-async pool of {POOL} ({} in flight): {pg_random:.0} vs {direct:.0} calls/s → {r:.2} (target ≥ 0.7) {}",
        CONNECTIONS * STREAMS,
        pass(r >= 0.7)
    );
    let _ = pg_table;
    on.stop().await?;
    off.stop().await?;
    pg.stop().await?;
    Ok(())
}
