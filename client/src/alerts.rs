//! Alerts: rules, the alert lifecycle, the live feed and the health score.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::Serialize;

use crate::{
    Client, Error,
    pb::{self, alert_service_client::AlertServiceClient},
};

/// What a rule watches (see `proto/strata/v1/alerts.proto` for units and labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// Bytes.
    DatabaseSize,
    /// Bytes per table.
    TableSize,
    /// Bytes per day.
    DailyGrowth,
    /// Days until full.
    DaysUntilFull,
    /// Seconds per node.
    ProbeLatency,
    /// Percent per local file system.
    DiskUsedPercent,
    /// Percent per pool.
    PoolUtilizationPercent,
    /// Seconds per replica.
    ReplicaLag,
    /// Rows in a table's default partition.
    DefaultPartitionRows,
    /// 1 per failing job.
    FailedJob,
}

const METRICS: [(AlertMetric, pb::AlertMetric); 10] = [
    (AlertMetric::DatabaseSize, pb::AlertMetric::DatabaseSize),
    (AlertMetric::TableSize, pb::AlertMetric::TableSize),
    (AlertMetric::DailyGrowth, pb::AlertMetric::DailyGrowth),
    (AlertMetric::DaysUntilFull, pb::AlertMetric::DaysUntilFull),
    (AlertMetric::ProbeLatency, pb::AlertMetric::ProbeLatency),
    (AlertMetric::DiskUsedPercent, pb::AlertMetric::DiskUsedPercent),
    (AlertMetric::PoolUtilizationPercent, pb::AlertMetric::PoolUtilizationPercent),
    (AlertMetric::ReplicaLag, pb::AlertMetric::ReplicaLag),
    (AlertMetric::DefaultPartitionRows, pb::AlertMetric::DefaultPartitionRows),
    (AlertMetric::FailedJob, pb::AlertMetric::FailedJob),
];

/// Lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Condition holds, not long enough yet.
    Pending,
    /// Firing.
    Firing,
    /// Firing, someone is on it.
    Acknowledged,
    /// Over.
    Resolved,
}

/// Severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    /// Warning.
    Warning,
    /// Critical.
    Critical,
}

/// An alert rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRule {
    /// Unique name.
    pub name: String,
    /// What it watches.
    pub metric: AlertMetric,
    /// Table selector for table metrics.
    pub table: String,
    /// Fires when the value is at or below the thresholds (days_until_full) instead of above.
    pub below: bool,
    /// Warning threshold.
    pub warning: Option<f64>,
    /// Critical threshold.
    pub critical: Option<f64>,
    /// How long the condition must hold.
    #[serde(with = "crate::types::secs", rename = "for_seconds")]
    pub for_duration: Duration,
    /// For days_until_full (0: the disk's size).
    pub capacity_bytes: i64,
    /// Labels copied onto alerts.
    pub labels: BTreeMap<String, String>,
    /// Evaluated.
    pub enabled: bool,
    /// Built in (output only).
    pub builtin: bool,
}

impl AlertRule {
    /// A rule firing above the thresholds, enabled, with no for-duration.
    pub fn new(name: &str, metric: AlertMetric, warning: Option<f64>, critical: Option<f64>) -> Self {
        AlertRule {
            name: name.into(),
            metric,
            table: String::new(),
            below: metric == AlertMetric::DaysUntilFull,
            warning,
            critical,
            for_duration: Duration::ZERO,
            capacity_bytes: 0,
            labels: BTreeMap::new(),
            enabled: true,
            builtin: false,
        }
    }
}

/// An alert.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Id.
    pub id: String,
    /// Rule.
    pub rule: String,
    /// Labels (rule labels, metric, series).
    pub labels: BTreeMap<String, String>,
    /// State.
    pub state: AlertState,
    /// Severity.
    pub severity: AlertSeverity,
    /// Latest value.
    pub value: f64,
    /// Threshold crossed.
    pub threshold: f64,
    /// One line.
    pub summary: String,
    /// Condition first seen.
    pub started_at: Option<DateTime<Utc>>,
    /// Fired.
    pub fired_at: Option<DateTime<Utc>>,
    /// Acknowledged.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// By whom.
    pub acknowledged_by: String,
    /// Resolved.
    pub resolved_at: Option<DateTime<Utc>>,
    /// By whom.
    pub resolved_by: String,
}

