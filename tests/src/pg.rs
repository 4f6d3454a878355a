//! A throw-away PostgreSQL cluster: primary plus one streaming replica on loopback.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every PostgreSQL command runs
//! as the `postgres` user through `runuser`. Binaries come from `STRATA_PG_BINDIR`, else
//! `pg_config --bindir`, else `/usr/lib/postgresql/15/bin`.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

/// Data directories of every node started by this process, stopped at exit.
static STARTED: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());

extern "C" fn stop_all_at_exit() {
    let dirs = std::mem::take(&mut *STARTED.lock().unwrap_or_else(|e| e.into_inner()));
    for (bindir, data) in dirs {
        let _ = pg_command(&bindir, "pg_ctl").args(["stop", "-m", "immediate", "-w", "-D"]).arg(&data).output();
        // The cluster's temporary root is owned by a static that is never dropped: remove it here,
        // or every run leaves a few hundred MB behind.
        if let Some(root) = data.parent()
            && root.file_name().is_some_and(|n| n.to_string_lossy().starts_with("strata-pg-"))
        {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

fn register_exit_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Statics are never dropped in Rust, so the shared cluster is stopped from an atexit hook;
        // the test harness exits through `std::process::exit`, which runs it.
        #[expect(unsafe_code, reason = "libc::atexit with an extern \"C\" fn that never unwinds")]
        unsafe {
            libc::atexit(stop_all_at_exit);
        }
    });
}

fn is_root() -> bool {
    #[expect(unsafe_code, reason = "geteuid cannot fail")]
    unsafe {
        libc::geteuid() == 0
    }
}

/// The directory of the PostgreSQL server binaries (initdb, pg_ctl, pg_dump, pg_restore).
/// The `n` column (BIGINT) of the one row `sql` returns on PostgreSQL: `SELECT count(*)::int8 AS n …`.
pub async fn count(c: &mut AsyncPgConnection, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel_async::RunQueryDsl::get_result::<N>(diesel::sql_query(sql), c).await.expect("a count").n
}

pub fn bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("STRATA_PG_BINDIR") {
        return d.into();
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").exists() {
            return d;
        }
    }
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

