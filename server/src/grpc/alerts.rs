//! AlertService: decode → service → encode.

use std::pin::Pin;

use strata_client::pb::{self, alert_service_server::AlertService};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{
    auth::caller_name,
    convert::{dur, duration, page_size, required, time, ts},
};
use crate::service::{
    Context, Error,
    alerts::{
        self, Alert, AlertDetail, AlertEvent, AlertFilter, AlertState, Comparison, HealthReport, Metric, Rule,
        RuleSpec, Severity, WatchFilter, WatchItem,
    },
};

/// gRPC adapter of [`alerts`].
pub(super) struct AlertApi {
    pub(crate) ctx: Context,
}

fn metric_pb(m: Metric) -> pb::AlertMetric {
    match m {
        Metric::DatabaseSize => pb::AlertMetric::DatabaseSize,
        Metric::TableSize => pb::AlertMetric::TableSize,
        Metric::DailyGrowth => pb::AlertMetric::DailyGrowth,
        Metric::DaysUntilFull => pb::AlertMetric::DaysUntilFull,
        Metric::ProbeLatency => pb::AlertMetric::ProbeLatency,
        Metric::DiskUsedPercent => pb::AlertMetric::DiskUsedPercent,
        Metric::PoolUtilizationPercent => pb::AlertMetric::PoolUtilizationPercent,
        Metric::ReplicaLag => pb::AlertMetric::ReplicaLag,
        Metric::DefaultPartitionRows => pb::AlertMetric::DefaultPartitionRows,
        Metric::FailedJob => pb::AlertMetric::FailedJob,
    }
}

fn metric(m: i32) -> Result<Metric, Error> {
    Ok(match pb::AlertMetric::try_from(m).unwrap_or(pb::AlertMetric::Unspecified) {
        pb::AlertMetric::DatabaseSize => Metric::DatabaseSize,
        pb::AlertMetric::TableSize => Metric::TableSize,
        pb::AlertMetric::DailyGrowth => Metric::DailyGrowth,
        pb::AlertMetric::DaysUntilFull => Metric::DaysUntilFull,
        pb::AlertMetric::ProbeLatency => Metric::ProbeLatency,
        pb::AlertMetric::DiskUsedPercent => Metric::DiskUsedPercent,
        pb::AlertMetric::PoolUtilizationPercent => Metric::PoolUtilizationPercent,
        pb::AlertMetric::ReplicaLag => Metric::ReplicaLag,
        pb::AlertMetric::DefaultPartitionRows => Metric::DefaultPartitionRows,
        pb::AlertMetric::FailedJob => Metric::FailedJob,
        pb::AlertMetric::Unspecified => return Err(Error::InvalidArgument("metric is required".into())),
    })
}

fn comparison(c: i32) -> Option<Comparison> {
    match pb::AlertComparison::try_from(c).unwrap_or(pb::AlertComparison::Unspecified) {
        pb::AlertComparison::Above => Some(Comparison::Above),
        pb::AlertComparison::Below => Some(Comparison::Below),
        pb::AlertComparison::Unspecified => None,
    }
}

fn severity_pb(s: Severity) -> i32 {
    match s {
        Severity::Warning => pb::AlertSeverity::Warning as i32,
        Severity::Critical => pb::AlertSeverity::Critical as i32,
    }
}

fn severity(s: i32) -> Option<Severity> {
    match pb::AlertSeverity::try_from(s).unwrap_or(pb::AlertSeverity::Unspecified) {
        pb::AlertSeverity::Warning => Some(Severity::Warning),
        pb::AlertSeverity::Critical => Some(Severity::Critical),
        pb::AlertSeverity::Unspecified => None,
    }
}

fn state_pb(s: AlertState) -> i32 {
    (match s {
        AlertState::Pending => pb::AlertState::Pending,
        AlertState::Firing => pb::AlertState::Firing,
        AlertState::Acknowledged => pb::AlertState::Acknowledged,
        AlertState::Resolved => pb::AlertState::Resolved,
    }) as i32
}

fn state(s: i32) -> Result<AlertState, Error> {
    Ok(match pb::AlertState::try_from(s).unwrap_or(pb::AlertState::Unspecified) {
        pb::AlertState::Pending => AlertState::Pending,
        pb::AlertState::Firing => AlertState::Firing,
        pb::AlertState::Acknowledged => AlertState::Acknowledged,
        pb::AlertState::Resolved => AlertState::Resolved,
        pb::AlertState::Unspecified => return Err(Error::InvalidArgument("states: unspecified state".into())),
    })
}

fn rule_pb(r: Rule) -> pb::AlertRule {
    let s = r.spec;
    pb::AlertRule {
        name: s.name,
        metric: metric_pb(s.metric) as i32,
        table: s.table,
        comparison: match s.comparison {
            Some(Comparison::Below) => pb::AlertComparison::Below,
            _ => pb::AlertComparison::Above,
        } as i32,
        warning_threshold: s.warning,
        critical_threshold: s.critical,
        for_duration: Some(dur(s.for_duration)),
        capacity_bytes: s.capacity_bytes,
        labels: s.labels.into_iter().collect(),
        enabled: s.enabled,
        builtin: r.builtin,
        create_time: Some(ts(r.created_at.and_utc())),
        update_time: Some(ts(r.updated_at.and_utc())),
    }
}

