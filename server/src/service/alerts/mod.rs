//! Alerts: rules on metrics, evaluation with a lifecycle (pending → firing → acknowledged →
//! resolved), escalation, a timeline per alert, notifications (webhook, email) with retries, a
//! live feed (WatchAlerts) and the health score.
//!
//! Evaluation runs as the scheduler's `alert-evaluation` job, so it happens once per tick among
//! all instances. Each alert change is written with its event and notifications in one
//! transaction (see `db::alerts`); a unique index keeps one open alert per rule and labels.
//! Notifications are an outbox: instances that run the scheduler send due ones, retry with
//! backoff and record the outcome on the alert's timeline. The feed tails the event table, so a
//! subscriber sees changes made by any instance; it is a broadcast channel, so a slow subscriber
//! only loses its own place (it is told to resync) and never slows evaluation.
//!
//! The loops that drive this module (sending due notifications, tailing the event table for the
//! feed) and the job that runs `evaluate` live in `jobs`.

mod evaluate;
mod health;
mod lifecycle;
mod notify;
mod rules;
mod watch;

use std::collections::BTreeMap;

use chrono::NaiveDateTime;

use self::lifecycle::close;
pub use self::{
    evaluate::{Evaluation, evaluate},
    health::{Factor, HealthReport, health_report},
    lifecycle::{acknowledge, get_alert, list_alerts, resolve},
    notify::{deliver_due, sign},
    rules::{RuleSpec, create_rule, delete_rule, ensure_builtin, get_rule, list_rules, update_rule},
    watch::{Change, FEED_CAPACITY, Feed, Subscription, Tail, WatchFilter, WatchItem, subscribe, watch},
};
use super::{Context, Error, Result};
use crate::db::alerts::{AlertRow, EventRow, NotificationRow};
pub use crate::model::alerts::{AlertState, Channel, Comparison, EventKind, Metric, NotificationState, Severity};

/// A rule with what the catalog adds to its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its settings.
    pub spec: RuleSpec,
    /// Created by strata (deleting it is refused: disable it).
    pub builtin: bool,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Changed.
    pub updated_at: NaiveDateTime,
}

/// An alert: one rule's condition on one series (its labels), from first seen to resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Id (UUIDv7).
    pub id: String,
    /// Its rule.
    pub rule: String,
    /// The rule's labels and the series' (`table`, `node`, `path`, `job`), with `metric`.
    pub labels: BTreeMap<String, String>,
    /// Where it is.
    pub state: AlertState,
    /// How bad.
    pub severity: Severity,
    /// Latest value.
    pub value: f64,
    /// Threshold crossed.
    pub threshold: f64,
    /// One line.
    pub summary: String,
    /// Condition first seen.
    pub started_at: NaiveDateTime,
    /// Fired.
    pub fired_at: Option<NaiveDateTime>,
    /// Acknowledged.
    pub acknowledged_at: Option<NaiveDateTime>,
    /// By whom (the note is on the event).
    pub acknowledged_by: Option<String>,
    /// Resolved.
    pub resolved_at: Option<NaiveDateTime>,
    /// By whom ("strata" when the condition cleared).
    pub resolved_by: Option<String>,
    /// Last change.
    pub updated_at: NaiveDateTime,
}

impl From<AlertRow> for Alert {
    fn from(a: AlertRow) -> Self {
        Self {
            labels: labels_of(&a),
            id: a.id,
            rule: a.rule_name,
            state: a.state,
            severity: a.severity,
            value: a.value,
            threshold: a.threshold,
            summary: a.summary,
            started_at: a.started_at,
            fired_at: a.fired_at,
            acknowledged_at: a.acknowledged_at,
            acknowledged_by: a.acknowledged_by,
            resolved_at: a.resolved_at,
            resolved_by: a.resolved_by,
            updated_at: a.updated_at,
        }
    }
}

/// One entry of an alert's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    /// Increasing id.
    pub id: i64,
    /// The alert.
    pub alert_id: String,
    /// When.
    pub at: NaiveDateTime,
    /// What happened.
    pub kind: EventKind,
    /// The alert's state after it.
    pub state: AlertState,
    /// The alert's severity after it.
    pub severity: Severity,
    /// Value then.
    pub value: Option<f64>,
    /// Who ("strata" for evaluations).
    pub actor: String,
    /// Note.
    pub note: String,
}

impl From<EventRow> for AlertEvent {
    fn from(e: EventRow) -> Self {
        Self {
            id: e.id,
            alert_id: e.alert_id,
            at: e.at,
            kind: e.kind,
            state: e.state,
            severity: e.severity,
            value: e.value,
            actor: e.actor,
            note: e.note,
        }
    }
}

/// A notification of an alert's event, and how its delivery went.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Id: also the delivery id receivers deduplicate on.
    pub id: String,
    /// The alert.
    pub alert_id: String,
    /// The event announced.
    pub event_id: i64,
    /// How it is sent.
    pub channel: Channel,
    /// URL or recipients.
    pub target: String,
    /// Where it is in the outbox.
    pub state: NotificationState,
    /// Attempts made.
    pub attempts: i64,
    /// Last failure.
    pub last_error: Option<String>,
    /// Delivered.
    pub sent_at: Option<NaiveDateTime>,
}

impl From<NotificationRow> for Notification {
    fn from(n: NotificationRow) -> Self {
        Self {
            id: n.id,
            alert_id: n.alert_id,
            event_id: n.event_id,
            channel: n.channel,
            target: n.target,
            state: n.state,
            attempts: n.attempts,
            last_error: n.last_error,
            sent_at: n.sent_at,
        }
    }
}

/// An alert with its timeline and notifications.
#[derive(Debug, Clone)]
pub struct AlertDetail {
    /// The alert.
    pub alert: Alert,
    /// Its timeline, oldest first.
    pub events: Vec<AlertEvent>,
    /// Its notifications.
    pub notifications: Vec<Notification>,
}

/// Filters of ListAlerts.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only these states (empty: all but pending).
    pub states: Vec<AlertState>,
    /// Only this severity.
    pub severity: Option<Severity>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only alerts that started at or after.
    pub since: Option<NaiveDateTime>,
}

/// Labels of an alert (from its key).
fn labels_of(a: &AlertRow) -> BTreeMap<String, String> {
    serde_json::from_str(&a.labels_key).unwrap_or_default()
}
