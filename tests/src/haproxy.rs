//! HAProxy in front of strata instances, as a fleet is deployed: HTTP/2 cleartext to clients and to
//! each instance, round-robin per call, each instance health-checked on its admin listener's
//! `/readyz`. Debian's `haproxy` (`/usr/sbin/haproxy`, or `STRATA_HAPROXY`), on a free loopback
//! port; killed when dropped, its log printed if the test failed.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use strata_client::Client;

use crate::pg::free_port;

/// One strata instance behind the proxy.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// Its gRPC address.
    pub grpc: SocketAddr,
    /// Its admin listener's address (`/readyz` is checked there).
    pub admin: SocketAddr,
}

/// A running HAProxy; killed when dropped.
pub struct Haproxy {
    child: Child,
    /// Where clients connect (HTTP/2 cleartext).
    pub addr: SocketAddr,
    /// The configuration and the log.
    dir: tempfile::TempDir,
}

/// The HAProxy binary: `STRATA_HAPROXY`, else `/usr/sbin/haproxy`, else `haproxy` on PATH.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_HAPROXY") {
        return p.into();
    }
    let debian = PathBuf::from("/usr/sbin/haproxy");
    if debian.exists() { debian } else { PathBuf::from("haproxy") }
}

/// The configuration: clients on `port`, the instances `backends`. Also the example in
/// docs/operations.md.
pub fn config(port: u16, backends: &[Backend]) -> String {
    let mut cfg = format!(
        "\
global
    log stderr format raw local0 info
    # Streams (uploads, downloads) at full speed through the proxy: HTTP/2 windows like strata's
    # own (8 MiB; HAProxy's default 64 KiB stalls a 1 GiB upload on every window), and buffers
    # and frames of 64 KiB (fewer wake-ups per MiB streamed; larger ones cost unary calls more).
    tune.bufsize 65536
    tune.h2.initial-window-size 8388608
    tune.h2.max-frame-size 65527

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    # gRPC streams (downloads, WatchAlerts) stay open and may be quiet for long.
    timeout client 1h
    timeout server 1h
    timeout check 1s
    # A call that could not reach an instance (it died before the checks noticed) goes to another
    # one: nothing was sent, so it is safe for any call.
    retries 3
    option redispatch 1
    retry-on conn-failure
    # HAProxy's own answers (no instance could take the call, a malformed request, ...) carry
    # a gRPC status in their headers, as gRPC maps HTTP statuses: clients read UNAVAILABLE and a
    # message instead of an HTML page they would take for a garbled message.
    http-error status 400 hdr grpc-status 13 hdr grpc-message \"HAProxy%%20400:%%20bad%%20request\"
    http-error status 403 hdr grpc-status 7 hdr grpc-message \"HAProxy%%20403:%%20denied\"
    http-error status 408 hdr grpc-status 2 hdr grpc-message \"HAProxy%%20408:%%20request%%20timeout\"
    http-error status 500 hdr grpc-status 2 hdr grpc-message \"HAProxy%%20500:%%20internal%%20error\"
    http-error status 502 hdr grpc-status 14 hdr grpc-message \"HAProxy%%20502:%%20bad%%20answer%%20from%%20an%%20instance\"
    http-error status 503 hdr grpc-status 14 hdr grpc-message \"HAProxy%%20503:%%20no%%20instance%%20could%%20take%%20the%%20call\"
    http-error status 504 hdr grpc-status 14 hdr grpc-message \"HAProxy%%20504:%%20no%%20answer%%20from%%20an%%20instance%%20in%%20time\"

frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend strata

backend strata
    balance roundrobin
    option httpchk GET /readyz
    # Out of rotation after one failed check (a draining instance answers 503), back after two.
    default-server inter 200ms fall 1 rise 2
"
    );
    for (i, b) in backends.iter().enumerate() {
        // `check-proto h1`: the checks speak HTTP/1.1 to the admin port; calls speak h2.
        cfg.push_str(&format!("    server s{i} {} proto h2 check check-proto h1 port {}\n", b.grpc, b.admin.port()));
    }
    cfg
}

impl Haproxy {
    /// Starts HAProxy in front of `backends` and waits (at most 10 s) until it accepts connections.
    pub async fn start(backends: &[Backend]) -> anyhow::Result<Self> {
        Self::start_with(backends, true, false).await
    }

    /// [`Haproxy::start`] telling the instances each client's address with the PROXY protocol
    /// (`send-proxy-v2`; the instances must list 127.0.0.1 in `trusted_proxies`).
    pub async fn start_proxy_protocol(backends: &[Backend]) -> anyhow::Result<Self> {
        Self::start_with(backends, true, true).await
    }

    /// [`Haproxy::start`] without a log line per call (benchmarks: at 100k calls/s the log, not
    /// the proxying, would be measured); servers going down and up are still logged.
    pub async fn start_quiet(backends: &[Backend]) -> anyhow::Result<Self> {
        Self::start_with(backends, false, false).await
    }

    async fn start_with(backends: &[Backend], log_calls: bool, send_proxy: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let cfg = dir.path().join("haproxy.cfg");
        let mut text = config(port, backends);
        if !log_calls {
            text = text.replace("    log global\n    option httplog\n", "");
        }
        if send_proxy {
            // Health checks (to the admin port, `port …`) do not send the header.
            text = text.replace(" proto h2 check ", " proto h2 send-proxy-v2 check ");
        }
        std::fs::write(&cfg, text)?;
        let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
        let exe = binary();
        // -db: stay in the foreground, so that the process we hold is HAProxy itself.
        let child = Command::new(&exe)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} (apt-get install haproxy)", exe.display()))?;
        let mut proxy = Self { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = proxy.child.try_wait()? {
                bail!("haproxy exited at start ({status}); its log:\n{}", proxy.log());
            }
            if tokio::net::TcpStream::connect(proxy.addr).await.is_ok() {
                return Ok(proxy);
            }
            if Instant::now() >= deadline {
                bail!("haproxy did not listen on {} within 10 s; its log:\n{}", proxy.addr, proxy.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Calls through the proxy until `n` distinct instances have answered, at most `limit`: each
    /// passed HAProxy's checks and serves. Returns their ids (`host:pid:random`, as
    /// GetSchedulerStatus and the `x-strata-instance` header name them). Calls before then may
    /// fail: HAProxy answers UNAVAILABLE while no instance is up yet.
    pub async fn wait_for_instances(&self, n: usize, limit: Duration) -> anyhow::Result<BTreeSet<String>> {
        let deadline = Instant::now() + limit;
        let client = Client::connect(self.url()).await?;
        let mut seen = BTreeSet::new();
        let mut last_error = String::new();
        while seen.len() < n {
            if Instant::now() >= deadline {
                bail!("only {seen:?} of {n} instances answered through haproxy in {limit:?}; last error: {last_error}");
            }
            // GetSchedulerStatus names the instance that answered, in every release.
            match client.scheduler_status().await {
                Ok(s) => {
                    seen.insert(s.this_instance);
                }
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(seen)
    }

    /// Its process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What HAProxy logged so far: one line per call, and every server going down or up.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Every server going down or up, and the last calls (one line each).
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines.len().saturating_sub(100);
            let shown: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(i, l)| *i >= tail || l.contains("Server ") || l.contains("ALERT"))
                .map(|(_, l)| *l)
                .collect();
            eprintln!("--- haproxy log (server changes, last 100 lines) ---\n{}\n---", shown.join("\n"));
        }
    }
}
