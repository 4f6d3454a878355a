mod cli;

use std::io::Read as _;

use anyhow::Context as _;
use clap::Parser as _;
use strata_server::{
    Server,
    config::{Config, LogFormat},
    db::{Db, DbSettings, redact_url},
    grpc::auth::hash_token,
    telemetry,
};

use crate::cli::{Cli, Command};

/// Streams allocate a buffer per message (≈ 1 MiB for file chunks); glibc's malloc handed such
/// buffers back to the kernel and page-faulted fresh ones in: measured, 16 % of the server's CPU
/// during a 3 GiB upload went to page faults. mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::HashToken { token }) = &cli.command {
        let token = match token {
            Some(t) => t.clone(),
            None => {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s.trim_end_matches(['\r', '\n']).to_owned()
            }
        };
        anyhow::ensure!(!token.is_empty(), "empty token");
        println!("{}", hash_token(&token));
        return Ok(());
    }
    let config = Config::load(&cli.config)?;
    // Diesel's migration harness for PostgreSQL blocks on async work: needs the multi-thread runtime.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Inside the runtime: the OTLP exporter's channel lives there.
    let telemetry = {
        let _runtime = rt.enter();
        telemetry::init(config.log_format == LogFormat::Json, config.otlp_endpoint.as_deref())
            .map_err(anyhow::Error::msg)?
    };
    rt.block_on(async move {
        let done = run(cli.command, config).await;
        telemetry.shutdown().await;
        done
    })
    .context("strata-server failed")
}

/// Runs the command (serve by default) to its end.
async fn run(command: Option<Command>, config: Config) -> anyhow::Result<()> {
    {
        match command {
            Some(Command::Migrate) => {
                tracing::info!(database = %redact_url(&config.database_url), "running migrations");
                let db = Db::connect(DbSettings {
                    url: config.database_url.clone(),
                    replica_urls: Vec::new(),
                    pool_max_size: 1,
                    acquire_timeout: config.pool_acquire_timeout,
                    statement_timeout: config.statement_timeout,
                    connect_timeout: config.connect_timeout,
                    max_replica_lag: config.max_replica_lag,
                    metrics: Default::default(),
                })
                .await?;
                db.wait_ready(config.startup_timeout).await?;
                let n = db.migrate().await?;
                println!("applied {n} migration(s)");
                Ok(())
            }
            None | Some(Command::Serve) => {
                tracing::info!(
                    database = %redact_url(&config.database_url),
                    replicas = config.replica_urls.len(),
                    listen = %config.listen,
                    "starting strata {}", env!("CARGO_PKG_VERSION")
                );
                // Before the server answers anyone: a SIGTERM that arrived before the handler
                // existed would kill the process without its shutdown.
                let mut signals = Signals::new()?;
                let server = Server::start(config).await?;
                let (stop, hurry) = (server.shutdown_token(), server.hurry_token());
                tokio::spawn(async move {
                    signals.next().await;
                    tracing::info!("shutdown requested (a second signal skips the rest of shutdown_delay)");
                    stop.cancel();
                    signals.next().await;
                    hurry.cancel();
                });
                server.wait().await
            }
            Some(Command::HashToken { .. }) => unreachable!("handled before the runtime starts"),
        }
    }
}

/// SIGTERM and ctrl-c (SIGINT), listened for from the moment this is made.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
                int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next SIGTERM or ctrl-c.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! { _ = self.term.recv() => {}, _ = self.int.recv() => {} }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