/// An entry of an alert's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    /// Increasing id.
    pub id: i64,
    /// Alert.
    pub alert_id: String,
    /// When.
    pub at: Option<DateTime<Utc>>,
    /// firing, escalated, deescalated, acknowledged, resolved, notified, notify_failed.
    pub kind: String,
    /// State after it.
    pub state: AlertState,
    /// Severity after it.
    pub severity: AlertSeverity,
    /// Value then.
    pub value: f64,
    /// Who.
    pub actor: String,
    /// Note.
    pub note: String,
}

/// A notification.
#[derive(Debug, Clone, Serialize)]
pub struct AlertNotification {
    /// Delivery id.
    pub id: String,
    /// Event announced.
    pub event_id: i64,
    /// webhook / email.
    pub channel: String,
    /// URL or recipients.
    pub target: String,
    /// pending / sent / failed.
    pub state: String,
    /// Attempts.
    pub attempts: i64,
    /// Last failure.
    pub last_error: String,
}

/// An alert with its timeline and notifications.
#[derive(Debug, Clone, Serialize)]
pub struct AlertDetail {
    /// The alert.
    pub alert: Alert,
    /// Timeline, oldest first.
    pub events: Vec<AlertEvent>,
    /// Notifications.
    pub notifications: Vec<AlertNotification>,
}

/// One WatchAlerts item.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlertChange {
    /// An open alert as it is.
    Snapshot {
        /// The alert.
        alert: Alert,
    },
    /// Something happened.
    Event {
        /// What.
        event: AlertEvent,
        /// The alert after it.
        alert: Alert,
    },
    /// Changes were missed; snapshots follow.
    Resync,
}

/// A factor of the health score.
#[derive(Debug, Clone, Serialize)]
pub struct HealthFactor {
    /// Name.
    pub name: String,
    /// Points off.
    pub penalty: u32,
    /// Numbers behind it.
    pub detail: String,
}

/// The health report.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// 0–100.
    pub score: u32,
    /// healthy / degraded / critical.
    pub status: String,
    /// Factors.
    pub factors: Vec<HealthFactor>,
}

/// ListAlerts filters.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    /// States (empty: all but pending).
    pub states: Vec<AlertState>,
    /// Severity.
    pub severity: Option<AlertSeverity>,
    /// Rule.
    pub rule: Option<String>,
    /// Started at or after.
    pub since: Option<DateTime<Utc>>,
}

use crate::convert::ts as time;

