//! A real strata server on `127.0.0.1:0` for tests and benchmarks.

use std::{net::SocketAddr, path::Path, time::Duration};

use strata_client::Client;
use strata_server::{
    Server,
    config::{Config, ListenAddr, Role, TokenSpec},
    grpc::auth::hash_token,
};

use crate::PgCluster;

/// Viewer token configured by [`test_tokens`].
pub const VIEWER_TOKEN: &str = "viewer-token-for-tests";
/// Operator token configured by [`test_tokens`].
pub const OPERATOR_TOKEN: &str = "operator-token-for-tests";
/// Admin token configured by [`test_tokens`].
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// A running server plus what a test needs to talk to it.
pub struct TestServer {
    server: Option<Server>,
    /// Its address.
    pub addr: SocketAddr,
    /// Its admin HTTP listener's address (`/livez`, `/readyz`), unless the config turned it off.
    pub admin_addr: Option<SocketAddr>,
}

/// A configuration suited to tests: port 0 (admin listener too), fast health checks, no scheduled
/// jobs (tests that want them turn them on), short timeouts, no shutdown delay (tests that drain
/// like a load balancer wants set one).
pub fn test_config(database_url: String, replica_urls: Vec<String>, objects: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url,
        replica_urls,
        object_store_url: format!("file://{}", objects.display()),
        pool_max_size: 8,
        pool_acquire_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(2),
        max_replica_lag: Duration::from_secs(10),
        health_check_interval: Duration::from_millis(200),
        run_scheduler: false,
        scheduler_poll_interval: Duration::from_millis(100),
        startup_timeout: Duration::from_secs(30),
        tokens: Vec::new(),
        admin_listen: ListenAddr(Some("127.0.0.1:0".parse().expect("addr"))),
        shutdown_delay: Duration::ZERO,
        ..Config::default()
    }
}

/// The viewer and operator token specs.
pub fn test_tokens() -> Vec<TokenSpec> {
    vec![
        TokenSpec { name: "test-viewer".into(), role: Role::Viewer, sha256: hash_token(VIEWER_TOKEN) },
        TokenSpec { name: "test-operator".into(), role: Role::Operator, sha256: hash_token(OPERATOR_TOKEN) },
        TokenSpec { name: "test-admin".into(), role: Role::Admin, sha256: hash_token(ADMIN_TOKEN) },
    ]
}

impl TestServer {
    /// Starts a server with `config`.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        strata_server::telemetry::init_for_tests();
        let server = Server::start(config).await?;
        Ok(Self { addr: server.addr(), admin_addr: server.admin_addr(), server: Some(server) })
    }

    /// A server on a fresh SQLite file inside `dir`.
    pub async fn sqlite(dir: &Path) -> anyhow::Result<Self> {
        Self::start(test_config(
            format!("sqlite://{}", dir.join("strata.db").display()),
            Vec::new(),
            &dir.join("objects"),
        ))
        .await
    }

    /// A server on database `db` of `cluster`, reading from its replica.
    pub async fn postgres(cluster: &PgCluster, db: &str, objects: &Path) -> anyhow::Result<Self> {
        Self::start(test_config(cluster.primary_url(db), vec![cluster.replica_url(db)], objects)).await
    }

    /// The server URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server URL for a server with TLS: `https://localhost:PORT` (the name the test
    /// certificates of [`crate::pki::Pki::server`] carry).
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The admin listener's URL (`http://ADDR`); panics when it is off.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr.expect("the admin listener is on"))
    }

    /// A token that begins the server's shutdown when cancelled (as SIGTERM does).
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.server.as_ref().expect("running").shutdown_token()
    }

    /// A client without token.
    pub async fn client(&self) -> Client {
        Client::connect(self.url()).await.expect("connect to test server")
    }

    /// A client with `token`.
    pub async fn client_with(&self, token: &str) -> Client {
        self.client().await.with_token(token).expect("token")
    }

    /// Stops the server and waits for a clean shutdown.
    /// Bounded: a server that does not stop fails the test rather than holding the suite.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        const LIMIT: Duration = Duration::from_secs(120);
        match self.server.take() {
            Some(s) => tokio::time::timeout(LIMIT, s.stop())
                .await
                .map_err(|_| anyhow::anyhow!("the server did not stop within {LIMIT:?}"))?,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.shutdown_token().cancel();
        }
    }
}
