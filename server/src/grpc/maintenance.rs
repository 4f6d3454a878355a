//! MaintenanceService: decode → service → encode.

use strata_client::pb::{self, maintenance_service_server::MaintenanceService};
use tonic::{Request, Response, Status};

use crate::service::{
    Context,
    maintenance::{self, Kind},
};

/// gRPC adapter of [`maintenance`].
pub(super) struct MaintenanceApi {
    pub(crate) ctx: Context,
}

#[tonic::async_trait]
impl MaintenanceService for MaintenanceApi {
    async fn run_maintenance(
        &self,
        req: Request<pb::RunMaintenanceRequest>,
    ) -> Result<Response<pb::RunMaintenanceResponse>, Status> {
        let r = req.into_inner();
        let tables = r.tables.iter().map(|t| maintenance::parse_table(t)).collect::<Result<Vec<_>, _>>()?;
        let op = maintenance::start(
            &self.ctx,
            maintenance::MaintenanceRequest { tables, full: r.full, analyze: !r.skip_analyze, emergency: r.emergency },
        )
        .await?;
        Ok(Response::new(pb::RunMaintenanceResponse { operation: Some(super::operations::operation(op)) }))
    }

    async fn get_recommendations(
        &self,
        req: Request<pb::GetRecommendationsRequest>,
    ) -> Result<Response<pb::GetRecommendationsResponse>, Status> {
        let r = req.into_inner();
        if r.large_table_bytes < 0 || r.min_rows < 0 {
            return Err(Status::invalid_argument("thresholds must not be negative"));
        }
        let large = if r.large_table_bytes == 0 { 1 << 30 } else { r.large_table_bytes };
        let min_rows = if r.min_rows == 0 { 10_000 } else { r.min_rows };
        let recs = maintenance::recommendations(&self.ctx, large, min_rows).await?;
        Ok(Response::new(pb::GetRecommendationsResponse {
            recommendations: recs
                .into_iter()
                .map(|r| pb::Recommendation {
                    kind: match r.kind {
                        Kind::IndexCandidate => pb::RecommendationKind::IndexCandidate,
                        Kind::UnusedIndex => pb::RecommendationKind::UnusedIndex,
                        Kind::Vacuum => pb::RecommendationKind::Vacuum,
                        Kind::ArchiveOrPartition => pb::RecommendationKind::ArchiveOrPartition,
                        Kind::ReplicaLag => pb::RecommendationKind::ReplicaLag,
                        Kind::PoolSaturation => pb::RecommendationKind::PoolSaturation,
                    } as i32,
                    target: r.target,
                    message: r.message,
                    evidence: r.evidence.into_iter().collect(),
                })
                .collect(),
        }))
    }
}
