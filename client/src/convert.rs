//! proto → domain conversions. Unknown enum values and missing required parts are `Malformed`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{Error, pb, types::*};

/// A server timestamp (None when absent or out of range).
pub(crate) fn ts(t: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
}

fn dur(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(d).ok())
}

fn role(r: i32) -> Result<NodeRole, Error> {
    match pb::NodeRole::try_from(r) {
        Ok(pb::NodeRole::Primary) => Ok(NodeRole::Primary),
        Ok(pb::NodeRole::Replica) => Ok(NodeRole::Replica),
        _ => Err(Error::Malformed(format!("unknown node role {r}"))),
    }
}

fn backend(b: i32) -> Result<Backend, Error> {
    match pb::DatabaseBackend::try_from(b) {
        Ok(pb::DatabaseBackend::Postgres) => Ok(Backend::Postgres),
        Ok(pb::DatabaseBackend::Sqlite) => Ok(Backend::Sqlite),
        _ => Err(Error::Malformed(format!("unknown backend {b}"))),
    }
}

impl TryFrom<pb::GetInfoResponse> for ServerInfo {
    type Error = Error;
    fn try_from(r: pb::GetInfoResponse) -> Result<Self, Error> {
        let routing_state = match pb::RoutingState::try_from(r.routing_state) {
            Ok(pb::RoutingState::Normal) => RoutingState::Normal,
            Ok(pb::RoutingState::Degraded) => RoutingState::Degraded,
            Ok(pb::RoutingState::PrimaryDown) => RoutingState::PrimaryDown,
            _ => {
                return Err(Error::Malformed(format!("unknown routing state {}", r.routing_state)));
            }
        };
        let nodes = r
            .nodes
            .into_iter()
            .map(|n| {
                Ok(NodeHealth {
                    role: role(n.role)?,
                    name: n.name,
                    address: n.address,
                    healthy: n.healthy,
                    serving_reads: n.serving_reads,
                    replication_lag: dur(n.replication_lag),
                    last_error: n.last_error,
                    last_checked: ts(n.last_checked_time),
                    server_address: n.server_address,
                })
            })
            .collect::<Result<_, Error>>()?;
        let config = r.config.map(|c| ConfigSummary {
            listen_address: c.listen_address,
            object_store_url: c.object_store_url,
            pool_max_size: c.pool_max_size,
            pool_acquire_timeout: dur(c.pool_acquire_timeout).unwrap_or_default(),
            statement_timeout: dur(c.statement_timeout).unwrap_or_default(),
            max_replica_lag: dur(c.max_replica_lag).unwrap_or_default(),
            run_scheduler: c.run_scheduler,
            auth_token_count: c.auth_token_count,
            loopback_only: c.loopback_only,
        });
        Ok(ServerInfo {
            version: r.version,
            backend: backend(r.backend)?,
            routing_state,
            nodes,
            started_at: ts(r.start_time),
            uptime: dur(r.uptime).unwrap_or_default(),
            config,
            replica_fallbacks: r.replica_fallbacks,
        })
    }
}

impl TryFrom<pb::ConnectionProbe> for ConnectionProbe {
    type Error = Error;
    fn try_from(p: pb::ConnectionProbe) -> Result<Self, Error> {
        Ok(ConnectionProbe {
            role: role(p.role)?,
            name: p.name,
            ok: p.ok,
            round_trip: dur(p.round_trip),
            error: p.error,
        })
    }
}