/// A command running `tool` from `bindir`, as `postgres` when we are root.
fn pg_command(bindir: &Path, tool: &str) -> Command {
    let exe = bindir.join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn run(mut c: Command) -> anyhow::Result<String> {
    let out = c.output().with_context(|| format!("spawning {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A free loopback TCP port (the listener is closed before PostgreSQL binds it).
///
/// Taken below the kernel's ephemeral range (32768–60999 by default), not from it: a port the
/// kernel hands out for `bind(0)` may be given to an outgoing connection (to PostgreSQL, S3, …)
/// before the server it was meant for binds it — seen as "Address already in use" in CI. Ports
/// are handed out in turn from a start that differs per process, each checked free, so tests of
/// one binary never get the same one and parallel binaries rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// One PostgreSQL server process.
#[derive(Debug)]
pub struct Node {
    /// Data directory.
    pub data: PathBuf,
    /// Loopback port.
    pub port: u16,
    log: PathBuf,
}

/// Primary plus one streaming replica.
#[derive(Debug)]
pub struct PgCluster {
    root: tempfile::TempDir,
    bindir: PathBuf,
    /// [`PgCluster::start_secure`]: the `postgres` role's password (TCP takes TLS and SCRAM only).
    password: Option<String>,
    /// The primary.
    pub primary: Node,
    /// The replica.
    pub replica: Node,
}

impl PgCluster {
    /// The cluster shared by every test of this process (started on first use).
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| PgCluster::start().expect("start PostgreSQL primary + replica"))
    }

    /// Starts a new primary and a streaming replica of it.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// [`PgCluster::start`] as production runs it: `ssl = on` with `cert` (and its key), and
    /// `pg_hba.conf` taking TCP connections only with TLS and SCRAM (`hostssl … scram-sha-256`),
    /// replication included, the `postgres` role's password `password`. The harness's own
    /// connections ([`PgCluster::primary_url`], …) go through the Unix socket (`local … trust`);
    /// [`PgCluster::tls_url`] is what a client over TCP uses.
    /// Clients certified by `cert`'s CA (`pki.ca`) may also log in as `certuser` with a client
    /// certificate whose CN is `certuser` (`hostssl … cert`), no password.
    pub fn start_secure(pki: &crate::pki::Pki, cert: &crate::pki::Issued, password: &str) -> anyhow::Result<Self> {
        Self::start_with(Some((pki, cert, password)))
    }

    fn start_with(secure: Option<(&crate::pki::Pki, &crate::pki::Issued, &str)>) -> anyhow::Result<Self> {
        register_exit_hook();
        let bindir = bindir();
        let root = tempfile::Builder::new().prefix("strata-pg-").tempdir()?;
        if is_root() {
            // The postgres user must own its directories.
            run({
                let mut c = Command::new("chown");
                c.arg("postgres:postgres").arg(root.path());
                c
            })?;
        }
        let primary =
            Node { data: root.path().join("primary"), port: free_port(), log: root.path().join("primary.log") };
        let mut initdb = pg_command(&bindir, "initdb");
        initdb
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(&primary.data);
        run(initdb)?;
        // Durability is irrelevant for a throw-away test cluster; fsync=off keeps it fast.
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nwal_level = replica\n\
             max_wal_senders = 10\nmax_replication_slots = 10\nhot_standby = on\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\nshared_buffers = 64MB\n\
             wal_receiver_status_interval = 1s\nhot_standby_feedback = on\n",
            primary.port,
            root.path().display()
        );
        append(&primary.data.join("postgresql.conf"), &conf)?;
        if let Some((pki, cert, _)) = secure {
            // The key must be the server's own and private (PostgreSQL refuses a readable one).
            for (from, to) in [(&cert.cert, "server.crt"), (&cert.key, "server.key"), (&pki.ca, "root.crt")] {
                std::fs::copy(from, primary.data.join(to))?;
            }
            if is_root() {
                run({
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres")
                        .arg(primary.data.join("server.crt"))
                        .arg(primary.data.join("server.key"));
                    c
                })?;
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(primary.data.join("server.key"), std::fs::Permissions::from_mode(0o600))?;
            append(
                &primary.data.join("postgresql.conf"),
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n\
                 password_encryption = 'scram-sha-256'\n",
            )?;
            std::fs::write(
                primary.data.join("pg_hba.conf"),
                "local all all trust\nlocal replication all trust\nhostssl all certuser 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\nhostssl replication all 127.0.0.1/32 scram-sha-256\n",
            )?;
        }
        let cluster_root = root.path().to_path_buf();
        let cluster = PgCluster {
            root,
            bindir,
            password: secure.map(|(_, _, p)| p.to_owned()),
            replica: Node {
                data: cluster_root.join("replica"),
                port: free_port(),
                log: cluster_root.join("replica.log"),
            },
            primary,
        };
        cluster.start_node(true)?;
        let mut bb = pg_command(&cluster.bindir, "pg_basebackup");
        match secure {
            None => {
                bb.args(["-h", "127.0.0.1", "-U", "postgres", "-p"]).arg(cluster.primary.port.to_string());
            }
            Some((_, _, password)) => {
                let mut psql = pg_command(&cluster.bindir, "psql");
                psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
                    .arg(cluster_root.as_os_str())
                    .args(["-p", &cluster.primary.port.to_string(), "-U", "postgres", "-d", "postgres", "-c"])
                    .arg(format!(
                        "ALTER ROLE postgres PASSWORD '{}'; CREATE ROLE certuser LOGIN SUPERUSER",
                        password.replace('\'', "''")
                    ));
                run(psql)?;
                // Over TCP, so TLS and SCRAM; -R keeps the connection string for the replica.
                let escaped = password.replace('\\', "\\\\").replace('\'', "\\'");
                bb.arg("-d").arg(format!(
                    "host=127.0.0.1 port={} user=postgres sslmode=require password='{escaped}'",
                    cluster.primary.port
                ));
            }
        }
        bb.args(["-R", "-X", "stream", "-C", "-S", "strata_test_replica", "-D"]).arg(&cluster.replica.data);
        run(bb)?;
        append(&cluster.replica.data.join("postgresql.auto.conf"), &format!("port = {}\n", cluster.replica.port))?;
        cluster.start_node(false)?;
        Ok(cluster)
    }

    fn node(&self, primary: bool) -> &Node {
        if primary { &self.primary } else { &self.replica }
    }

    fn start_node(&self, primary: bool) -> anyhow::Result<()> {
        let n = self.node(primary);
        let mut c = pg_command(&self.bindir, "pg_ctl");
        c.args(["start", "-w", "-t", "60", "-D"]).arg(&n.data).arg("-l").arg(&n.log);
        run(c).with_context(|| format!("log: {}", std::fs::read_to_string(&n.log).unwrap_or_default()))?;
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        if !started.iter().any(|(_, d)| d == &n.data) {
            started.push((self.bindir.clone(), n.data.clone()));
        }
        Ok(())
    }

    fn stop_node(&self, primary: bool) -> anyhow::Result<()> {
        let n = self.node(primary);
        let mut c = pg_command(&self.bindir, "pg_ctl");
        c.args(["stop", "-m", "fast", "-w", "-D"]).arg(&n.data);
        run(c)?;
        Ok(())
    }

    /// Stops the primary (fast shutdown: connections are closed).
    pub fn stop_primary(&self) -> anyhow::Result<()> {
        self.stop_node(true)
    }
    /// Starts the primary again.
    pub fn start_primary(&self) -> anyhow::Result<()> {
        self.start_node(true)
    }
    /// Stops the replica.
    pub fn stop_replica(&self) -> anyhow::Result<()> {
        self.stop_node(false)
    }
    /// Starts the replica again.
    pub fn start_replica(&self) -> anyhow::Result<()> {
        self.start_node(false)
    }

    /// URL of database `db` on the primary (through the Unix socket on a secure cluster).
    pub fn primary_url(&self, db: &str) -> String {
        self.harness_url(&self.primary, db)
    }

    fn harness_url(&self, node: &Node, db: &str) -> String {
        match &self.password {
            None => format!("postgres://postgres@127.0.0.1:{}/{db}", node.port),
            Some(_) => format!("postgres:///{db}?user=postgres&host={}&port={}", self.root.path().display(), node.port),
        }
    }

    /// A secure cluster's URL of `db` over TCP with TLS and the password (percent-encoded),
    /// `sslmode` and `params` appended: what strata gets.
    pub fn tls_url(&self, primary: bool, db: &str, params: &str) -> String {
        let password = self.password.as_deref().expect("a cluster from start_secure");
        let encoded = percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
        format!("postgres://postgres:{encoded}@localhost:{}/{db}?{params}", self.node(primary).port)
    }

    /// URL naming both nodes, for the one accepting writes (libpq's multi-host form): after
    /// [`PgCluster::promote_replica`] it leads to the replica.
    pub fn failover_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.primary.port, self.replica.port
        )
    }

    /// Promotes the replica to primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote_replica(&self) -> anyhow::Result<()> {
        let mut c = pg_command(&self.bindir, "pg_ctl");
        c.args(["promote", "-w", "-t", "60", "-D"]).arg(&self.replica.data);
        run(c).map(|_| ())
    }

    /// URL of database `db` on the replica (through the Unix socket on a secure cluster).
    pub fn replica_url(&self, db: &str) -> String {
        self.harness_url(&self.replica, db)
    }

    /// Creates a fresh database with a unique name and waits until the replica has it.
    pub async fn create_database(&self, prefix: &str) -> anyhow::Result<String> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}_{}_{n}", std::process::id());
        let mut admin = AsyncPgConnection::establish(&self.primary_url("postgres")).await?;
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await?;
        self.wait_for_replica(&name).await?;
        Ok(name)
    }

    /// Waits until database `db` is reachable on the replica (replication caught up).
    pub async fn wait_for_replica(&self, db: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match AsyncPgConnection::establish(&self.replica_url(db)).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!("database {db} never reached the replica: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Opens a connection to database `db` on the primary.
    pub async fn connect(&self, db: &str) -> anyhow::Result<AsyncPgConnection> {
        Ok(AsyncPgConnection::establish(&self.primary_url(db)).await?)
    }

    /// The primary's data directory (for ground-truth file sizes).
    pub fn primary_data_dir(&self) -> &Path {
        &self.primary.data
    }

    /// Root temp directory of the cluster.
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().append(true).open(path).with_context(|| format!("open {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        for primary in [false, true] {
            let n = self.node(primary);
            let _ =
                pg_command(&self.bindir, "pg_ctl").args(["stop", "-m", "immediate", "-w", "-D"]).arg(&n.data).output();
            STARTED.lock().unwrap_or_else(|e| e.into_inner()).retain(|(_, d)| d != &n.data);
        }
    }
}
