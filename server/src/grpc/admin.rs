//! AdminService: decode → service → encode.

use strata_client::pb::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::convert::{backend, dur, role, ts};
use crate::service::{Context, admin};

/// gRPC adapter of [`admin`].
pub(super) struct AdminApi {
    pub(crate) ctx: Context,
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_info(&self, _req: Request<pb::GetInfoRequest>) -> Result<Response<pb::GetInfoResponse>, Status> {
        let i = admin::info(&self.ctx);
        let routing_state = (match i.routing {
            admin::RoutingState::Normal => pb::RoutingState::Normal,
            admin::RoutingState::Degraded => pb::RoutingState::Degraded,
            admin::RoutingState::PrimaryDown => pb::RoutingState::PrimaryDown,
        }) as i32;
        let c = i.config;
        Ok(Response::new(pb::GetInfoResponse {
            version: i.version.to_owned(),
            backend: backend(i.backend),
            routing_state,
            nodes: i
                .nodes
                .into_iter()
                .map(|n| pb::NodeHealth {
                    role: role(n.role),
                    name: n.name,
                    address: n.address,
                    healthy: n.health.healthy,
                    serving_reads: n.serving_reads,
                    replication_lag: n.health.lag.map(dur),
                    last_error: n.health.last_error.unwrap_or_default(),
                    last_checked_time: n.health.checked_at.map(ts),
                    server_address: n.health.server.unwrap_or_default(),
                })
                .collect(),
            start_time: Some(ts(i.started_at)),
            uptime: Some(dur(i.uptime)),
            config: Some(pb::ConfigSummary {
                listen_address: c.listen,
                object_store_url: c.object_store_url,
                pool_max_size: c.pool_max_size,
                pool_acquire_timeout: Some(dur(c.pool_acquire_timeout)),
                statement_timeout: Some(dur(c.statement_timeout)),
                max_replica_lag: Some(dur(c.max_replica_lag)),
                run_scheduler: c.run_scheduler,
                auth_token_count: c.auth_token_count,
                loopback_only: c.loopback_only,
            }),
            replica_fallbacks: i.replica_fallbacks,
        }))
    }

    async fn test_connection(
        &self,
        _req: Request<pb::TestConnectionRequest>,
    ) -> Result<Response<pb::TestConnectionResponse>, Status> {
        let probes = admin::test_connection(&self.ctx)
            .await
            .into_iter()
            .map(|p| pb::ConnectionProbe {
                role: role(p.role),
                name: p.name,
                ok: p.result.is_ok(),
                round_trip: p.result.as_ref().ok().map(|d| dur(*d)),
                error: p.result.err().map(|e| e.to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::TestConnectionResponse { probes }))
    }
}
