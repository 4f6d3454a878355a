//! StorageService: decode → service → encode.

use strata_client::pb::{self, storage_service_server::StorageService};
use tonic::{Request, Response, Status};

use super::convert::{backend, dur, pool, role, ts};
use crate::service::{
    Context,
    metrics::{self, GrowthQuery, PageRequest, TablePrefix, Window},
};

/// gRPC adapter of [`metrics`].
pub(super) struct StorageApi {
    pub(crate) ctx: Context,
}

fn snapshot(s: metrics::Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        id: s.id,
        take_time: Some(ts(s.taken_at)),
        database_size_bytes: s.database_size_bytes,
        table_count: i32::try_from(s.table_count).unwrap_or(i32::MAX),
    }
}

fn trend(t: metrics::Trend) -> pb::GrowthTrend {
    pb::GrowthTrend {
        sample_count: i32::try_from(t.samples).unwrap_or(i32::MAX),
        current_size_bytes: t.current_size_bytes,
        current_rows: t.current_rows,
        bytes_per_day: t.bytes_per_day,
        rows_per_day: t.rows_per_day,
        days_until_target: t.days_until_target,
        target_reached: t.target_reached,
    }
}

impl TryFrom<pb::GetGrowthRequest> for GrowthQuery {
    type Error = crate::service::Error;
    fn try_from(r: pb::GetGrowthRequest) -> Result<Self, Self::Error> {
        use crate::service::Error::InvalidArgument;
        let window = match pb::GrowthWindow::try_from(r.window) {
            Ok(pb::GrowthWindow::Unspecified | pb::GrowthWindow::Week) => Window::Week,
            Ok(pb::GrowthWindow::Day) => Window::Day,
            Ok(pb::GrowthWindow::Month) => Window::Month,
            Err(_) => return Err(InvalidArgument(format!("unknown window {}", r.window))),
        };
        let target_size_bytes = match r.target_size_bytes {
            0 => None,
            n if n < 0 => {
                return Err(InvalidArgument("target_size_bytes must not be negative".into()));
            }
            n => Some(n),
        };
        Ok(GrowthQuery { window, target_size_bytes, prefix: TablePrefix::parse(&r.table_name_prefix)? })
    }
}

fn window(w: Window) -> i32 {
    (match w {
        Window::Day => pb::GrowthWindow::Day,
        Window::Week => pb::GrowthWindow::Week,
        Window::Month => pb::GrowthWindow::Month,
    }) as i32
}

#[tonic::async_trait]
impl StorageService for StorageApi {
    async fn get_storage_metrics(
        &self,
        req: Request<pb::GetStorageMetricsRequest>,
    ) -> Result<Response<pb::GetStorageMetricsResponse>, Status> {
        let prefix = TablePrefix::parse(&req.into_inner().table_name_prefix)?;
        let m = metrics::storage_metrics(&self.ctx, &prefix).await?;
        let tables = m
            .stats
            .tables
            .into_iter()
            .map(|t| {
                let source = match (t.rows, t.rows_exact) {
                    (None, _) => pb::RowCountSource::None,
                    (Some(_), true) => pb::RowCountSource::BtreeCells,
                    (Some(_), false) => pb::RowCountSource::Statistics,
                };
                pb::TableMetrics {
                    total_size_bytes: t.total_bytes(),
                    schema_name: t.schema_name,
                    table_name: t.table_name,
                    estimated_rows: t.rows.unwrap_or(0),
                    row_count_source: source as i32,
                    table_size_bytes: t.table_bytes,
                    index_size_bytes: t.index_bytes,
                    toast_size_bytes: t.toast_bytes,
                    dead_rows: t.dead_rows,
                    last_vacuum_time: t.last_vacuum.map(ts),
                    last_analyze_time: t.last_analyze.map(ts),
                    seq_scans: t.seq_scans,
                    index_scans: t.index_scans,
                    sizes_estimated: t.sizes_estimated,
                }
            })
            .collect();
        Ok(Response::new(pb::GetStorageMetricsResponse {
            backend: backend(m.backend),
            database_name: m.stats.name,
            database_size_bytes: m.stats.size_bytes,
            tables,
            pools: m.pools.into_iter().map(pool).collect(),
            replicas: m
                .replicas
                .into_iter()
                .map(|r| pb::ReplicaLag { name: r.name, healthy: r.healthy, lag: r.lag.map(dur) })
                .collect(),
            collect_time: Some(ts(m.collected_at)),
            served_by: role(m.served_by),
            free_bytes: m.stats.free_bytes,
            notes: m.stats.notes,
        }))
    }

    async fn record_snapshot(
        &self,
        _req: Request<pb::RecordSnapshotRequest>,
    ) -> Result<Response<pb::RecordSnapshotResponse>, Status> {
        let s = metrics::record_snapshot(&self.ctx).await?;
        Ok(Response::new(pb::RecordSnapshotResponse { snapshot: Some(snapshot(s)) }))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let r = req.into_inner();
        let page = PageRequest::parse(r.page_size, &r.page_token)?;
        let (snaps, next_page_token) = metrics::list_snapshots(&self.ctx, page).await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: snaps.into_iter().map(snapshot).collect(),
            next_page_token,
        }))
    }

    async fn get_growth(&self, req: Request<pb::GetGrowthRequest>) -> Result<Response<pb::GetGrowthResponse>, Status> {
        let q = GrowthQuery::try_from(req.into_inner())?;
        let g = metrics::growth(&self.ctx, &q).await?;
        Ok(Response::new(pb::GetGrowthResponse {
            window: window(g.window),
            window_start_time: Some(ts(g.window_start)),
            database: Some(trend(g.database)),
            tables: g
                .tables
                .into_iter()
                .map(|t| pb::TableGrowth {
                    schema_name: t.schema_name,
                    table_name: t.table_name,
                    trend: Some(trend(t.trend)),
                })
                .collect(),
            window_length: Some(dur(g.window.length())),
        }))
    }
}
