//! MaintenanceService: decode → service → encode.

use strata_client::pb::{self, maintenance_service_server::MaintenanceService};
use tonic::{Request, Response, Status};

use super::convert::dur;
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
        let started = std::time::Instant::now();
        let (runs, skipped) =
            if r.emergency { maintenance::emergency(&self.ctx).await? } else { (Vec::new(), Vec::new()) };
        let done = maintenance::run(&self.ctx, &tables, r.full, !r.skip_analyze, None).await?;
        let tables: Vec<pb::TableMaintenance> = done
            .into_iter()
            .map(|t| pb::TableMaintenance {
                reclaimed_bytes: (t.size_before - t.size_after).max(0),
                schema_name: t.schema,
                table_name: t.table,
                size_before_bytes: t.size_before,
                size_after_bytes: t.size_after,
                dead_rows_before: t.dead_rows_before,
                duration: Some(dur(t.duration)),
            })
            .collect();
        Ok(Response::new(pb::RunMaintenanceResponse {
            reclaimed_bytes: tables.iter().map(|t| t.reclaimed_bytes).sum(),
            tables,
            duration: Some(dur(started.elapsed())),
            started_runs: runs,
            skipped_policies: skipped,
        }))
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