impl TryFrom<pb::GetStorageMetricsResponse> for StorageMetrics {
    type Error = Error;
    fn try_from(r: pb::GetStorageMetricsResponse) -> Result<Self, Error> {
        let tables = r
            .tables
            .into_iter()
            .map(|t| {
                let row_count_source = match pb::RowCountSource::try_from(t.row_count_source) {
                    Ok(pb::RowCountSource::Statistics) => RowCountSource::Statistics,
                    Ok(pb::RowCountSource::BtreeCells) => RowCountSource::BtreeCells,
                    Ok(pb::RowCountSource::None) => RowCountSource::None,
                    _ => {
                        return Err(Error::Malformed(format!("row count source {}", t.row_count_source)));
                    }
                };
                Ok(TableMetrics {
                    schema_name: t.schema_name,
                    table_name: t.table_name,
                    estimated_rows: t.estimated_rows,
                    row_count_source,
                    table_size_bytes: t.table_size_bytes,
                    index_size_bytes: t.index_size_bytes,
                    toast_size_bytes: t.toast_size_bytes,
                    total_size_bytes: t.total_size_bytes,
                    dead_rows: t.dead_rows,
                    last_vacuum: ts(t.last_vacuum_time),
                    last_analyze: ts(t.last_analyze_time),
                    seq_scans: t.seq_scans,
                    index_scans: t.index_scans,
                    sizes_estimated: t.sizes_estimated,
                })
            })
            .collect::<Result<_, Error>>()?;
        let pools = r
            .pools
            .into_iter()
            .map(|p| {
                Ok(PoolStats {
                    role: role(p.role)?,
                    name: p.name,
                    max_size: p.max_size,
                    connections: p.connections,
                    idle_connections: p.idle_connections,
                    in_use_connections: p.in_use_connections,
                    gets_direct: p.gets_direct,
                    gets_waited: p.gets_waited,
                    gets_timed_out: p.gets_timed_out,
                    wait_time: dur(p.wait_time).unwrap_or_default(),
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(StorageMetrics {
            backend: backend(r.backend)?,
            database_name: r.database_name,
            database_size_bytes: r.database_size_bytes,
            tables,
            pools,
            replicas: r
                .replicas
                .into_iter()
                .map(|l| ReplicaLag { name: l.name, healthy: l.healthy, lag: dur(l.lag) })
                .collect(),
            collected_at: ts(r.collect_time),
            served_by: role(r.served_by)?,
            free_bytes: r.free_bytes,
            notes: r.notes,
        })
    }
}

impl TryFrom<pb::Snapshot> for Snapshot {
    type Error = Error;
    fn try_from(s: pb::Snapshot) -> Result<Self, Error> {
        Ok(Snapshot {
            id: s.id,
            taken_at: ts(s.take_time).ok_or_else(|| Error::Malformed("snapshot without time".into()))?,
            database_size_bytes: s.database_size_bytes,
            table_count: s.table_count,
        })
    }
}

impl From<GrowthWindow> for pb::GrowthWindow {
    fn from(w: GrowthWindow) -> Self {
        match w {
            GrowthWindow::Day => pb::GrowthWindow::Day,
            GrowthWindow::Week => pb::GrowthWindow::Week,
            GrowthWindow::Month => pb::GrowthWindow::Month,
        }
    }
}

impl From<GrowthQuery> for pb::GetGrowthRequest {
    fn from(q: GrowthQuery) -> Self {
        pb::GetGrowthRequest {
            window: pb::GrowthWindow::from(q.window) as i32,
            target_size_bytes: q.target_size_bytes.unwrap_or(0),
            table_name_prefix: q.table_prefix.unwrap_or_default(),
        }
    }
}

fn trend(t: Option<pb::GrowthTrend>) -> Result<GrowthTrend, Error> {
    let t = t.ok_or_else(|| Error::Malformed("trend missing".into()))?;
    Ok(GrowthTrend {
        sample_count: t.sample_count,
        current_size_bytes: t.current_size_bytes,
        current_rows: t.current_rows,
        bytes_per_day: t.bytes_per_day,
        rows_per_day: t.rows_per_day,
        days_until_target: t.days_until_target,
        target_reached: t.target_reached,
    })
}

impl TryFrom<pb::GetGrowthResponse> for Growth {
    type Error = Error;
    fn try_from(r: pb::GetGrowthResponse) -> Result<Self, Error> {
        let window = match pb::GrowthWindow::try_from(r.window) {
            Ok(pb::GrowthWindow::Day) => GrowthWindow::Day,
            Ok(pb::GrowthWindow::Week) => GrowthWindow::Week,
            Ok(pb::GrowthWindow::Month) => GrowthWindow::Month,
            _ => return Err(Error::Malformed(format!("growth window {}", r.window))),
        };
        Ok(Growth {
            window,
            window_start: ts(r.window_start_time),
            database: trend(r.database)?,
            tables: r
                .tables
                .into_iter()
                .map(|t| {
                    Ok(TableGrowth { schema_name: t.schema_name, table_name: t.table_name, trend: trend(t.trend)? })
                })
                .collect::<Result<_, Error>>()?,
        })
    }
}

impl From<pb::File> for File {
    fn from(f: pb::File) -> Self {
        File {
            id: f.id,
            name: f.name,
            content_type: f.content_type,
            owner: f.owner,
            size_bytes: f.size_bytes.max(0) as u64,
            blake3: f.blake3,
            sha256: (!f.sha256.is_empty()).then_some(f.sha256),
            metadata: f.metadata.into_iter().collect(),
            created_at: ts(f.create_time),
            lost: f.lost,
        }
    }
}

impl TryFrom<pb::GetUploadStatusResponse> for UploadStatus {
    type Error = Error;
    fn try_from(r: pb::GetUploadStatusResponse) -> Result<Self, Error> {
        let state = match pb::UploadState::try_from(r.state) {
            Ok(pb::UploadState::Open) => UploadState::Open,
            Ok(pb::UploadState::Complete) => UploadState::Complete,
            Ok(pb::UploadState::Failed) => UploadState::Failed,
            _ => return Err(Error::Malformed(format!("upload state {}", r.state))),
        };
        Ok(UploadStatus {
            upload_id: r.upload_id,
            state,
            committed_offset: r.committed_offset.max(0) as u64,
            file_id: (!r.file_id.is_empty()).then_some(r.file_id),
            error: (!r.error.is_empty()).then_some(r.error),
        })
    }
}

pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}
