//! strata-server: the storage-lifecycle control plane.
//!
//! Layers (arrows point one way): `grpc` → `service` → `db`; `jobs` → `service`.

pub mod config;
pub mod db;
pub mod grpc;
pub mod jobs;
pub mod model;
pub mod objects;
pub mod service;
pub mod telemetry;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    db::{Db, DbSettings},
    objects::{ObjectStore, S3Settings},
    service::Context,
};

/// A running server: its address and the handle to stop it.
pub struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Connects to the database (waiting up to `startup_timeout`), runs migrations, binds the
    /// listener and starts serving plus the background jobs.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let db = Db::connect(DbSettings {
            url: config.database_url.clone(),
            replica_urls: config.replica_urls.clone(),
            pool_max_size: config.pool_max_size,
            acquire_timeout: config.pool_acquire_timeout,
            statement_timeout: config.statement_timeout,
            connect_timeout: config.connect_timeout,
            max_replica_lag: config.max_replica_lag,
        })
        .await?;
        db.wait_ready(config.startup_timeout).await.context("database not ready")?;
        let ran = db.migrate().await.context("migrations")?;
        if ran > 0 {
            tracing::info!(migrations = ran, "applied migrations");
        }
        if config.tokens.is_empty() {
            tracing::warn!("no auth tokens configured: only loopback clients are served");
        }
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let objects = ObjectStore::open(
            &config.object_store_url,
            &S3Settings {
                part_size: config.s3_part_size,
                concurrency: config.s3_concurrency,
                storage_class: config.s3_storage_class.clone(),
            },
        )
        .await
        .with_context(|| format!("object store {}", db::redact_url(&config.object_store_url)))?;
        let ctx = Context::new(db, objects, config, jobs::dispatch::start);
        // Before serving: the built-in jobs and rules exist once the server answers.
        let jobs = service::scheduler::ensure_builtin(&ctx).await.context("creating the built-in jobs")?;
        let rules = service::alerts::ensure_builtin(&ctx).await.context("creating the built-in alert rules")?;
        if jobs + rules > 0 {
            tracing::info!(jobs, rules, "built-in jobs and alert rules created");
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(ctx, listener, shutdown.clone()));
        tracing::info!(%addr, "strata listening");
        Ok(Self { addr, shutdown, task })
    }

    /// The address the server listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Serves until `shutdown`; then stops accepting RPCs, cancels jobs and closes the pools, in order.
async fn run(ctx: Context, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let jobs_cancel = CancellationToken::new();
    let mut jobs =
        vec![tokio::spawn(jobs::monitor(ctx.clone(), ctx.config.health_check_interval, jobs_cancel.clone()))];
    if ctx.config.run_scheduler {
        let every = ctx.config.scheduler_poll_interval;
        jobs.push(tokio::spawn(jobs::scheduler(ctx.clone(), every, jobs_cancel.clone())));
        jobs.push(tokio::spawn(jobs::notifier(
            ctx.clone(),
            every.min(Duration::from_millis(500)),
            jobs_cancel.clone(),
        )));
    }
    jobs.push(tokio::spawn(jobs::feed::tail(ctx.clone(), jobs_cancel.clone())));
    jobs.push(tokio::spawn(jobs::blob_migrations(
        ctx.clone(),
        ctx.config.scheduler_poll_interval,
        jobs_cancel.clone(),
    )));
    match service::archive::mark_orphaned_runs(&ctx).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(runs = n, "archive runs of a stopped server recorded as interrupted"),
        Err(e) => tracing::error!(error = %e, "checking for interrupted archive runs failed"),
    }
    {
        let (closing, shutdown) = (ctx.closing.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            closing.cancel();
        });
    }
    let served = grpc::serve(ctx.clone(), listener, shutdown).await;
    jobs_cancel.cancel();
    ctx.background.cancel();
    // Runs stop after their current batch and record how they ended.
    ctx.tasks.close();
    let grace = ctx.config.shutdown_grace;
    if tokio::time::timeout(grace, ctx.tasks.wait()).await.is_err() {
        tracing::warn!("background work still running after {grace:?}; stopping anyway");
    }
    for j in jobs {
        let _ = j.await;
    }
    // Dropping the last Context closes the pools.
    drop(ctx);
    tracing::info!("strata stopped");
    served.context("gRPC server failed")
}
