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

/// A running server: its addresses and the handle to stop it.
pub struct Server {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    hurry: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Connects to the database (waiting up to `startup_timeout`), runs migrations, binds the
    /// listeners (gRPC and admin HTTP) and starts serving plus the background jobs.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let metrics = telemetry::Metrics::new();
        let db = Db::connect(DbSettings {
            url: config.database_url.clone(),
            replica_urls: config.replica_urls.clone(),
            pool_max_size: config.pool_max_size,
            acquire_timeout: config.pool_acquire_timeout,
            statement_timeout: config.statement_timeout,
            connect_timeout: config.connect_timeout,
            max_replica_lag: config.max_replica_lag,
            metrics: metrics.clone(),
        })
        .await?;
        db.wait_ready(config.startup_timeout).await.context("database not ready")?;
        let ran = db.migrate().await.context("migrations")?;
        if ran > 0 {
            tracing::info!(migrations = ran, "applied migrations");
        }
        let tls = grpc::tls::Tls::from_config(&config).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
        let mutual = tls.as_ref().is_some_and(|t| t.mutual());
        if config.tokens.is_empty() && !mutual {
            // Without credentials every caller would be an operator: only this machine may call,
            // and only when the port is on loopback (another address would invite the network in)
            // and no proxy speaks for others (behind one on this machine, everyone is loopback).
            let why = if !config.listen.ip().is_loopback() {
                Some(format!("listen on {}", config.listen))
            } else if !config.trusted_proxies.is_empty() {
                Some("take PROXY headers (trusted_proxies)".to_owned())
            } else {
                None
            };
            if let Some(why) = why {
                anyhow::bail!(
                    "refusing to {why} without credentials: set auth tokens (tokens / --auth-token / \
                     STRATA_AUTH_TOKENS) or mutual TLS (tls_cert, tls_key and tls_client_ca), or listen on a \
                     loopback address such as 127.0.0.1 without trusted_proxies"
                );
            }
            tracing::warn!("no auth tokens or client certificates configured: only loopback clients are served");
        }
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let admin_listener = match config.admin_listen.0 {
            Some(a) => Some(TcpListener::bind(a).await.with_context(|| {
                format!("cannot listen on {a} for the admin listener (admin_listen; `off` turns it off)")
            })?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let objects = ObjectStore::open(
            &config.object_store_url,
            &S3Settings {
                part_size: config.s3_part_size,
                concurrency: config.s3_concurrency,
                storage_class: config.s3_storage_class.clone(),
                connect_timeout: config.s3_connect_timeout,
                read_timeout: config.s3_read_timeout,
                attempt_timeout: config.s3_attempt_timeout,
                max_attempts: config.s3_max_attempts,
            },
        )
        .await
        .with_context(|| format!("object store {}", db::redact_url(&config.object_store_url)))?
        .with_metrics(metrics.clone());
        let ctx = Context::new(db, objects, config, jobs::dispatch::start, metrics);
        // Before serving: the built-in jobs and rules exist once the server answers.
        let jobs = service::scheduler::ensure_builtin(&ctx).await.context("creating the built-in jobs")?;
        let rules = service::alerts::ensure_builtin(&ctx).await.context("creating the built-in alert rules")?;
        if jobs + rules > 0 {
            tracing::info!(jobs, rules, "built-in jobs and alert rules created");
        }
        let (shutdown, hurry) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(run(ctx, listener, tls, admin_listener, shutdown.clone(), hurry.clone()));
        match admin_addr {
            Some(admin) => tracing::info!(%addr, %admin, "strata listening"),
            None => tracing::info!(%addr, "strata listening (no admin listener)"),
        }
        Ok(Self { addr, admin_addr, shutdown, hurry, task })
    }

    /// The address the server listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the admin HTTP listener (`/livez`, `/readyz`), unless `admin_listen` is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// A token that stops the server when cancelled: health turns NOT_SERVING at once, calls
    /// are still served for `shutdown_delay`, then the server drains and stops.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// A token that, when cancelled after [`Server::shutdown_token`], cuts the rest of
    /// `shutdown_delay` short: the server drains at once (an operator's second Ctrl-C or SIGTERM).
    pub fn hurry_token(&self) -> CancellationToken {
        self.hurry.clone()
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

/// How long the admin listener may take to finish the requests in progress once the server stopped:
/// a probe's request takes milliseconds, a second bounds a client that sent only half of one.
const ADMIN_CLOSE: Duration = Duration::from_secs(1);

/// Serves until `shutdown`; then turns health NOT_SERVING, serves on for `shutdown_delay`, stops
/// accepting RPCs and drains them, cancels jobs and closes the pools, in order.
async fn run(
    ctx: Context,
    listener: TcpListener,
    tls: Option<std::sync::Arc<grpc::tls::Tls>>,
    admin_listener: Option<TcpListener>,
    shutdown: CancellationToken,
    hurry: CancellationToken,
) -> anyhow::Result<()> {
    let jobs_cancel = CancellationToken::new();
    let every = ctx.config.health_check_interval;
    let mut jobs = vec![
        tokio::spawn(jobs::monitor(ctx.clone(), every, jobs_cancel.clone())),
        tokio::spawn(jobs::object_store_monitor(ctx.clone(), every, jobs_cancel.clone())),
    ];
    if ctx.config.metrics {
        let every = service::exporter::CATALOG_EVERY;
        jobs.push(tokio::spawn(jobs::metrics_catalog(ctx.clone(), every, jobs_cancel.clone())));
    }
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
    jobs.push(tokio::spawn(jobs::operations(ctx.clone(), ctx.config.scheduler_poll_interval, jobs_cancel.clone())));
    match service::archive::mark_orphaned_runs(&ctx).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(runs = n, "archive runs of a stopped server recorded as interrupted"),
        Err(e) => tracing::error!(error = %e, "checking for interrupted archive runs failed"),
    }
    let health = grpc::health::Health::follow(ctx.db.primary_up(), ctx.objects_up.subscribe()).await;
    let admin_stop = CancellationToken::new();
    let admin = admin_listener
        .map(|l| tokio::spawn(grpc::admin_http::serve(l, health.clone(), ctx.clone(), admin_stop.clone())));
    // Drain for load balancers: their probes see NOT_SERVING / 503 first, while calls are still
    // served for `shutdown_delay`; only then does the gRPC server stop accepting and drain.
    let stop = CancellationToken::new();
    let drain = {
        let (health, closing, stop, shutdown) = (health.clone(), ctx.closing.clone(), stop.clone(), shutdown.clone());
        let delay = ctx.config.shutdown_delay;
        tokio::spawn(async move {
            shutdown.cancelled().await;
            health.drain().await;
            if !delay.is_zero() {
                tracing::info!("shutting down: health NOT_SERVING; serving calls for {delay:?} more, then draining");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = hurry.cancelled() => tracing::info!("asked again: draining now"),
                }
            }
            closing.cancel();
            stop.cancel();
        })
    };
    let audit = ctx.audit.start(&ctx);
    let served = grpc::serve(ctx.clone(), listener, tls, &health, stop.clone()).await;
    // The gRPC server also ends by itself on a transport error: the rest stops without delay.
    drain.abort();
    // No call is in progress any more: write the audit events still queued.
    ctx.audit.close().await;
    let _ = audit.await;
    health.drain().await;
    ctx.closing.cancel();
    admin_stop.cancel();
    if let Some(admin) = admin
        && tokio::time::timeout(ADMIN_CLOSE, admin).await.is_err()
    {
        tracing::warn!("admin requests still in progress after {ADMIN_CLOSE:?}; stopping anyway");
    }
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
