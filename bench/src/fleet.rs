//! A fleet behind HAProxy: three `strata-server` processes (the release binary beside this one) on
//! one PostgreSQL primary and one S3-protocol server, HAProxy in front (HTTP/2 both ways,
//! round-robin per call, health-checked on `/readyz`). Measures, each against the same thing
//! straight to one instance in the same run:
//! - unary calls (GetInfo) with `h2load`: through HAProxy vs straight (target ≥ 0.7×);
//! - 1 GiB uploads to S3 through the SDK: through HAProxy vs straight (target ≥ 0.9×);
//! - 2 000 uploads of 64 KiB, 16 at a time, through HAProxy to S3 vs aws-sdk-s3 PutObject of the
//!   same bytes, 16 at a time, straight to the same S3 server (target ≥ 0.5× files/s);
//! - continuing an upload on another instance at 900 MiB of 1 GiB vs at 100 MiB: the time until
//!   the continuation's first bytes are accepted and recorded (target ≤ 1.5×: cost independent
//!   of the offset);
//!
//! and prints, without a target, how long after a cancel the committed offset is visible on
//! another instance, how long after SIGTERM the stopping instance still got calls (drain noticed
//! by HAProxy) and how long a dead blob-migration runner takes to be replaced.

use std::{
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use strata_client::{Client, types::UploadOptions};
use strata_tests::{
    PgCluster, S3Server,
    haproxy::{Backend, Haproxy},
    process::ServerProcess,
};

use crate::files::{proc_cpu, rusage_cpu};

fn server_binary() -> anyhow::Result<String> {
    let exe = std::env::current_exe()?.with_file_name("strata-server");
    if !exe.exists() {
        bail!("{} not found: build it with `cargo build --release -p strata-server`", exe.display());
    }
    Ok(exe.display().to_string())
}

/// `h2load` calls of GetInfo against `url`: calls per second, after checking every call got a
/// 200 (h2load counts HTTP statuses, not grpc-status: GetInfo has no failure mode here).
pub(crate) fn h2load(url: &str, body: &Path, calls: u64) -> anyhow::Result<f64> {
    h2load_call(url, "/strata.v1.AdminService/GetInfo", body, &[], calls)
}

/// `h2load` calls of `method` with the request in `body` and extra `headers` (`name: value`):
/// calls per second, after checking every call got a 200.
pub(crate) fn h2load_call(url: &str, method: &str, body: &Path, headers: &[&str], calls: u64) -> anyhow::Result<f64> {
    let mut cmd = Command::new("h2load");
    cmd.args(["-n", &calls.to_string(), "-c", "8", "-m", "16", "-t", "1", "-d"]).arg(body).args([
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(format!("{url}{method}")).output().context("h2load (apt-get install nghttp2-client)")?;
    h2load_rate(&String::from_utf8_lossy(&out.stdout), calls)
}

/// The calls per second of an h2load run's output, after checking all `calls` got a 200.
pub(crate) fn h2load_rate(text: &str, calls: u64) -> anyhow::Result<f64> {
    let ok = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .and_then(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .unwrap_or(0);
    if ok != calls {
        bail!("h2load: {ok} of {calls} calls answered 200:\n{text}");
    }
    text.lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("no rate in h2load's output:\n{text}"))
}

/// A gRPC request body: the 5-byte frame header, then `msg`.
pub(crate) fn framed(msg: &impl prost::Message) -> Vec<u8> {
    let bytes = msg.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

/// One h2load run with the CPU every process involved spent on it: (calls/s, CPU ms per 1000
/// calls of h2load, of HAProxy, of the strata instances).
fn measured(
    url: &str,
    body: &Path,
    calls: u64,
    proxy: Option<u32>,
    servers: &[u32],
) -> anyhow::Result<(f64, [f64; 3])> {
    let before = (
        rusage_cpu(libc::RUSAGE_CHILDREN),
        proxy.map_or(0.0, proc_cpu),
        servers.iter().map(|p| proc_cpu(*p)).sum::<f64>(),
    );
    let rate = h2load(url, body, calls)?;
    let after = (
        rusage_cpu(libc::RUSAGE_CHILDREN),
        proxy.map_or(0.0, proc_cpu),
        servers.iter().map(|p| proc_cpu(*p)).sum::<f64>(),
    );
    let per = |a: f64, b: f64| (a - b) * 1e6 / calls as f64;
    Ok((rate, [per(after.0, before.0), per(after.1, before.1), per(after.2, before.2)]))
}

#[derive(QueryableByName)]
struct Runner {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    runner: Option<String>,
}

/// The instance running blob migration `id`.
async fn runner(c: &mut diesel_async::AsyncPgConnection, id: &str) -> anyhow::Result<String> {
    Ok(diesel::sql_query("SELECT runner FROM strata.blob_migrations WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(id)
        .get_result::<Runner>(c)
        .await?
        .runner
        .unwrap_or_default())
}

/// How long the SDK takes to upload `src` (the file is deleted after).
pub(crate) async fn timed_upload(c: &Client, src: &Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let f = c.upload_path(src, &UploadOptions::default(), |_, _| {}).await?;
    let d = t.elapsed();
    c.delete_file(&f.id).await?;
    Ok(d)
}

/// Runs `a` and `b` once per round, alternating which goes first (so neither always meets a warmer
/// or colder machine); returns each round's (a, b).
pub(crate) fn alternating<T>(
    rounds: usize,
    mut a: impl FnMut() -> anyhow::Result<T>,
    mut b: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Vec<(T, T)>> {
    (0..rounds)
        .map(|round| {
            Ok(if round % 2 == 0 {
                let x = a()?;
                (x, b()?)
            } else {
                let y = b()?;
                (a()?, y)
            })
        })
        .collect()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) async fn run(size_mib: u64, rounds: usize, calls: u64) -> anyhow::Result<()> {
    let bin = server_binary()?;
    println!("starting PostgreSQL, the S3 server, three strata instances and HAProxy …");
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await??;
    let db = cluster.create_database("fleet").await?;
    let s3 = S3Server::start("fleet")?;
    let (db_url, s3_url) = (cluster.primary_url(&db), s3.url());
    let env = [
        ("STRATA_DATABASE_URL", db_url.as_str()),
        ("STRATA_OBJECT_STORE_URL", s3_url.as_str()),
        ("STRATA_RUN_LEASE", "2s"),
        ("STRATA_SHUTDOWN_DELAY", "2s"),
        ("STRATA_SCHEDULER_POLL_INTERVAL", "200ms"),
        // The load generators are one caller each: measure the path, not the per-caller limits.
        ("STRATA_RATE_LIMIT", "0"),
        ("STRATA_MAX_CALLS_PER_CALLER", "0"),
    ];
    let mut procs: Vec<ServerProcess> = (0..3).map(|_| ServerProcess::spawn(&bin, &env)).collect();
    for p in &procs {
        p.client().await;
    }
    let backends: Vec<Backend> = procs.iter().map(|p| Backend { grpc: p.addr(), admin: p.admin_addr() }).collect();
    let proxy = Haproxy::start_quiet(&backends).await?;
    // Let HAProxy see every instance healthy (rise 2 at 200 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let work = tempfile::Builder::new().prefix("strata-bench-fleet-").tempdir_in(".")?;
    let mut all = true;

    // --- unary calls ---
    let body = work.path().join("getinfo.bin");
    std::fs::write(&body, [0u8, 0, 0, 0, 0])?;
    let servers: Vec<u32> = procs.iter().map(ServerProcess::pid).collect();
    let (mut ratios, mut bounds) = (Vec::new(), Vec::new());
    h2load(&proxy.url(), &body, calls / 10)?; // warm-up
    for round in 0..rounds {
        let via = || measured(&proxy.url(), &body, calls, Some(proxy.pid()), &servers);
        let straight = || measured(&procs[0].url(), &body, calls, None, &servers);
        let ((p, pc), (d, dc)) = if round % 2 == 0 {
            let p = via()?;
            (p, straight()?)
        } else {
            let d = straight()?;
            (via()?, d)
        };
        // Both runs keep the two cores busy: the rate each can reach is bounded by the CPU a call
        // costs in all processes together, so the ratio cannot exceed the ratio of those costs.
        let (pt, dt) = (pc.iter().sum::<f64>(), dc.iter().sum::<f64>());
        println!(
            "  GetInfo, round {}: through HAProxy {p:.0} calls/s vs straight {d:.0} calls/s → {:.2}; CPU per call: {pt:.1} µs (h2load {:.1}, HAProxy {:.1}, strata {:.1}) vs {dt:.1} µs (h2load {:.1}, strata {:.1}) → bound {:.2}",
            round + 1,
            p / d,
            pc[0],
            pc[1],
            pc[2],
            dc[0],
            dc[2],
            dt / pt
        );
        ratios.push(p / d);
        bounds.push(dt / pt);
    }
    let (r, bound) = (median(ratios), median(bounds));
    all &= r >= 0.7;
    println!("unary calls through HAProxy: median ratio {r:.2} over {rounds} rounds (target ≥ 0.7) {}", pass(r >= 0.7));
    println!(
        "  on these 2 cores the CPU per call bounds it at {bound:.2}: strata reaches {:.0} % of that bound {}",
        100.0 * r / bound,
        pass(r >= 0.9 * bound)
    );

    // --- 1 GiB uploads to S3 ---
    let src = work.path().join("source.bin");
    crate::files::make_file(&src, size_mib << 20, 0xf1ee7)?;
    let (through, straight) = (Client::connect(proxy.url()).await?, procs[0].client().await);
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let time = async |c: &Client| timed_upload(c, &src).await;
        let (p, d) = if round % 2 == 0 {
            let p = time(&through).await?;
            (p, time(&straight).await?)
        } else {
            let d = time(&straight).await?;
            (time(&through).await?, d)
        };
        let gb = |t: Duration| (size_mib << 20) as f64 / t.as_secs_f64() / 1e9;
        println!(
            "  upload → S3, round {}: through HAProxy {:.2}s ({:.2} GB/s) vs straight {:.2}s ({:.2} GB/s) → {:.2}",
            round + 1,
            p.as_secs_f64(),
            gb(p),
            d.as_secs_f64(),
            gb(d),
            d.as_secs_f64() / p.as_secs_f64()
        );
        ratios.push(d.as_secs_f64() / p.as_secs_f64());
    }
    let r = median(ratios);
    all &= r >= 0.9;
    println!(
        "{size_mib} MiB upload through HAProxy: median ratio {r:.2} over {rounds} rounds (target ≥ 0.9) {}",
        pass(r >= 0.9)
    );

    // --- many small uploads through HAProxy vs PutObject straight to S3 ---
    let (mut ratios, mut bounds, mut ceilings) = (Vec::new(), Vec::new(), Vec::new());
    let pids: Vec<u32> = procs.iter().map(ServerProcess::pid).collect();
    for round in 0..rounds {
        let ((p, pc, strata), (d, dc)) = if round % 2 == 0 {
            let p = small_uploads(&through, &pids).await?;
            (p, small_puts(&s3).await?)
        } else {
            let d = small_puts(&s3).await?;
            (small_uploads(&through, &pids).await?, d)
        };
        // As for unary calls: with every process on the same two cores, the CPU a file costs in
        // all of them together bounds the rate each side can reach.
        let (pf, df) = (pc.0 / (SMALL_FILES as f64), dc.0 / (SMALL_FILES as f64));
        // The rest of the fleet's path (client, HAProxy, PostgreSQL, S3 server) alone: the most
        // any server in strata's place could reach here, even one that cost no CPU at all.
        let rest = pf - strata / SMALL_FILES as f64;
        println!(
            "  {SMALL_FILES} uploads of 64 KiB, {SMALL_CONCURRENCY} at a time, round {}: through HAProxy {p:.0} files/s vs PutObject straight to S3 {d:.0} files/s → {:.2}; machine CPU per file {:.0} µs ({:.0} % busy) vs {:.0} µs ({:.0} % busy) → bound {:.2} (with strata's CPU at zero: {:.2})",
            round + 1,
            p / d,
            pf * 1e6,
            pc.1 * 100.0,
            df * 1e6,
            dc.1 * 100.0,
            df / pf,
            df / rest
        );
        ratios.push(p / d);
        bounds.push(df / pf);
        ceilings.push(df / rest);
    }
    let (r, bound, ceiling) = (median(ratios), median(bounds), median(ceilings));
    all &= r >= 0.5;
    println!(
        "small uploads through HAProxy: median ratio {r:.2} over {rounds} rounds (target ≥ 0.5) {}",
        pass(r >= 0.5)
    );
    println!(
        "  on these 2 cores the machine's CPU per file bounds it at {bound:.2}: strata reaches {:.0} % of that bound {}; a server costing no CPU could reach {ceiling:.2}",
        100.0 * r / bound,
        pass(r >= 0.9 * bound)
    );

    // --- continuing an upload on another instance: cost independent of the offset ---
    let (near, far, visible) = resume_offsets(&procs, rounds).await?;
    let r = far / near;
    all &= r <= 1.5;
    println!(
        "continuing on another instance at 900 MiB vs at 100 MiB of 1 GiB: {:.1} ms vs {:.1} ms to the first bytes accepted and recorded → {r:.2} (target ≤ 1.5) {}",
        far * 1e3,
        near * 1e3,
        pass(r <= 1.5)
    );
    println!("cancel → committed offset visible on another instance: median {:.0} ms", visible * 1e3);

    // --- drain: SIGTERM one instance under a steady call rate through HAProxy ---
    let stopping = instance_of(&procs[2].url()).await?;
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, seen, failed, stop) = (proxy.url(), seen.clone(), failed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
            let mut c = strata_client::pb::admin_service_client::AdminServiceClient::new(channel);
            while !stop.is_cancelled() {
                match c.get_info(strata_client::pb::GetInfoRequest {}).await {
                    Ok(r) => {
                        let who = r.metadata().get("x-strata-instance").and_then(|v| v.to_str().ok()).unwrap_or("");
                        seen.lock().expect("lock").push((Instant::now(), who.to_owned()));
                    }
                    Err(_) => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let term = Instant::now();
    procs[2].sigterm();
    let status = procs[2].wait_exit(Duration::from_secs(60)).await;
    let exited = term.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    for l in load {
        l.await??;
    }
    let seen = seen.lock().expect("lock").clone();
    let last = seen.iter().filter(|(_, who)| *who == stopping).map(|(t, _)| *t).max();
    let last_after = last.map(|t| t.saturating_duration_since(term));
    println!(
        "drain: SIGTERM → last call answered by the stopping instance {:?} later (shutdown_delay 2 s, HAProxy checks every 200 ms); it exited after {exited:?} ({status}); {} calls, {} failed",
        last_after.unwrap_or_default(),
        seen.len(),
        std::sync::atomic::AtomicU64::load(&failed, std::sync::atomic::Ordering::Relaxed)
    );
    all &= std::sync::atomic::AtomicU64::load(&failed, std::sync::atomic::Ordering::Relaxed) == 0;

    // --- takeover: SIGKILL a blob migration's runner ---
    let mut c = cluster.connect(&db).await?;
    c.batch_execute(
        "CREATE TABLE docs (id bigint PRIMARY KEY, raw bytea, raw_ref text);
         INSERT INTO docs SELECT i, convert_to(repeat(md5(i::text), 64), 'UTF8'), NULL FROM generate_series(1, 20000) i;",
    )
    .await?;
    let spec = strata_client::types::BlobMigrationSpec {
        table_name: "docs".into(),
        key_column: "id".into(),
        blob_column: "raw".into(),
        reference_column: "raw_ref".into(),
        batch_size: 20,
        owner: "bench".into(),
        ..Default::default()
    };
    let id = through.start_blob_migration(&spec).await?.migration.context("a migration")?.id;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = runner(&mut c, &id).await?;
    let pid: u32 = first.split(':').nth(1).context("runner id")?.parse()?;
    let victim = procs.iter().position(|p| p.pid() == pid).context("the runner is one of ours")?;
    let killed = Instant::now();
    procs[victim].kill9();
    loop {
        let now = runner(&mut c, &id).await?;
        if now != first {
            println!(
                "takeover: a killed blob-migration runner was replaced {:?} later (run_lease 2 s)",
                killed.elapsed()
            );
            break;
        }
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("the migration was never taken over");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(proxy);
    drop(procs);
    println!("{}", if all { "ALL PASS" } else { "SOME FAILED" });
    Ok(())
}

/// Busy CPU seconds of the whole machine so far (all cores; `/proc/stat`), and the total.
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum::<f64>();
    let total = busy + f.get(3).unwrap_or(&0.0) + f.get(4).unwrap_or(&0.0);
    (busy / 100.0, total / 100.0)
}

/// Busy CPU seconds of the machine between two [`machine_jiffies`] readings, and the busy
/// fraction of all cores.
fn machine_cpu(before: (f64, f64), after: (f64, f64)) -> (f64, f64) {
    let busy = after.0 - before.0;
    (busy, busy / (after.1 - before.1).max(1e-9))
}

/// Small uploads measured, and how many at a time.
const SMALL_FILES: usize = 2_000;
const SMALL_CONCURRENCY: usize = 16;
const SMALL_SIZE: usize = 64 << 10;

/// Distinct 64 KiB files (distinct content: no upload is deduplicated against another).
fn small_file(i: usize) -> bytes::Bytes {
    let mut b = vec![0u8; SMALL_SIZE];
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for chunk in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    bytes::Bytes::from(b)
}

/// Files per second: [`SMALL_FILES`] uploads with the SDK (header and bytes in one stream, the
/// size declared), [`SMALL_CONCURRENCY`] at a time; the files are deleted afterwards. With the
/// machine's CPU during them ([`machine_cpu`]).
/// Also the CPU seconds the strata instances spent.
async fn small_uploads(c: &Client, pids: &[u32]) -> anyhow::Result<(f64, (f64, f64), f64)> {
    use futures::StreamExt as _;
    let files: Vec<bytes::Bytes> = (0..SMALL_FILES).map(small_file).collect();
    let split = || (pids.iter().map(|p| proc_cpu(*p)).sum::<f64>(), rusage_cpu(libc::RUSAGE_SELF));
    let (m, p0) = (machine_jiffies(), split());
    let t = Instant::now();
    let ids: Vec<String> = futures::stream::iter(files.into_iter().enumerate())
        .map(|(i, data)| async move {
            let f = c.upload_bytes(&UploadOptions::default(), &format!("small-{i}.bin"), data).await?;
            anyhow::Ok(f.id)
        })
        .buffer_unordered(SMALL_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let rate = SMALL_FILES as f64 / t.elapsed().as_secs_f64();
    let cpu = machine_cpu(m, machine_jiffies());
    let p1 = split();
    let per_file = |secs: f64| secs / SMALL_FILES as f64 * 1e6;
    let (servers, bench) = (p1.0 - p0.0, p1.1 - p0.1);
    println!(
        "    CPU per file through the fleet: strata instances {:.0} µs, this process (SDK client and S3 server) {:.0} µs, HAProxy, PostgreSQL and the rest {:.0} µs",
        per_file(servers),
        per_file(bench),
        per_file(cpu.0 - servers - bench)
    );
    futures::stream::iter(ids)
        .for_each_concurrent(SMALL_CONCURRENCY, |id| async move {
            let _ = c.delete_file(&id).await;
        })
        .await;
    Ok((rate, cpu, servers))
}

/// Files per second: the same files stored with aws-sdk-s3 PutObject straight to the S3 server,
/// [`SMALL_CONCURRENCY`] at a time, payload signing off as strata's. With the machine's CPU.
async fn small_puts(s3: &S3Server) -> anyhow::Result<(f64, (f64, f64))> {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
    use futures::StreamExt as _;
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            strata_tests::s3::ACCESS_KEY,
            strata_tests::s3::SECRET_KEY,
            None,
            None,
            "bench",
        ))
        .force_path_style(true)
        .endpoint_url(format!("http://{}", s3.addr))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    let files: Vec<bytes::Bytes> = (0..SMALL_FILES).map(small_file).collect();
    let m = machine_jiffies();
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(files.into_iter().enumerate())
        .map(|(i, data)| {
            let client = client.clone();
            async move {
                client
                    .put_object()
                    .bucket(&s3.bucket)
                    .key(format!("baseline/small-{i}"))
                    .content_length(data.len() as i64)
                    .body(aws_sdk_s3::primitives::ByteStream::from(data))
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SMALL_CONCURRENCY)
        .collect()
        .await;
    let rate = SMALL_FILES as f64 / t.elapsed().as_secs_f64();
    let cpu = machine_cpu(m, machine_jiffies());
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok((rate, cpu))
}

/// Streams the first `n` bytes of `data` into upload `id` and ends the stream, short of the
/// declared size: answered UPLOAD_INCOMPLETE once they are recorded.
async fn send_short(client: &Client, id: &str, data: &bytes::Bytes, n: usize) -> anyhow::Result<u64> {
    let chunks: Vec<bytes::Bytes> = (0..n).step_by(1 << 20).map(|a| data.slice(a..(a + (1 << 20)).min(n))).collect();
    match client.resume_upload(id, 0, futures::stream::iter(chunks)).await {
        Err(strata_client::Error::Status(s)) => {
            strata_client::incomplete_upload_offset(&s).with_context(|| format!("a short stream was answered {s:?}"))
        }
        other => bail!("a short stream was answered {other:?}"),
    }
}

/// Seconds from cancelling a call mid-stream (the connection stays open) to another instance
/// reporting the offset its checkpoint recorded: a stream sends `data` (1 GiB) to `writer`, is
/// cancelled 300 ms after 64 MiB are recorded (records come every second, so the next one is the
/// checkpoint's), and `other` is asked until the offset moves past the last one it saw.
async fn cancel_to_visible(writer: &Client, other: &Client, data: &bytes::Bytes) -> anyhow::Result<f64> {
    let id = writer.create_upload(&UploadOptions::default(), "cancelled.bin", Some(data.len() as u64)).await?;
    let chunks: Vec<bytes::Bytes> = (0..data.len()).step_by(1 << 20).map(|a| data.slice(a..a + (1 << 20))).collect();
    let (c, i) = (writer.clone(), id.clone());
    let call = tokio::spawn(async move { c.resume_upload(&i, 0, futures::stream::iter(chunks)).await });
    let t0 = Instant::now();
    let seen = loop {
        let s = other.upload_status(&id).await?.committed_offset;
        if s as usize >= 64 << 20 {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("no progress recorded");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Another few parts arrive after that record, so the checkpoint the cancel causes records more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.abort();
    let cancelled = Instant::now();
    loop {
        let now = other.upload_status(&id).await?;
        if now.committed_offset != seen {
            return Ok(cancelled.elapsed().as_secs_f64());
        }
        if cancelled.elapsed() > Duration::from_secs(10) {
            let call = call.await;
            bail!("the checkpoint after a cancel never became visible: {now:?}, seen {seen}; the call: {call:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Two 1 GiB uploads are written through the first instance to 100 MiB and to 900 MiB (streams
/// that end short); then each is continued `rounds` × 2 times on the other instances, in turn, by
/// a stream of one MiB that ends short (answered once the MiB is recorded). Returns the median
/// seconds of a continuation at 100 MiB and at 900 MiB, and the median milliseconds from a
/// cancel to the offset being visible on another instance.
async fn resume_offsets(procs: &[ServerProcess], rounds: usize) -> anyhow::Result<(f64, f64, f64)> {
    let size = 1usize << 30;
    let mut data = vec![0u8; size];
    let mut x = 0x5eed_u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    let data = bytes::Bytes::from(data);
    let writer = procs[0].client().await;
    let others = [procs[1].client().await, procs[2].client().await];
    let mut visible = Vec::new();
    for round in 0..rounds {
        visible.push(cancel_to_visible(&writer, &others[round % 2], &data).await?);
    }
    let mut uploads = Vec::new();
    for mib in [100, 900] {
        let id = writer.create_upload(&UploadOptions::default(), "resumed.bin", Some(size as u64)).await?;
        send_short(&writer, &id, &data, mib << 20).await?;
        uploads.push(id);
    }
    let (mut near, mut far) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        for (i, id) in uploads.iter().enumerate() {
            let c = &others[round % 2];
            let at = c.upload_status(id).await?.committed_offset as usize;
            let chunk = data.slice(at..at + (1 << 20));
            let t = Instant::now();
            match c.resume_upload(id, at as u64, futures::stream::iter([chunk])).await {
                Err(strata_client::Error::Status(s)) if strata_client::incomplete_upload_offset(&s).is_some() => {}
                other => bail!("a short continuation was answered {other:?}"),
            }
            let took = t.elapsed().as_secs_f64();
            if i == 0 { near.push(took) } else { far.push(took) }
        }
    }
    Ok((median(near), median(far), median(visible)))
}

/// The instance id a server puts in the `x-strata-instance` header of its answers.
async fn instance_of(url: &str) -> anyhow::Result<String> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?.connect().await?;
    let r = strata_client::pb::admin_service_client::AdminServiceClient::new(channel)
        .get_info(strata_client::pb::GetInfoRequest {})
        .await?;
    Ok(r.metadata().get("x-strata-instance").context("no x-strata-instance header")?.to_str()?.to_owned())
}

pub(crate) fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}