fn spec(r: pb::AlertRule) -> Result<RuleSpec, Error> {
    Ok(RuleSpec {
        name: r.name,
        metric: metric(r.metric)?,
        table: r.table,
        comparison: comparison(r.comparison),
        warning: r.warning_threshold,
        critical: r.critical_threshold,
        for_duration: r.for_duration.map(|d| duration("for_duration", d)).transpose()?.unwrap_or_default(),
        capacity_bytes: r.capacity_bytes,
        labels: r.labels.into_iter().collect(),
        enabled: r.enabled,
    })
}

fn alert_pb(a: Alert) -> pb::Alert {
    pb::Alert {
        labels: a.labels.into_iter().collect(),
        state: state_pb(a.state),
        severity: severity_pb(a.severity),
        id: a.id,
        rule: a.rule,
        value: a.value,
        threshold: a.threshold,
        summary: a.summary,
        start_time: Some(ts(a.started_at.and_utc())),
        fire_time: a.fired_at.map(|t| ts(t.and_utc())),
        acknowledge_time: a.acknowledged_at.map(|t| ts(t.and_utc())),
        acknowledged_by: a.acknowledged_by.unwrap_or_default(),
        resolve_time: a.resolved_at.map(|t| ts(t.and_utc())),
        resolved_by: a.resolved_by.unwrap_or_default(),
        update_time: Some(ts(a.updated_at.and_utc())),
    }
}

fn event_pb(e: AlertEvent) -> pb::AlertEvent {
    pb::AlertEvent {
        state: state_pb(e.state),
        severity: severity_pb(e.severity),
        id: e.id,
        alert_id: e.alert_id,
        time: Some(ts(e.at.and_utc())),
        // Strings in the API: the spelling the catalog stores.
        kind: e.kind.as_str().into(),
        value: e.value.unwrap_or_default(),
        actor: e.actor,
        note: e.note,
    }
}

fn detail_pb(d: AlertDetail) -> pb::GetAlertResponse {
    pb::GetAlertResponse {
        alert: Some(alert_pb(d.alert)),
        events: d.events.into_iter().map(event_pb).collect(),
        notifications: d
            .notifications
            .into_iter()
            .map(|n| pb::AlertNotification {
                id: n.id,
                event_id: n.event_id,
                channel: n.channel.as_str().into(),
                target: n.target,
                state: n.state.as_str().into(),
                attempts: n.attempts,
                last_error: n.last_error.unwrap_or_default(),
                send_time: n.sent_at.map(|t| ts(t.and_utc())),
            })
            .collect(),
    }
}

fn health_pb(h: HealthReport) -> pb::GetHealthReportResponse {
    pb::GetHealthReportResponse {
        score: h.score,
        status: h.status.into(),
        factors: h
            .factors
            .into_iter()
            .map(|f| pb::HealthFactor { name: f.name.into(), penalty: f.penalty, detail: f.detail })
            .collect(),
        time: Some(ts(h.at)),
    }
}

