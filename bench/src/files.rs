//! File benchmarks: 1 GiB uploads and downloads through a real `strata-server` process, each
//! against its baseline measured in the same run.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aws_sdk_s3::{
    config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation},
    primitives::ByteStream,
    types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart},
};
use strata_client::{Client, types::UploadOptions};
use strata_tests::{
    S3Server,
    s3::{ACCESS_KEY, SECRET_KEY},
};

/// A `strata-server` child process (the release binary beside this one).
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) url: String,
}

impl ServerProcess {
    pub(crate) async fn start(dir: &Path, object_store_url: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?.with_file_name("strata-server");
        if !exe.exists() {
            bail!("{} not found: build it with `cargo build --release -p strata-server`", exe.display());
        }
        let port = strata_tests::pg::free_port();
        let child = Command::new(exe)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.join("strata.db").display()))
            .arg("--object-store-url")
            .arg(object_store_url)
            // No admin listener (its default port would collide between runs) and no drain delay.
            .args(["--admin-listen", "off", "--shutdown-delay", "0"])
            // One client is one caller: measure the path, not the per-caller limits.
            .args(["--rate-limit", "0", "--max-calls-per-caller", "0"])
            .args(extra)
            .env("STRATA_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = Client::connect(url.clone()).await
                && c.health("").await.is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("strata-server did not start");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self { child, url })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of `pid` in bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/PID/stat`.
pub(crate) fn proc_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// CPU seconds (user + system) from `getrusage(who)`: this process (`RUSAGE_SELF`) or its
/// waited-for children (`RUSAGE_CHILDREN`).
pub(crate) fn rusage_cpu(who: libc::c_int) -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    #[expect(unsafe_code, reason = "reading CPU time")]
    let r = unsafe {
        libc::getrusage(who, u.as_mut_ptr());
        u.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(r.ru_utime) + tv(r.ru_stime)
}

/// CPU seconds used so far by this process and by `pid`: what an upload costs on both sides,
/// which bounds how fast two cores can finish it.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    (rusage_cpu(libc::RUSAGE_SELF), proc_cpu(pid))
}

/// Prints the CPU an upload took on each side since `before`.
fn print_cpu(what: &str, pid: u32, before: (f64, f64), wall: Duration) {
    let after = cpu_seconds(pid);
    let (client, server) = (after.0 - before.0, after.1 - before.1);
    println!(
        "    {what}: {:.2} s wall, CPU {client:.2} s SDK + {server:.2} s server = {:.2} core-seconds (≥ {:.2} s on 2 cores)",
        wall.as_secs_f64(),
        client + server,
        (client + server) / 2.0
    );
}

/// Samples the peak RSS of `pid` until dropped.
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss(pid)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { stop, peak, thread: Some(thread) }
    }
    pub(crate) fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Writes `size` bytes of pseudo-random data (unique per seed, so runs never deduplicate).
pub(crate) fn make_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    f.get_ref().sync_all()?;
    Ok(())
}

fn time_cmd(cmd: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !st.success() {
        bail!("`{cmd}` failed");
    }
    Ok(t.elapsed())
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// One comparison's rounds: (strata, baseline) times.
#[derive(Default)]
struct Rounds(Vec<(Duration, Duration)>);

impl Rounds {
    fn add(&mut self, strata: Duration, base: Duration) {
        self.0.push((strata, base));
    }

    /// Prints every round and the median ratio; returns whether the median meets `target`.
    fn report(&self, what: &str, bytes: u64, base_name: &str, target: f64) -> bool {
        let mut ratios: Vec<f64> = self.0.iter().map(|(s, b)| b.as_secs_f64() / s.as_secs_f64()).collect();
        for (i, (s, b)) in self.0.iter().enumerate() {
            println!(
                "  {what}, round {}: strata {:.2}s ({:.2} GB/s) vs {base_name} {:.2}s ({:.2} GB/s) → {:.2}",
                i + 1,
                s.as_secs_f64(),
                gbps(bytes, *s),
                b.as_secs_f64(),
                gbps(bytes, *b),
                ratios[i]
            );
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let pass = median >= target;
        println!(
            "{what}: median ratio {median:.2} over {} rounds (target ≥ {target}) {}",
            ratios.len(),
            if pass { "PASS" } else { "FAIL" }
        );
        pass
    }
}

/// Every file benchmark; `size` bytes each, `rounds` times.
pub(crate) async fn run(size: u64, rounds: usize, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let work = match dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::Builder::new().prefix("strata-bench-").tempdir_in(".")?,
    };
    let w = work.path();
    println!("working in {} with {} MiB files, {rounds} rounds", w.display(), size >> 20);
    let src = w.join("source.bin");
    let pid = u64::from(std::process::id());
    let mut all = true;

    // --- local store ---
    let objects = w.join("objects");
    let server = ServerProcess::start(w, &format!("file://{}", objects.display()), &[]).await?;
    let client = Client::connect(server.url.clone()).await?;
    let (mut up, mut up_sha, mut down) = (Rounds::default(), Rounds::default(), Rounds::default());
    let mut growth = 0;
    for round in 0..rounds as u64 {
        // Upload vs cp + sync. Fresh content every time, so nothing deduplicates.
        make_file(&src, size, 0x5eed ^ pid ^ (round << 32))?;
        // Warm the page cache of the source for both sides alike.
        time_cmd(&format!("cat {} > /dev/null", src.display()))?;
        sync();
        let base = time_cmd(&format!("cp {} {} && sync", src.display(), w.join("cp.bin").display()))?;
        std::fs::remove_file(w.join("cp.bin"))?;
        sync();
        let before = rss(server.pid());
        let sampler = RssSampler::start(server.pid());
        let cpu = cpu_seconds(server.pid());
        let t = Instant::now();
        let file = client.upload_path(&src, &UploadOptions::default(), |_, _| {}).await?;
        let took = t.elapsed();
        print_cpu("upload", server.pid(), cpu, took);
        growth = growth.max(sampler.finish().saturating_sub(before));
        anyhow::ensure!(file.size_bytes == size, "uploaded size");
        up.add(took, base);

        // With a declared SHA-256 vs openssl.
        make_file(&src, size, 0xface ^ pid ^ (round << 32))?;
        let sha = strata_client::sha256_of(&src).await?;
        time_cmd(&format!("cat {} > /dev/null", src.display()))?;
        let base = time_cmd(&format!("openssl dgst -sha256 {} > /dev/null", src.display()))?;
        let opts = UploadOptions { declared_sha256: Some(sha), ..Default::default() };
        let cpu = cpu_seconds(server.pid());
        let t = Instant::now();
        let with_sha = client.upload_path(&src, &opts, |_, _| {}).await?;
        up_sha.add(t.elapsed(), base);
        print_cpu("upload with SHA-256", server.pid(), cpu, t.elapsed());
        anyhow::ensure!(with_sha.sha256.is_some(), "sha256 verified");
        client.delete_file(&with_sha.id).await?;

        // Download vs cp of the stored object (the only one left).
        let stored = objects.join("blobs").read_dir()?.next().context("stored object")??.path();
        // The server writes objects around the page cache: warm it for both sides alike.
        time_cmd(&format!("cat {} > /dev/null", stored.display()))?;
        sync();
        let base = time_cmd(&format!("cp {} {} && sync", stored.display(), w.join("cp2.bin").display()))?;
        std::fs::remove_file(w.join("cp2.bin"))?;
        let t = Instant::now();
        client.download_to(&file.id, w.join("download.bin")).await?;
        down.add(t.elapsed(), base);
        std::fs::remove_file(w.join("download.bin"))?;
        client.delete_file(&file.id).await?;
    }
    all &= up.report("upload → file://", size, "cp+sync", 0.8);
    let rss_ok = growth <= 64 << 20;
    all &= rss_ok;
    println!(
        "server RSS growth during uploads: at most {} MiB (target ≤ 64) {}",
        growth >> 20,
        if rss_ok { "PASS" } else { "FAIL" }
    );
    all &= up_sha.report("upload with declared SHA-256 → file://", size, "openssl dgst -sha256", 0.9);
    all &= down.report("download → file", size, "cp+sync", 0.8);
    drop(client);
    drop(server);
    std::fs::remove_dir_all(&objects)?;

    // --- S3: strata vs the fastest direct multipart upload ---
    let s3 = S3Server::start("bench")?;
    let server = ServerProcess::start(w, &s3.url(), &["--s3-concurrency", "4"]).await?;
    let client = Client::connect(server.url.clone()).await?;
    let mut s3_up = Rounds::default();
    for round in 0..rounds as u64 {
        make_file(&src, size, 0x53 ^ pid ^ (round << 32))?;
        time_cmd(&format!("cat {} > /dev/null", src.display()))?;
        let base = direct_multipart(&s3, &src, 8 << 20, 4).await?;
        let t = Instant::now();
        let file = client.upload_path(&src, &UploadOptions::default(), |_, _| {}).await?;
        s3_up.add(t.elapsed(), base);
        client.delete_file(&file.id).await?;
    }
    all &= s3_up.report("upload → S3 (s3s-fs)", size, "aws-sdk-s3 multipart", 0.9);
    drop(client);
    drop(server);
    drop(s3);
    println!("{}", if all { "ALL PASS" } else { "SOME FAILED" });
    Ok(())
}

/// The baseline: aws-sdk-s3 multipart upload straight to the server, `concurrency` parts in flight,
/// payload signing off, CRC32 checksums on.
async fn direct_multipart(s3: &S3Server, src: &Path, part: usize, concurrency: usize) -> anyhow::Result<Duration> {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "bench"))
        .force_path_style(true)
        .endpoint_url(format!("http://{}", s3.addr))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    let key = "baseline.bin";
    let t = Instant::now();
    let up = client.create_multipart_upload().bucket(&s3.bucket).key(key).send().await?;
    let id = up.upload_id().context("upload id")?.to_owned();
    let mut file = tokio::fs::File::open(src).await?;
    let mut set = tokio::task::JoinSet::new();
    let mut parts = Vec::new();
    let mut number = 1;
    loop {
        let mut buf = vec![0u8; part];
        let mut filled = 0;
        while filled < part {
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        while set.len() >= concurrency {
            parts.push(set.join_next().await.context("part")???);
        }
        let (c, b, i) = (client.clone(), s3.bucket.clone(), id.clone());
        let n = number;
        set.spawn(async move {
            let out = c
                .upload_part()
                .bucket(b)
                .key(key)
                .upload_id(i)
                .part_number(n)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(ByteStream::from(buf))
                .customize()
                .disable_payload_signing()
                .send()
                .await?;
            Ok::<_, anyhow::Error>(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                    .build(),
            )
        });
        number += 1;
    }
    while let Some(p) = set.join_next().await {
        parts.push(p??);
    }
    parts.sort_by_key(|p| p.part_number());
    client
        .complete_multipart_upload()
        .bucket(&s3.bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await?;
    Ok(t.elapsed())
}