fn state(s: i32) -> AlertState {
    match pb::AlertState::try_from(s).unwrap_or(pb::AlertState::Unspecified) {
        pb::AlertState::Pending => AlertState::Pending,
        pb::AlertState::Firing => AlertState::Firing,
        pb::AlertState::Acknowledged => AlertState::Acknowledged,
        _ => AlertState::Resolved,
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

fn severity(s: i32) -> AlertSeverity {
    if s == pb::AlertSeverity::Critical as i32 { AlertSeverity::Critical } else { AlertSeverity::Warning }
}

fn severity_pb(s: AlertSeverity) -> i32 {
    (match s {
        AlertSeverity::Warning => pb::AlertSeverity::Warning,
        AlertSeverity::Critical => pb::AlertSeverity::Critical,
    }) as i32
}

impl From<pb::AlertRule> for AlertRule {
    fn from(r: pb::AlertRule) -> Self {
        AlertRule {
            metric: METRICS
                .iter()
                .find(|(_, p)| *p as i32 == r.metric)
                .map(|(m, _)| *m)
                .unwrap_or(AlertMetric::DatabaseSize),
            below: r.comparison == pb::AlertComparison::Below as i32,
            name: r.name,
            table: r.table,
            warning: r.warning_threshold,
            critical: r.critical_threshold,
            for_duration: r.for_duration.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default(),
            capacity_bytes: r.capacity_bytes,
            labels: r.labels.into_iter().collect(),
            enabled: r.enabled,
            builtin: r.builtin,
        }
    }
}

fn rule_pb(r: &AlertRule) -> pb::AlertRule {
    pb::AlertRule {
        name: r.name.clone(),
        metric: METRICS.iter().find(|(m, _)| *m == r.metric).map(|(_, p)| *p as i32).unwrap_or_default(),
        table: r.table.clone(),
        comparison: if r.below { pb::AlertComparison::Below } else { pb::AlertComparison::Above } as i32,
        warning_threshold: r.warning,
        critical_threshold: r.critical,
        for_duration: prost_types::Duration::try_from(r.for_duration).ok(),
        capacity_bytes: r.capacity_bytes,
        labels: r.labels.clone().into_iter().collect(),
        enabled: r.enabled,
        ..Default::default()
    }
}

impl From<pb::Alert> for Alert {
    fn from(a: pb::Alert) -> Self {
        Alert {
            state: state(a.state),
            severity: severity(a.severity),
            id: a.id,
            rule: a.rule,
            labels: a.labels.into_iter().collect(),
            value: a.value,
            threshold: a.threshold,
            summary: a.summary,
            started_at: time(a.start_time),
            fired_at: time(a.fire_time),
            acknowledged_at: time(a.acknowledge_time),
            acknowledged_by: a.acknowledged_by,
            resolved_at: time(a.resolve_time),
            resolved_by: a.resolved_by,
        }
    }
}

impl From<pb::AlertEvent> for AlertEvent {
    fn from(e: pb::AlertEvent) -> Self {
        AlertEvent {
            state: state(e.state),
            severity: severity(e.severity),
            id: e.id,
            alert_id: e.alert_id,
            at: time(e.time),
            kind: e.kind,
            value: e.value,
            actor: e.actor,
            note: e.note,
        }
    }
}

impl Client {
    fn alerts(&self) -> AlertServiceClient<crate::client::Svc> {
        AlertServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Creates a rule.
    pub async fn create_rule(&self, rule: &AlertRule) -> Result<AlertRule, Error> {
        let r = self.alerts().create_rule(pb::CreateRuleRequest { rule: Some(rule_pb(rule)) }).await?.into_inner();
        Ok(r.rule.unwrap_or_default().into())
    }

    /// A rule.
    pub async fn rule(&self, name: &str) -> Result<AlertRule, Error> {
        let r = self.alerts().get_rule(pb::GetRuleRequest { name: name.into() }).await?.into_inner();
        Ok(r.rule.unwrap_or_default().into())
    }

    /// Every rule.
    pub async fn list_rules(&self) -> Result<Vec<AlertRule>, Error> {
        let r = self.alerts().list_rules(pb::ListRulesRequest {}).await?.into_inner();
        Ok(r.rules.into_iter().map(AlertRule::from).collect())
    }

    /// Changes the `fields` of a rule (by name) to those of `rule`; empty: all of them.
    pub async fn update_rule(&self, rule: &AlertRule, fields: &[&str]) -> Result<AlertRule, Error> {
        let mask = prost_types::FieldMask { paths: fields.iter().map(|f| f.to_string()).collect() };
        let r = self
            .alerts()
            .update_rule(pb::UpdateRuleRequest { rule: Some(rule_pb(rule)), update_mask: Some(mask) })
            .await?
            .into_inner();
        Ok(r.rule.unwrap_or_default().into())
    }

    /// Deletes a rule (its open alerts are resolved).
    pub async fn delete_rule(&self, name: &str) -> Result<(), Error> {
        self.alerts().delete_rule(pb::DeleteRuleRequest { name: name.into() }).await?;
        Ok(())
    }

    /// Alerts newest first, up to `limit`.
    pub async fn list_alerts(&self, q: &AlertQuery, limit: usize) -> Result<Vec<Alert>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .alerts()
                .list_alerts(pb::ListAlertsRequest {
                    states: q.states.iter().map(|s| state_pb(*s)).collect(),
                    severity: q.severity.map(severity_pb).unwrap_or_default(),
                    rule: q.rule.clone().unwrap_or_default(),
                    start_time: q.since.map(crate::convert::timestamp),
                    page_size: (limit - out.len()).min(1000) as i32,
                    page_token: token,
                })
                .await?
                .into_inner();
            out.extend(r.alerts.into_iter().map(Alert::from));
            if r.next_page_token.is_empty() || out.len() >= limit {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }

    /// One alert with its timeline and notifications.
    pub async fn alert(&self, id: &str) -> Result<AlertDetail, Error> {
        let r = self.alerts().get_alert(pb::GetAlertRequest { alert_id: id.into() }).await?.into_inner();
        Ok(AlertDetail {
            alert: r.alert.unwrap_or_default().into(),
            events: r.events.into_iter().map(AlertEvent::from).collect(),
            notifications: r
                .notifications
                .into_iter()
                .map(|n| AlertNotification {
                    id: n.id,
                    event_id: n.event_id,
                    channel: n.channel,
                    target: n.target,
                    state: n.state,
                    attempts: n.attempts,
                    last_error: n.last_error,
                })
                .collect(),
        })
    }

    /// Acknowledges a firing alert.
    pub async fn acknowledge_alert(&self, id: &str, note: &str) -> Result<Alert, Error> {
        let r = self
            .alerts()
            .acknowledge_alert(pb::AcknowledgeAlertRequest { alert_id: id.into(), note: note.into() })
            .await?
            .into_inner();
        Ok(r.alert.unwrap_or_default().into())
    }

    /// Resolves an open alert by hand.
    pub async fn resolve_alert(&self, id: &str, note: &str) -> Result<Alert, Error> {
        let r = self
            .alerts()
            .resolve_alert(pb::ResolveAlertRequest { alert_id: id.into(), note: note.into() })
            .await?
            .into_inner();
        Ok(r.alert.unwrap_or_default().into())
    }

    /// Alert changes as they happen (open alerts first with `send_initial`).
    pub async fn watch_alerts(
        &self,
        send_initial: bool,
        min_severity: Option<AlertSeverity>,
        rule: Option<&str>,
    ) -> Result<impl Stream<Item = Result<AlertChange, Error>> + use<>, Error> {
        let s = self
            .alerts()
            .watch_alerts(pb::WatchAlertsRequest {
                send_initial,
                min_severity: min_severity.map(severity_pb).unwrap_or_default(),
                rule: rule.unwrap_or_default().into(),
            })
            .await?
            .into_inner();
        Ok(s.map(|item| {
            let c = item?;
            Ok(match pb::AlertChangeKind::try_from(c.kind).unwrap_or(pb::AlertChangeKind::Unspecified) {
                pb::AlertChangeKind::Event => AlertChange::Event {
                    event: c.event.unwrap_or_default().into(),
                    alert: c.alert.unwrap_or_default().into(),
                },
                pb::AlertChangeKind::Resync => AlertChange::Resync,
                _ => AlertChange::Snapshot { alert: c.alert.unwrap_or_default().into() },
            })
        }))
    }

    /// The 0–100 health score with its factors.
    pub async fn health_report(&self) -> Result<HealthReport, Error> {
        let r = self.alerts().get_health_report(pb::GetHealthReportRequest {}).await?.into_inner();
        Ok(HealthReport {
            score: r.score,
            status: r.status,
            factors: r
                .factors
                .into_iter()
                .map(|f| HealthFactor { name: f.name, penalty: f.penalty, detail: f.detail })
                .collect(),
        })
    }
}