/// Fields UpdateRule may change.
const SETTABLE: &[&str] = &[
    "table",
    "comparison",
    "warning_threshold",
    "critical_threshold",
    "for_duration",
    "capacity_bytes",
    "labels",
    "enabled",
];

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAlertsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AlertService for AlertApi {
    async fn create_rule(
        &self,
        req: Request<pb::CreateRuleRequest>,
    ) -> Result<Response<pb::CreateRuleResponse>, Status> {
        let r = req.into_inner().rule.ok_or_else(|| Status::invalid_argument("rule is required"))?;
        let rule = alerts::create_rule(&self.ctx, spec(r)?).await?;
        Ok(Response::new(pb::CreateRuleResponse { rule: Some(rule_pb(rule)) }))
    }

    async fn get_rule(&self, req: Request<pb::GetRuleRequest>) -> Result<Response<pb::GetRuleResponse>, Status> {
        let name = required("name", req.into_inner().name)?;
        Ok(Response::new(pb::GetRuleResponse { rule: Some(rule_pb(alerts::get_rule(&self.ctx, &name).await?)) }))
    }

    async fn list_rules(&self, _req: Request<pb::ListRulesRequest>) -> Result<Response<pb::ListRulesResponse>, Status> {
        let rules = alerts::list_rules(&self.ctx).await?.into_iter().map(rule_pb).collect();
        Ok(Response::new(pb::ListRulesResponse { rules }))
    }

    async fn update_rule(
        &self,
        req: Request<pb::UpdateRuleRequest>,
    ) -> Result<Response<pb::UpdateRuleResponse>, Status> {
        let req = req.into_inner();
        let new = req.rule.ok_or_else(|| Status::invalid_argument("rule is required"))?;
        let name = required("rule.name", new.name.clone())?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        if let Some(bad) = paths.iter().find(|p| !SETTABLE.contains(&p.as_str())) {
            return Err(Status::invalid_argument(format!(
                "update_mask: {bad:?} cannot be changed (settable: {})",
                SETTABLE.join(", ")
            )));
        }
        let set = |f: &str| paths.is_empty() || paths.iter().any(|p| p == f);
        let mut merged = alerts::get_rule(&self.ctx, &name).await?.spec;
        let new = spec(pb::AlertRule { metric: metric_pb(merged.metric) as i32, ..new })?;
        if set("table") {
            merged.table = new.table;
        }
        if set("comparison") {
            merged.comparison = new.comparison;
        }
        if set("warning_threshold") {
            merged.warning = new.warning;
        }
        if set("critical_threshold") {
            merged.critical = new.critical;
        }
        if set("for_duration") {
            merged.for_duration = new.for_duration;
        }
        if set("capacity_bytes") {
            merged.capacity_bytes = new.capacity_bytes;
        }
        if set("labels") {
            merged.labels = new.labels;
        }
        if set("enabled") {
            merged.enabled = new.enabled;
        }
        let rule = alerts::update_rule(&self.ctx, merged).await?;
        Ok(Response::new(pb::UpdateRuleResponse { rule: Some(rule_pb(rule)) }))
    }

    async fn delete_rule(
        &self,
        req: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::DeleteRuleResponse>, Status> {
        let by = caller_name(&req);
        let name = required("name", req.into_inner().name)?;
        alerts::delete_rule(&self.ctx, &name, &by).await?;
        Ok(Response::new(pb::DeleteRuleResponse {}))
    }

    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let req = req.into_inner();
        let size = page_size(req.page_size, 100)?;
        let f = AlertFilter {
            states: req.states.into_iter().map(state).collect::<Result<_, _>>()?,
            severity: severity(req.severity),
            rule: (!req.rule.is_empty()).then_some(req.rule),
            since: time(req.start_time)?.map(|t| t.naive_utc()),
        };
        let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let (rows, next) = alerts::list_alerts(&self.ctx, &f, size, token).await?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: rows.into_iter().map(alert_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn get_alert(&self, req: Request<pb::GetAlertRequest>) -> Result<Response<pb::GetAlertResponse>, Status> {
        let id = required("alert_id", req.into_inner().alert_id)?;
        Ok(Response::new(detail_pb(alerts::get_alert(&self.ctx, &id).await?)))
    }

    async fn acknowledge_alert(
        &self,
        req: Request<pb::AcknowledgeAlertRequest>,
    ) -> Result<Response<pb::AcknowledgeAlertResponse>, Status> {
        let by = caller_name(&req);
        let req = req.into_inner();
        let id = required("alert_id", req.alert_id)?;
        let d = alerts::acknowledge(&self.ctx, &id, &by, &req.note).await?;
        Ok(Response::new(pb::AcknowledgeAlertResponse { alert: Some(alert_pb(d.alert)) }))
    }

    async fn resolve_alert(
        &self,
        req: Request<pb::ResolveAlertRequest>,
    ) -> Result<Response<pb::ResolveAlertResponse>, Status> {
        let by = caller_name(&req);
        let req = req.into_inner();
        let id = required("alert_id", req.alert_id)?;
        let d = alerts::resolve(&self.ctx, &id, &by, &req.note).await?;
        Ok(Response::new(pb::ResolveAlertResponse { alert: Some(alert_pb(d.alert)) }))
    }

    type WatchAlertsStream = WatchStream;

    async fn watch_alerts(&self, req: Request<pb::WatchAlertsRequest>) -> Result<Response<WatchStream>, Status> {
        let req = req.into_inner();
        let f = WatchFilter {
            send_initial: req.send_initial,
            min_severity: severity(req.min_severity),
            rule: (!req.rule.is_empty()).then_some(req.rule),
        };
        // Small: a slow client stalls only its own task, which then falls behind the feed and
        // is resynced.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let sub = alerts::subscribe(&self.ctx).await?;
        tokio::spawn(alerts::watch(self.ctx.clone(), f, sub, tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
            item.map(|i| match i {
                WatchItem::Snapshot(a) => pb::WatchAlertsResponse {
                    kind: pb::AlertChangeKind::Snapshot as i32,
                    event: None,
                    alert: Some(alert_pb(*a)),
                },
                WatchItem::Event(b) => {
                    let (e, a) = *b;
                    pb::WatchAlertsResponse {
                        kind: pb::AlertChangeKind::Event as i32,
                        event: Some(event_pb(e)),
                        alert: Some(alert_pb(a)),
                    }
                }
                WatchItem::Resync => {
                    pb::WatchAlertsResponse { kind: pb::AlertChangeKind::Resync as i32, event: None, alert: None }
                }
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_health_report(
        &self,
        _req: Request<pb::GetHealthReportRequest>,
    ) -> Result<Response<pb::GetHealthReportResponse>, Status> {
        Ok(Response::new(health_pb(alerts::health_report(&self.ctx).await?)))
    }
}
