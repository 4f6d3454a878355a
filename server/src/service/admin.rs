//! Server identity, routing state and connection tests.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Context;
use crate::db;
/// The database layer's node and pool views are this service's answer as they are: plain data, no
/// Diesel; re-exported so the gRPC edge needs nothing from `db/`.
pub use crate::db::{BackendKind, NodeHealth, NodeInfo, PoolStats, Role};

/// How reads are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingState {
    /// Replicas serve reads, or none is configured.
    Normal,
    /// A configured replica cannot serve reads.
    Degraded,
    /// The primary is unreachable.
    PrimaryDown,
}

/// Non-secret configuration.
#[derive(Debug, Clone)]
pub struct ConfigSummary {
    /// Listen address.
    pub listen: String,
    /// Object store URL without credentials.
    pub object_store_url: String,
    /// Max pool size.
    pub pool_max_size: u32,
    /// Acquire timeout.
    pub pool_acquire_timeout: Duration,
    /// Statement timeout.
    pub statement_timeout: Duration,
    /// Max replica lag.
    pub max_replica_lag: Duration,
    /// Runs scheduled jobs.
    pub run_scheduler: bool,
    /// Token count.
    pub auth_token_count: u32,
    /// Loopback-only mode.
    pub loopback_only: bool,
}

/// What `GetInfo` reports.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Version.
    pub version: &'static str,
    /// Backend.
    pub backend: BackendKind,
    /// Routing state.
    pub routing: RoutingState,
    /// Nodes.
    pub nodes: Vec<NodeInfo>,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// Uptime.
    pub uptime: Duration,
    /// Config summary.
    pub config: ConfigSummary,
    /// Replica fallbacks.
    pub replica_fallbacks: u64,
}

/// Server information. Reads only in-memory state, so it answers even when the database is down.
pub fn info(ctx: &Context) -> ServerInfo {
    let nodes = ctx.db.nodes();
    let primary_ok = nodes.iter().any(|n| n.role == Role::Primary && n.health.healthy);
    let replica_gap = nodes.iter().any(|n| n.role == Role::Replica && !n.serving_reads);
    let routing = if !primary_ok {
        RoutingState::PrimaryDown
    } else if replica_gap {
        RoutingState::Degraded
    } else {
        RoutingState::Normal
    };
    let c = &ctx.config;
    ServerInfo {
        version: env!("CARGO_PKG_VERSION"),
        backend: ctx.db.backend(),
        routing,
        nodes,
        started_at: ctx.started_at,
        uptime: ctx.started.elapsed(),
        config: ConfigSummary {
            listen: c.listen.to_string(),
            object_store_url: db::redact_url(&c.object_store_url),
            pool_max_size: c.pool_max_size,
            pool_acquire_timeout: c.pool_acquire_timeout,
            statement_timeout: c.statement_timeout,
            max_replica_lag: c.max_replica_lag,
            run_scheduler: c.run_scheduler,
            auth_token_count: u32::try_from(c.tokens.len()).unwrap_or(u32::MAX),
            loopback_only: c.tokens.is_empty(),
        },
        replica_fallbacks: ctx.db.replica_fallbacks(),
    }
}

/// Outcome of one round trip.
#[derive(Debug)]
pub struct Probe {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Round-trip time or the error.
    pub result: Result<Duration, db::Error>,
}

/// Times a round trip to every node through its pool.
pub async fn test_connection(ctx: &Context) -> Vec<Probe> {
    ctx.db.round_trips().await.into_iter().map(|(name, role, result)| Probe { name, role, result }).collect()
}

/// How long the object store's health probe may take before it counts as unreachable.
const OBJECT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Probes the object store (see `ObjectStore::probe`) and publishes the result to
/// [`Context::objects_up`] (health: FileService and ArchiveService) and `strata_object_store_up`.
pub async fn probe_objects(ctx: &Context) -> bool {
    let up = match ctx.objects.probe(OBJECT_PROBE_TIMEOUT).await {
        Ok(()) => true,
        Err(e) => {
            if *ctx.objects_up.borrow() {
                tracing::warn!(error = %e, "object store unreachable: FileService and ArchiveService report NOT_SERVING");
            }
            false
        }
    };
    ctx.metrics.objects.up.set(i64::from(up));
    let changed = ctx.objects_up.send_if_modified(|v| std::mem::replace(v, up) != up);
    if changed && up {
        tracing::info!("object store reachable again");
    }
    up
}
