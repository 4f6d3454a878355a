//! VACUUM / ANALYZE on demand and recommendations.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use crate::{
    Client, Error,
    operations::{ItemKind, Operation},
    pb::{self, maintenance_service_client::MaintenanceServiceClient},
};

/// One table's maintenance.
#[derive(Debug, Clone, Serialize)]
pub struct TableMaintenance {
    /// Schema.
    pub schema_name: String,
    /// Table (the database file on SQLite).
    pub table_name: String,
    /// Size before.
    pub size_before_bytes: i64,
    /// Size after.
    pub size_after_bytes: i64,
    /// Bytes given back.
    pub reclaimed_bytes: i64,
    /// Dead rows before.
    pub dead_rows_before: i64,
    /// Time taken.
    #[serde(with = "crate::types::secs")]
    pub duration: Duration,
}

impl From<pb::TableMaintenance> for TableMaintenance {
    fn from(t: pb::TableMaintenance) -> Self {
        TableMaintenance {
            schema_name: t.schema_name,
            table_name: t.table_name,
            size_before_bytes: t.size_before_bytes,
            size_after_bytes: t.size_after_bytes,
            reclaimed_bytes: t.reclaimed_bytes,
            dead_rows_before: t.dead_rows_before,
            duration: dur(t.duration),
        }
    }
}

/// What a maintenance call did.
#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceReport {
    /// Per table.
    pub tables: Vec<TableMaintenance>,
    /// Emergency: archive-service runs started (purge, retention).
    pub started_runs: Vec<String>,
    /// Emergency: policies not started, "name: reason".
    pub skipped_policies: Vec<String>,
}

/// A recommendation with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    /// `index_candidate`, `unused_index`, `vacuum`, `archive_or_partition`, `replica_lag`,
    /// `pool_saturation`.
    pub kind: String,
    /// What it concerns.
    pub target: String,
    /// The advice.
    pub message: String,
    /// The numbers behind it.
    pub evidence: BTreeMap<String, String>,
}

fn dur(d: Option<prost_types::Duration>) -> Duration {
    d.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default()
}

impl Client {
    fn maintenance(&self) -> MaintenanceServiceClient<crate::client::Svc> {
        MaintenanceServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Starts VACUUM (ANALYZE unless `skip_analyze`) of the tables ("schema.table" or "table";
    /// empty: all) — with `emergency`, the purge and retention runs first — and returns the
    /// operation at once (follow it with [`Client::wait_operation`]).
    pub async fn start_maintenance(
        &self,
        tables: &[String],
        full: bool,
        skip_analyze: bool,
        emergency: bool,
    ) -> Result<Operation, Error> {
        let r = self
            .maintenance()
            .run_maintenance(pb::RunMaintenanceRequest { tables: tables.to_vec(), skip_analyze, full, emergency })
            .await?
            .into_inner();
        r.operation.map(Operation::from).ok_or_else(|| Error::Malformed("no operation in the response".into()))
    }

    /// VACUUM (ANALYZE unless `skip_analyze`) the tables, waiting for the end; returns each
    /// table's figures. An operation that fails answers [`Error::Operation`].
    pub async fn run_maintenance(
        &self,
        tables: &[String],
        full: bool,
        skip_analyze: bool,
    ) -> Result<Vec<TableMaintenance>, Error> {
        Ok(self.maintenance_report(tables, full, skip_analyze, false).await?.tables)
    }

    /// Emergency maintenance: starts every purge policy's run and every retention now, then
    /// vacuums; waits, and returns what was done and the runs started.
    pub async fn emergency_maintenance(&self) -> Result<MaintenanceReport, Error> {
        self.maintenance_report(&[], false, false, true).await
    }

    async fn maintenance_report(
        &self,
        tables: &[String],
        full: bool,
        skip_analyze: bool,
        emergency: bool,
    ) -> Result<MaintenanceReport, Error> {
        let op = self.start_maintenance(tables, full, skip_analyze, emergency).await?;
        let op = self.finish_operation(op).await?;
        let mut report =
            MaintenanceReport { tables: Vec::new(), started_runs: Vec::new(), skipped_policies: Vec::new() };
        for i in self.all_operation_items(&op.id).await? {
            match (i.kind, i.table) {
                (ItemKind::Table, Some(t)) => report.tables.push(t),
                (ItemKind::StartedRun, _) => report.started_runs.push(i.value),
                (ItemKind::SkippedPolicy, _) => report.skipped_policies.push(i.value),
                _ => {}
            }
        }
        Ok(report)
    }

    /// Advice from the statistics views (thresholds 0: the server's defaults).
    pub async fn recommendations(&self, large_table_bytes: i64, min_rows: i64) -> Result<Vec<Recommendation>, Error> {
        let r = self
            .maintenance()
            .get_recommendations(pb::GetRecommendationsRequest { large_table_bytes, min_rows })
            .await?
            .into_inner();
        Ok(r.recommendations
            .into_iter()
            .map(|r| Recommendation {
                kind: pb::RecommendationKind::try_from(r.kind)
                    .map(|k| k.as_str_name().trim_start_matches("RECOMMENDATION_KIND_").to_lowercase())
                    .unwrap_or_default(),
                target: r.target,
                message: r.message,
                evidence: r.evidence.into_iter().collect(),
            })
            .collect())
    }
}
