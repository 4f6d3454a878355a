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

use std::{collections::BTreeMap, time::Duration};

use chrono::{NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::broadcast;

use super::{Context, Error, Result, now};
pub use crate::db::alerts::{
    ACKNOWLEDGED, AlertFilter, AlertRow, EventRow, FIRING, NotificationRow, PENDING, RESOLVED, RuleRow,
};
use crate::db::{
    self,
    alerts::{self as store, NewEvent, NewNotification, Saved},
};

/// What a rule watches. Units: bytes, bytes/day, days, seconds, percent, rows, count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Database size, bytes.
    DatabaseSize,
    /// Each table's size (heap + indexes + TOAST), bytes; label `table`.
    TableSize,
    /// Database growth over the last week, bytes per day.
    DailyGrowth,
    /// Days until the database reaches the rule's capacity (or its disk's size) at the current
    /// growth; fires when *below* the thresholds.
    DaysUntilFull,
    /// Round trip of `SELECT 1` per node, seconds; label `node`.
    ProbeLatency,
    /// Used space of the file systems strata writes to locally (SQLite file, `file://` objects),
    /// percent; label `path`.
    DiskUsedPercent,
    /// Connections in use per pool, percent of its size; label `node`.
    PoolUtilizationPercent,
    /// Replication lag per replica, seconds; label `node`.
    ReplicaLag,
    /// Rows in the default partition of the rule's table.
    DefaultPartitionRows,
    /// 1 for each job whose latest run failed or timed out; label `job`.
    FailedJob,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Metric; 10] = [
        Metric::DatabaseSize,
        Metric::TableSize,
        Metric::DailyGrowth,
        Metric::DaysUntilFull,
        Metric::ProbeLatency,
        Metric::DiskUsedPercent,
        Metric::PoolUtilizationPercent,
        Metric::ReplicaLag,
        Metric::DefaultPartitionRows,
        Metric::FailedJob,
    ];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::DatabaseSize => "database_size",
            Metric::TableSize => "table_size",
            Metric::DailyGrowth => "daily_growth",
            Metric::DaysUntilFull => "days_until_full",
            Metric::ProbeLatency => "probe_latency",
            Metric::DiskUsedPercent => "disk_used_percent",
            Metric::PoolUtilizationPercent => "pool_utilization_percent",
            Metric::ReplicaLag => "replica_lag",
            Metric::DefaultPartitionRows => "default_partition_rows",
            Metric::FailedJob => "failed_job",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Result<Self> {
        Metric::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown metric {s:?}")))
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::DatabaseSize | Metric::TableSize => " bytes",
            Metric::DailyGrowth => " bytes/day",
            Metric::DaysUntilFull => " days",
            Metric::ProbeLatency | Metric::ReplicaLag => " s",
            Metric::DiskUsedPercent | Metric::PoolUtilizationPercent => " %",
            Metric::DefaultPartitionRows => " rows",
            Metric::FailedJob => "",
        }
    }

    /// The direction that is bad when the rule does not say.
    pub fn default_comparison(self) -> Comparison {
        if self == Metric::DaysUntilFull { Comparison::Below } else { Comparison::Above }
    }
}

/// Which side of a threshold fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// value ≥ threshold.
    Above,
    /// value ≤ threshold.
    Below,
}

impl Comparison {
    fn as_str(self) -> &'static str {
        match self {
            Comparison::Above => "above",
            Comparison::Below => "below",
        }
    }
    fn crosses(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value >= threshold,
            Comparison::Below => value <= threshold,
        }
    }
}

/// How bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Look at it soon.
    Warning,
    /// Look at it now.
    Critical,
}

impl Severity {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
    fn parse(s: &str) -> Self {
        if s == "critical" { Severity::Critical } else { Severity::Warning }
    }
}

/// A rule as a client gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    /// Unique name.
    pub name: String,
    /// What it watches.
    pub metric: Metric,
    /// Table selector for table metrics (empty: every table).
    pub table: String,
    /// None: the metric's default.
    pub comparison: Option<Comparison>,
    /// Warning threshold.
    pub warning: Option<f64>,
    /// Critical threshold.
    pub critical: Option<f64>,
    /// How long the condition must hold before the alert fires.
    pub for_duration: Duration,
    /// For days_until_full: the size that counts as full (0: the disk's size).
    pub capacity_bytes: i64,
    /// Copied onto the rule's alerts.
    pub labels: BTreeMap<String, String>,
    /// Evaluated.
    pub enabled: bool,
}

impl RuleSpec {
    /// Checks a rule.
    pub fn validate(mut self) -> Result<Self> {
        super::scheduler::check_name("rule", &self.name)?;
        let cmp = *self.comparison.get_or_insert(self.metric.default_comparison());
        for t in [self.warning, self.critical].into_iter().flatten() {
            if !t.is_finite() {
                return Err(Error::InvalidArgument("thresholds must be finite numbers".into()));
            }
        }
        match (self.warning, self.critical) {
            (None, None) => {
                return Err(Error::InvalidArgument("a rule needs a warning or a critical threshold".into()));
            }
            (Some(w), Some(c)) if !cmp.crosses(c, w) => {
                return Err(Error::InvalidArgument(format!(
                    "the critical threshold ({c}) must be at least as bad as the warning one ({w}) for a rule that fires {}",
                    cmp.as_str()
                )));
            }
            _ => {}
        }
        if self.for_duration > Duration::from_secs(7 * 86_400) {
            return Err(Error::InvalidArgument("for_duration must be at most 7 days".into()));
        }
        if self.capacity_bytes < 0 {
            return Err(Error::InvalidArgument("capacity_bytes must not be negative".into()));
        }
        if self.capacity_bytes > 0 && self.metric != Metric::DaysUntilFull {
            return Err(Error::InvalidArgument("capacity_bytes applies to days_until_full rules only".into()));
        }
        match self.metric {
            Metric::DefaultPartitionRows if self.table.is_empty() => {
                return Err(Error::InvalidArgument("default_partition_rows rules need a table".into()));
            }
            Metric::TableSize | Metric::DefaultPartitionRows if !self.table.is_empty() => {
                super::maintenance::parse_table(&self.table)?;
            }
            Metric::TableSize | Metric::DefaultPartitionRows => {}
            _ if !self.table.is_empty() => {
                return Err(Error::InvalidArgument(format!("{} rules take no table", self.metric.as_str())));
            }
            _ => {}
        }
        if self.labels.len() > 20 {
            return Err(Error::InvalidArgument("at most 20 labels".into()));
        }
        for (k, v) in &self.labels {
            if k.is_empty()
                || k.len() > 63
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || v.len() > 200
                || v.chars().any(char::is_control)
            {
                return Err(Error::InvalidArgument(format!(
                    "label {k:?}: names are 1-63 letters, digits or '_', values at most 200 printable characters"
                )));
            }
            if ["table", "node", "path", "job"].contains(&k.as_str()) {
                return Err(Error::InvalidArgument(format!("label {k:?} is set by strata for the metric")));
            }
        }
        Ok(self)
    }
}

fn rule_row(s: &RuleSpec, builtin: bool, t: NaiveDateTime) -> RuleRow {
    RuleRow {
        name: s.name.clone(),
        metric: s.metric.as_str().into(),
        table_name: s.table.clone(),
        comparison: s.comparison.unwrap_or(s.metric.default_comparison()).as_str().into(),
        warning: s.warning,
        critical: s.critical,
        for_ms: i64::try_from(s.for_duration.as_millis()).unwrap_or(i64::MAX),
        capacity_bytes: s.capacity_bytes,
        labels: serde_json::to_string(&s.labels).unwrap_or_else(|_| "{}".into()),
        enabled: s.enabled,
        builtin,
        created_at: t,
        updated_at: t,
    }
}

/// The spec a stored rule was made from.
pub fn spec_of(r: &RuleRow) -> Result<RuleSpec> {
    Ok(RuleSpec {
        name: r.name.clone(),
        metric: Metric::parse(&r.metric)?,
        table: r.table_name.clone(),
        comparison: Some(if r.comparison == "below" { Comparison::Below } else { Comparison::Above }),
        warning: r.warning,
        critical: r.critical,
        for_duration: Duration::from_millis(r.for_ms.max(0) as u64),
        capacity_bytes: r.capacity_bytes,
        labels: serde_json::from_str(&r.labels).unwrap_or_default(),
        enabled: r.enabled,
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// The defaults from the seeds, created at first start (each editable; deleting one is refused,
/// disable it).
fn builtin_rules() -> Vec<RuleSpec> {
    let rule = |name: &str, metric, warning, critical, for_secs| RuleSpec {
        name: name.into(),
        metric,
        table: String::new(),
        comparison: None,
        warning,
        critical,
        for_duration: Duration::from_secs(for_secs),
        capacity_bytes: 0,
        labels: BTreeMap::new(),
        enabled: true,
    };
    vec![
        rule("database-size", Metric::DatabaseSize, Some(500.0 * MIB), Some(1024.0 * MIB), 0),
        rule("probe-latency", Metric::ProbeLatency, Some(1.0), Some(5.0), 60),
        rule("disk-used", Metric::DiskUsedPercent, Some(80.0), Some(95.0), 0),
        rule("pool-utilization", Metric::PoolUtilizationPercent, Some(80.0), Some(95.0), 300),
        rule("replica-lag", Metric::ReplicaLag, Some(10.0), Some(60.0), 60),
        rule("failed-job", Metric::FailedJob, Some(1.0), None, 0),
    ]
}

/// Creates the built-in rules that do not exist yet.
pub async fn ensure_builtin(ctx: &Context) -> Result<usize> {
    let t = now();
    let mut conn = ctx.db.write().await?;
    let mut created = 0;
    for spec in builtin_rules() {
        if store::get_rule(&mut conn, &spec.name).await?.is_none()
            && store::insert_rule(&mut conn, &rule_row(&spec.validate()?, true, t)).await?
        {
            created += 1;
        }
    }
    Ok(created)
}

/// Creates a rule.
pub async fn create_rule(ctx: &Context, spec: RuleSpec) -> Result<RuleRow> {
    let spec = spec.validate()?;
    let row = rule_row(&spec, false, now());
    let mut conn = ctx.db.write().await?;
    if !store::insert_rule(&mut conn, &row).await? {
        return Err(Error::AlreadyExists(format!("rule {:?}", spec.name)));
    }
    Ok(row)
}

/// A rule.
pub async fn get_rule(ctx: &Context, name: &str) -> Result<RuleRow> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    store::get_rule(&mut conn, name).await?.ok_or_else(|| Error::NotFound(format!("rule {name:?}")))
}

/// Every rule.
pub async fn list_rules(ctx: &Context) -> Result<Vec<RuleRow>> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    Ok(store::list_rules(&mut conn).await?)
}

/// Replaces a rule's settings (the caller merged the field mask); its open alerts are
/// re-evaluated against the new thresholds at the next evaluation.
pub async fn update_rule(ctx: &Context, spec: RuleSpec) -> Result<RuleRow> {
    let current = get_rule(ctx, &spec.name).await?;
    let spec = spec.validate()?;
    let mut row = rule_row(&spec, current.builtin, current.created_at);
    row.updated_at = now();
    let mut conn = ctx.db.write().await?;
    if !store::update_rule(&mut conn, &row).await? {
        return Err(Error::NotFound(format!("rule {:?}", spec.name)));
    }
    Ok(row)
}

/// Deletes a rule (built-in ones are refused: disable them); its open alerts are resolved.
pub async fn delete_rule(ctx: &Context, name: &str, by: &str) -> Result<()> {
    let rule = get_rule(ctx, name).await?;
    if rule.builtin {
        return Err(Error::FailedPrecondition(format!(
            "rule {name:?} is built in and comes back at restart; disable it instead"
        )));
    }
    let mut conn = ctx.db.write().await?;
    store::delete_rule(&mut conn, name).await?;
    for a in store::open_alerts(&mut conn).await?.into_iter().filter(|a| a.rule_name == name) {
        close(ctx, &mut conn, a, by, "its rule was deleted").await?;
    }
    Ok(())
}

/// An alert with its timeline and notifications.
#[derive(Debug, Clone)]
pub struct AlertDetail {
    /// The alert.
    pub alert: AlertRow,
    /// Its timeline, oldest first.
    pub events: Vec<EventRow>,
    /// Its notifications.
    pub notifications: Vec<NotificationRow>,
}

/// Labels of an alert (from its key).
pub fn labels_of(a: &AlertRow) -> BTreeMap<String, String> {
    serde_json::from_str(&a.labels_key).unwrap_or_default()
}

/// Alerts newest first, filtered; returns the next page token.
pub async fn list_alerts(
    ctx: &Context,
    f: &AlertFilter,
    page_size: i64,
    token: Option<&str>,
) -> Result<(Vec<AlertRow>, Option<String>)> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let rows = store::list_alerts(&mut conn, f, token, page_size + 1).await?;
    let more = rows.len() as i64 > page_size;
    let rows: Vec<AlertRow> = rows.into_iter().take(page_size as usize).collect();
    let next = if more { rows.last().map(|r| r.id.clone()) } else { None };
    Ok((rows, next))
}

/// One alert with its timeline.
pub async fn get_alert(ctx: &Context, id: &str) -> Result<AlertDetail> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let alert = store::get_alert(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("alert {id:?}")))?;
    let events = store::events_of(&mut conn, id).await?;
    let notifications = store::notifications_of(&mut conn, id).await?;
    Ok(AlertDetail { alert, events, notifications })
}

/// Acknowledges a firing alert: someone is on it (notifications say so; it no longer counts
/// fully in the health score). An escalation makes it fire again.
pub async fn acknowledge(ctx: &Context, id: &str, by: &str, note: &str) -> Result<AlertDetail> {
    if note.len() > 2000 {
        return Err(Error::InvalidArgument("note must be at most 2000 bytes".into()));
    }
    for _ in 0..5 {
        let mut conn = ctx.db.write().await?;
        let a = store::get_alert(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("alert {id:?}")))?;
        match a.state.as_str() {
            FIRING => {}
            ACKNOWLEDGED => return Err(Error::FailedPrecondition(format!("alert {id} is already acknowledged"))),
            s => {
                return Err(Error::FailedPrecondition(format!(
                    "alert {id} is {s}: only firing alerts can be acknowledged"
                )));
            }
        }
        let t = now();
        let previous = a.updated_at;
        let next = AlertRow {
            state: ACKNOWLEDGED.into(),
            acknowledged_at: Some(t),
            acknowledged_by: Some(by.into()),
            updated_at: t,
            ..a
        };
        let ev = NewEvent { kind: "acknowledged".into(), value: Some(next.value), actor: by.into(), note: note.into() };
        let notify = notifications(ctx, &next, "acknowledged", note);
        if let Saved::Done(_) = store::save(&mut conn, &next, Some(previous), Some(&ev), &notify).await? {
            drop(conn);
            return get_alert(ctx, id).await;
        }
    }
    Err(Error::Busy(format!("alert {id} kept changing; try again")))
}

/// Resolves an open alert by hand. If its condition still holds, the next evaluation opens a
/// new one.
pub async fn resolve(ctx: &Context, id: &str, by: &str, note: &str) -> Result<AlertDetail> {
    if note.len() > 2000 {
        return Err(Error::InvalidArgument("note must be at most 2000 bytes".into()));
    }
    for _ in 0..5 {
        let mut conn = ctx.db.write().await?;
        let a = store::get_alert(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("alert {id:?}")))?;
        if a.state == RESOLVED {
            return Err(Error::FailedPrecondition(format!("alert {id} is already resolved")));
        }
        if close(ctx, &mut conn, a, by, note).await? {
            drop(conn);
            return get_alert(ctx, id).await;
        }
    }
    Err(Error::Busy(format!("alert {id} kept changing; try again")))
}

/// Resolves (or, if it never fired, forgets) an open alert; false on a concurrent change.
async fn close(ctx: &Context, conn: &mut db::Conn, a: AlertRow, by: &str, note: &str) -> Result<bool> {
    if a.state == PENDING {
        return Ok(store::delete_pending(conn, &a.id, a.updated_at).await?);
    }
    let t = now();
    let previous = a.updated_at;
    let next =
        AlertRow { state: RESOLVED.into(), resolved_at: Some(t), resolved_by: Some(by.into()), updated_at: t, ..a };
    let ev = NewEvent { kind: "resolved".into(), value: Some(next.value), actor: by.into(), note: note.into() };
    let notify = notifications(ctx, &next, "resolved", note);
    Ok(matches!(store::save(conn, &next, Some(previous), Some(&ev), &notify).await?, Saved::Done(_)))
}

/// The JSON document a notification carries.
fn payload(a: &AlertRow, kind: &str, note: &str, event_id: i64) -> String {
    let ts = |t: Option<NaiveDateTime>| t.map(|t| t.and_utc().to_rfc3339());
    json!({
        "event": kind,
        "event_id": event_id,
        "note": note,
        "at": a.updated_at.and_utc().to_rfc3339(),
        "alert": {
            "id": a.id,
            "rule": a.rule_name,
            "labels": labels_of(a),
            "state": a.state,
            "severity": a.severity,
            "value": a.value,
            "threshold": a.threshold,
            "summary": a.summary,
            "started_at": ts(Some(a.started_at)),
            "fired_at": ts(a.fired_at),
            "acknowledged_by": a.acknowledged_by,
            "resolved_at": ts(a.resolved_at),
            "resolved_by": a.resolved_by,
        }
    })
    .to_string()
}

/// Notifications for an event, one per configured channel.
fn notifications(ctx: &Context, a: &AlertRow, kind: &str, note: &str) -> Vec<NewNotification> {
    let mut out: Vec<NewNotification> = Vec::new();
    let (alert, kind_s, note_s) = (a.clone(), kind.to_owned(), note.to_owned());
    let make = move |event_id: i64| payload(&alert, &kind_s, &note_s, event_id);
    if let Some(url) = &ctx.config.alert_webhook_url {
        out.push(("webhook".into(), url.clone(), Box::new(make.clone())));
    }
    if ctx.config.alert_smtp_url.is_some() && !ctx.config.alert_email_to.is_empty() {
        out.push(("email".into(), ctx.config.alert_email_to.join(", "), Box::new(make)));
    }
    out
}

/// One observed value of a metric.
#[derive(Debug, Clone)]
struct Series {
    labels: BTreeMap<String, String>,
    value: f64,
}

fn one(value: f64) -> Vec<Series> {
    vec![Series { labels: BTreeMap::new(), value }]
}

fn labelled(k: &str, v: impl Into<String>, value: f64) -> Series {
    Series { labels: [(k.to_string(), v.into())].into(), value }
}

/// Total and available bytes of the file system holding `path`.
fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let total = fs4::total_space(path).ok()?;
    let free = fs4::available_space(path).ok()?;
    Some((total, free))
}

/// Local paths strata writes to: the SQLite file and a `file://` object store, one per file
/// system (a disk holding both is reported once).
fn local_paths(ctx: &Context) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut candidates = Vec::new();
    if let Some(p) = ctx.db.sqlite_path() {
        let p = std::path::Path::new(p);
        candidates.push(
            p.parent().filter(|d| !d.as_os_str().is_empty()).map(|d| d.to_path_buf()).unwrap_or_else(|| ".".into()),
        );
    }
    if let Some(dir) = ctx.config.object_store_url.strip_prefix("file://") {
        candidates.push(std::path::PathBuf::from(dir));
    }
    let mut devices = Vec::new();
    candidates
        .into_iter()
        .filter(|p| match std::fs::metadata(p) {
            Ok(m) if devices.contains(&m.dev()) => false,
            Ok(m) => {
                devices.push(m.dev());
                true
            }
            Err(_) => false,
        })
        .collect()
}

/// Reads a metric's current series.
async fn observe(ctx: &Context, rule: &RuleSpec, cache: &mut Cache) -> Result<Vec<Series>> {
    Ok(match rule.metric {
        Metric::DatabaseSize => one(cache.storage(ctx).await?.stats.size_bytes as f64),
        Metric::TableSize => cache
            .storage(ctx)
            .await?
            .stats
            .tables
            .iter()
            .filter(|t| {
                rule.table.is_empty()
                    || rule.table == t.table_name
                    || rule.table == format!("{}.{}", t.schema_name, t.table_name)
            })
            .map(|t| {
                labelled(
                    "table",
                    format!("{}.{}", t.schema_name, t.table_name),
                    (t.table_bytes + t.index_bytes + t.toast_bytes) as f64,
                )
            })
            .collect(),
        Metric::DailyGrowth => one(cache.growth(ctx, None).await?.database.bytes_per_day),
        Metric::DaysUntilFull => {
            let capacity = if rule.capacity_bytes > 0 {
                Some(rule.capacity_bytes)
            } else {
                local_paths(ctx).first().and_then(|p| disk_space(p)).map(|(total, _)| total as i64)
            };
            let Some(capacity) = capacity else { return Ok(Vec::new()) };
            match cache.growth(ctx, Some(capacity)).await?.database.days_until_target {
                Some(d) => one(d),
                None => Vec::new(),
            }
        }
        Metric::ProbeLatency => super::admin::test_connection(ctx)
            .await
            .into_iter()
            .map(|p| {
                // An unreachable node counts as infinitely slow: the rule fires critical.
                let secs = p.result.map(|d| d.as_secs_f64()).unwrap_or(f64::MAX);
                labelled("node", p.name, secs)
            })
            .collect(),
        Metric::DiskUsedPercent => local_paths(ctx)
            .into_iter()
            .filter_map(|p| {
                let (total, free) = disk_space(&p)?;
                (total > 0)
                    .then(|| labelled("path", p.display().to_string(), 100.0 * (total - free) as f64 / total as f64))
            })
            .collect(),
        Metric::PoolUtilizationPercent => ctx
            .db
            .pool_stats()
            .into_iter()
            .filter(|p| p.max_size > 0)
            .map(|p| {
                let used = p.connections.saturating_sub(p.idle);
                labelled("node", p.name, 100.0 * f64::from(used) / f64::from(p.max_size))
            })
            .collect(),
        Metric::ReplicaLag => ctx
            .db
            .nodes()
            .into_iter()
            .filter(|n| n.role == db::Role::Replica)
            .filter_map(|n| {
                let lag = if n.health.healthy { n.health.lag?.as_secs_f64() } else { f64::MAX };
                Some(labelled("node", n.name, lag))
            })
            .collect(),
        Metric::DefaultPartitionRows => {
            let (schema, table) = super::maintenance::parse_table(&rule.table)?;
            let parent = super::partitions::resolve(ctx, &schema, &table).await?;
            let health = super::partitions::health(ctx, parent).await?;
            vec![labelled("table", rule.table.clone(), health.default_rows as f64)]
        }
        Metric::FailedJob => super::scheduler::list_jobs(ctx)
            .await?
            .into_iter()
            .filter(|j| j.row.enabled)
            .map(|j| {
                let failed = j
                    .last_run
                    .as_ref()
                    .is_some_and(|r| r.state == super::scheduler::FAILED || r.state == super::scheduler::TIMED_OUT);
                labelled("job", j.row.name, if failed { 1.0 } else { 0.0 })
            })
            .collect(),
    })
}

/// Figures read once per evaluation.
#[derive(Default)]
struct Cache {
    storage: Option<super::metrics::StorageMetrics>,
    growth: BTreeMap<Option<i64>, super::metrics::Growth>,
}

impl Cache {
    async fn storage(&mut self, ctx: &Context) -> Result<&super::metrics::StorageMetrics> {
        if self.storage.is_none() {
            let prefix = super::metrics::TablePrefix::parse("")?;
            self.storage = Some(super::metrics::storage_metrics(ctx, &prefix).await?);
        }
        Ok(self.storage.as_ref().expect("just set"))
    }

    async fn growth(&mut self, ctx: &Context, target: Option<i64>) -> Result<&super::metrics::Growth> {
        if let std::collections::btree_map::Entry::Vacant(e) = self.growth.entry(target) {
            let q = super::metrics::GrowthQuery {
                window: super::metrics::Window::Week,
                target_size_bytes: target,
                prefix: super::metrics::TablePrefix::parse("")?,
            };
            e.insert(super::metrics::growth(ctx, &q).await?);
        }
        Ok(&self.growth[&target])
    }
}

/// The level a value reaches under a rule, with the threshold crossed.
fn level(rule: &RuleSpec, value: f64) -> Option<(Severity, f64)> {
    let cmp = rule.comparison.unwrap_or(rule.metric.default_comparison());
    if let Some(c) = rule.critical
        && cmp.crosses(value, c)
    {
        return Some((Severity::Critical, c));
    }
    match rule.warning {
        Some(w) if cmp.crosses(value, w) => Some((Severity::Warning, w)),
        _ => None,
    }
}

fn fmt_value(v: f64) -> String {
    if v == f64::MAX {
        "unreachable".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

fn summary(rule: &RuleSpec, labels: &BTreeMap<String, String>, value: f64, sev: Severity, threshold: f64) -> String {
    let on: Vec<String> = labels
        .iter()
        .filter(|(k, _)| ["table", "node", "path", "job"].contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let cmp = if rule.comparison == Some(Comparison::Below) { "≤" } else { "≥" };
    let unit = rule.metric.unit();
    format!(
        "{}{} is {}{unit} ({cmp} {}{unit}, {})",
        rule.metric.as_str(),
        if on.is_empty() { String::new() } else { format!(" {}", on.join(" ")) },
        fmt_value(value),
        fmt_value(threshold),
        sev.as_str()
    )
}

/// What an evaluation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// Rules evaluated.
    pub rules: usize,
    /// Series observed.
    pub series: usize,
    /// Alerts that fired.
    pub fired: usize,
    /// Alerts that escalated.
    pub escalated: usize,
    /// Alerts resolved because the condition cleared.
    pub resolved: usize,
    /// Rules whose metric could not be read (their alerts are left as they are).
    pub failed_rules: Vec<String>,
}

/// Evaluates every enabled rule once: opens, fires, escalates and resolves alerts.
pub async fn evaluate(ctx: &Context) -> Result<Evaluation> {
    let mut out = Evaluation::default();
    let mut cache = Cache::default();
    let rules: Vec<RuleRow> = list_rules(ctx).await?;
    let mut conn = ctx.db.write().await?;
    let open = store::open_alerts(&mut conn).await?;
    drop(conn);
    let mut open_by: BTreeMap<(String, String), AlertRow> =
        open.into_iter().map(|a| ((a.rule_name.clone(), a.labels_key.clone()), a)).collect();
    for row in &rules {
        let rule = spec_of(row)?;
        if !rule.enabled {
            continue;
        }
        out.rules += 1;
        let series = match observe(ctx, &rule, &mut cache).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(rule = %rule.name, error = %e, "reading the rule's metric failed; its alerts stay as they are");
                out.failed_rules.push(format!("{}: {e}", rule.name));
                open_by.retain(|(r, _), _| r != &rule.name);
                continue;
            }
        };
        out.series += series.len();
        for s in series {
            let mut labels = rule.labels.clone();
            labels.extend(s.labels.clone());
            labels.insert("metric".into(), rule.metric.as_str().into());
            let key = serde_json::to_string(&labels).unwrap_or_default();
            let existing = open_by.remove(&(rule.name.clone(), key.clone()));
            apply(ctx, &rule, &labels, key, s.value, existing, &mut out).await?;
        }
        // Open alerts of this rule whose series is gone (a dropped table, a removed replica).
        let gone: Vec<(String, String)> = open_by.keys().filter(|(r, _)| r == &rule.name).cloned().collect();
        for k in gone {
            let a = open_by.remove(&k).expect("listed");
            let mut conn = ctx.db.write().await?;
            if close(ctx, &mut conn, a, "strata", "no longer observed").await? {
                out.resolved += 1;
            }
        }
    }
    // Alerts of disabled or deleted rules.
    for (_, a) in open_by {
        let mut conn = ctx.db.write().await?;
        close(ctx, &mut conn, a, "strata", "its rule is disabled or gone").await?;
    }
    let mut conn = ctx.db.write().await?;
    let pruned = store::prune_resolved(&mut conn, ctx.config.alert_history).await?;
    if pruned > 0 {
        tracing::debug!(pruned, "old resolved alerts deleted");
    }
    Ok(out)
}

/// Applies one observation to its open alert (if any). A concurrent change (an acknowledgement)
/// makes this observation wait for the next evaluation.
async fn apply(
    ctx: &Context,
    rule: &RuleSpec,
    labels: &BTreeMap<String, String>,
    key: String,
    value: f64,
    existing: Option<AlertRow>,
    out: &mut Evaluation,
) -> Result<()> {
    let t = now();
    let lvl = level(rule, value);
    let mut conn = ctx.db.write().await?;
    let Some((sev, threshold)) = lvl else {
        if let Some(a) = existing
            && close(ctx, &mut conn, a, "strata", "condition cleared").await?
        {
            out.resolved += 1;
        }
        return Ok(());
    };
    let text = summary(rule, labels, value, sev, threshold);
    let held = |since: NaiveDateTime| (t - since).to_std().unwrap_or_default() >= rule.for_duration;
    match existing {
        None => {
            let firing = rule.for_duration.is_zero();
            let a = AlertRow {
                id: uuid::Uuid::now_v7().to_string(),
                rule_name: rule.name.clone(),
                labels_key: key,
                state: if firing { FIRING } else { PENDING }.into(),
                severity: sev.as_str().into(),
                value,
                threshold,
                summary: text,
                started_at: t,
                fired_at: firing.then_some(t),
                acknowledged_at: None,
                acknowledged_by: None,
                resolved_at: None,
                resolved_by: None,
                updated_at: t,
            };
            if firing {
                let ev =
                    NewEvent { kind: "firing".into(), value: Some(value), actor: "strata".into(), note: String::new() };
                let notify = notifications(ctx, &a, "firing", "");
                if let Saved::Done(_) = store::save(&mut conn, &a, None, Some(&ev), &notify).await? {
                    out.fired += 1;
                }
            } else {
                store::save(&mut conn, &a, None, None, &[]).await?;
            }
        }
        Some(a) => {
            let previous = a.updated_at;
            let old = Severity::parse(&a.severity);
            let (next, kind) = if a.state == PENDING {
                if held(a.started_at) {
                    (AlertRow { state: FIRING.into(), fired_at: Some(t), ..a.clone() }, Some("firing"))
                } else {
                    (a.clone(), None)
                }
            } else if sev > old {
                // Escalation fires again, also when someone had acknowledged the lesser alert.
                (
                    AlertRow { state: FIRING.into(), acknowledged_at: None, acknowledged_by: None, ..a.clone() },
                    Some("escalated"),
                )
            } else if sev < old {
                (a.clone(), Some("deescalated"))
            } else {
                (a.clone(), None)
            };
            if kind.is_none() && a.value == value && a.severity == sev.as_str() {
                return Ok(());
            }
            let next =
                AlertRow { severity: sev.as_str().into(), value, threshold, summary: text, updated_at: t, ..next };
            let ev = kind.map(|k| NewEvent {
                kind: k.into(),
                value: Some(value),
                actor: "strata".into(),
                note: String::new(),
            });
            let notify = match kind {
                Some(k @ ("firing" | "escalated")) => notifications(ctx, &next, k, ""),
                _ => Vec::new(),
            };
            if let Saved::Done(_) = store::save(&mut conn, &next, Some(previous), ev.as_ref(), &notify).await? {
                match kind {
                    Some("firing") => out.fired += 1,
                    Some("escalated") => out.escalated += 1,
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Delivery retries: exponential from 1 s, doubling, at most 5 minutes apart.
fn retry_delay(attempts: i64) -> Duration {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(attempts.clamp(0, 64) as usize)
        .unwrap_or(Duration::from_secs(300))
}

/// How long a sender holds a claimed notification (longer than any attempt takes).
const SEND_LEASE: Duration = Duration::from_secs(60);
/// How long one webhook or SMTP attempt may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends due notifications (at most 20 per call); returns how many were attempted.
pub async fn deliver_due(ctx: &Context, http: &reqwest::Client) -> Result<usize> {
    let t = now();
    let mut conn = ctx.db.write().await?;
    let due = store::claim_due(&mut conn, t, t + chrono::Duration::from_std(SEND_LEASE).expect("small"), 20).await?;
    drop(conn);
    let n = due.len();
    for d in due {
        let result = match tokio::time::timeout(SEND_TIMEOUT, send(ctx, http, &d)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}", humantime::format_duration(SEND_TIMEOUT))),
        };
        let t = now();
        let mut conn = ctx.db.write().await?;
        match result {
            Ok(()) => {
                let ev = NewEvent {
                    kind: "notified".into(),
                    value: None,
                    actor: "strata".into(),
                    note: format!("{} to {}", d.channel, d.target),
                };
                store::record_attempt(&mut conn, &d, "sent", t, None, t, Some(&ev)).await?;
                tracing::info!(alert = %d.alert_id, channel = %d.channel, attempt = d.attempts + 1, "alert notification sent");
            }
            Err(e) if d.attempts + 1 < i64::from(ctx.config.alert_notify_attempts) => {
                let next =
                    t + chrono::Duration::from_std(retry_delay(d.attempts)).unwrap_or(chrono::Duration::seconds(300));
                store::record_attempt(&mut conn, &d, PENDING, next, Some(&e), t, None).await?;
                tracing::warn!(alert = %d.alert_id, channel = %d.channel, attempt = d.attempts + 1, error = %e, "alert notification failed; retrying");
            }
            Err(e) => {
                let ev = NewEvent {
                    kind: "notify_failed".into(),
                    value: None,
                    actor: "strata".into(),
                    note: format!("{} to {} failed after {} attempts: {e}", d.channel, d.target, d.attempts + 1),
                };
                store::record_attempt(&mut conn, &d, "failed", t, Some(&e), t, Some(&ev)).await?;
                tracing::error!(alert = %d.alert_id, channel = %d.channel, error = %e, "alert notification failed for good");
            }
        }
    }
    Ok(n)
}

/// The signature header value of a webhook body: hex HMAC-SHA256 over `"<timestamp>.<body>"`.
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn send(ctx: &Context, http: &reqwest::Client, n: &NotificationRow) -> std::result::Result<(), String> {
    match n.channel.as_str() {
        "webhook" => {
            let ts = Utc::now().timestamp();
            let doc: serde_json::Value = serde_json::from_str(&n.payload).unwrap_or_default();
            let mut req = http
                .post(&n.target)
                .header("content-type", "application/json")
                .header("x-strata-delivery", &n.id)
                .header("x-strata-event", doc["event"].as_str().unwrap_or_default())
                .header("x-strata-timestamp", ts.to_string())
                .body(n.payload.clone());
            if let Some(secret) = &ctx.config.alert_webhook_secret {
                req = req.header("x-strata-signature", sign(secret, ts, &n.payload));
            }
            let resp = req.send().await.map_err(|e| format!("webhook: {e}"))?;
            if resp.status().is_success() { Ok(()) } else { Err(format!("webhook answered {}", resp.status())) }
        }
        "email" => send_email(ctx, n).await,
        other => Err(format!("unknown channel {other:?}")),
    }
}

async fn send_email(ctx: &Context, n: &NotificationRow) -> std::result::Result<(), String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor, message::header::ContentType};
    let url = ctx.config.alert_smtp_url.as_deref().ok_or("alert_smtp_url is not set")?;
    let doc: serde_json::Value = serde_json::from_str(&n.payload).map_err(|e| e.to_string())?;
    let a = &doc["alert"];
    let subject = format!(
        "[strata] {} {}: {}",
        doc["event"].as_str().unwrap_or_default().to_uppercase(),
        a["severity"].as_str().unwrap_or_default(),
        a["summary"].as_str().unwrap_or_default()
    );
    let body = format!(
        "{}\n\nalert {}\nrule {}\nstate {}\nlabels {}\nstarted {}\n{}\n",
        a["summary"].as_str().unwrap_or_default(),
        a["id"].as_str().unwrap_or_default(),
        a["rule"].as_str().unwrap_or_default(),
        a["state"].as_str().unwrap_or_default(),
        a["labels"],
        a["started_at"].as_str().unwrap_or_default(),
        doc["note"].as_str().filter(|s| !s.is_empty()).map(|s| format!("note: {s}")).unwrap_or_default(),
    );
    let mut m = Message::builder()
        .from(ctx.config.alert_email_from.parse().map_err(|e| format!("alert_email_from: {e}"))?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in n.target.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        m = m.to(to.parse().map_err(|e| format!("recipient {to:?}: {e}"))?);
    }
    let m = m.body(body).map_err(|e| e.to_string())?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map_err(|e| format!("alert_smtp_url: {e}"))?
        .timeout(Some(SEND_TIMEOUT))
        .build();
    transport.send(m).await.map(|_| ()).map_err(|e| format!("smtp: {e}"))
}

/// A change pushed to WatchAlerts subscribers.
#[derive(Debug, Clone)]
pub enum Change {
    /// An event of an alert, with the alert as it was after it.
    Event(Box<(EventRow, AlertRow)>),
    /// The subscriber fell behind and missed changes: what follows is the current open alerts.
    Resync,
}

/// The feed of this instance.
pub type Feed = broadcast::Sender<Change>;

/// How many changes a subscriber may be behind before it is told to resync.
pub const FEED_CAPACITY: usize = 1024;
/// How often the tailer reads new events while someone is watching.
const TAIL_EVERY: Duration = Duration::from_millis(250);
/// Events committed up to this late (out of id order) are still seen.
const TAIL_WINDOW: Duration = Duration::from_secs(10);

/// Follows the event table and publishes every new event on `ctx.alert_feed` while anyone
/// listens. Runs until `cancel`.
pub async fn tail(ctx: Context, cancel: tokio_util::sync::CancellationToken) {
    let mut last = None;
    let mut seen: BTreeMap<i64, NaiveDateTime> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(TAIL_EVERY) => {}
        }
        if ctx.alert_feed.receiver_count() == 0 {
            last = None;
            continue;
        }
        let step = async {
            let mut conn = ctx.db.read_prefer_primary().await?.0;
            let t = now();
            let after = match last {
                Some(l) => l,
                None => {
                    // First subscriber: start from now.
                    let l = store::last_event_id(&mut conn).await?;
                    last = Some(l);
                    seen.clear();
                    return Ok::<_, Error>(());
                }
            };
            let since = t - chrono::Duration::from_std(TAIL_WINDOW).expect("small");
            for ev in store::recent_events(&mut conn, after, since, 1000).await? {
                if ev.id <= after && seen.contains_key(&ev.id) {
                    continue;
                }
                if seen.insert(ev.id, ev.at).is_some() {
                    continue;
                }
                last = Some(last.unwrap_or(0).max(ev.id));
                if let Some(a) = store::get_alert(&mut conn, &ev.alert_id).await? {
                    let _ = ctx.alert_feed.send(Change::Event(Box::new((ev, a))));
                }
            }
            seen.retain(|_, at| *at >= since - chrono::Duration::seconds(1));
            Ok(())
        };
        if let Err(e) = step.await {
            tracing::debug!(error = %e, "reading alert events failed; retrying");
        }
    }
}

/// What WatchAlerts sends.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// An open alert as it is.
    Snapshot(Box<AlertRow>),
    /// An event and the alert after it.
    Event(Box<(EventRow, AlertRow)>),
    /// The subscriber missed changes; snapshots follow.
    Resync,
}

/// Which changes a subscriber wants.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    /// Open alerts first.
    pub send_initial: bool,
    /// At least this severity.
    pub min_severity: Option<Severity>,
    /// Only this rule.
    pub rule: Option<String>,
}

impl WatchFilter {
    fn passes(&self, a: &AlertRow) -> bool {
        self.rule.as_ref().is_none_or(|r| r == &a.rule_name)
            && self.min_severity.is_none_or(|m| Severity::parse(&a.severity) >= m)
    }
}

/// Severity from its stored name.
pub fn severity(s: &str) -> Severity {
    Severity::parse(s)
}

async fn send_open(
    ctx: &Context,
    f: &WatchFilter,
    tx: &tokio::sync::mpsc::Sender<Result<WatchItem>>,
) -> std::result::Result<(), ()> {
    let states = vec![FIRING.to_string(), ACKNOWLEDGED.to_string()];
    match list_alerts(ctx, &AlertFilter { states, ..Default::default() }, 10_000, None).await {
        Ok((open, _)) => {
            for a in open.into_iter().rev().filter(|a| f.passes(a)) {
                deliver(ctx, tx, Ok(WatchItem::Snapshot(Box::new(a)))).await?;
            }
            Ok(())
        }
        Err(e) => {
            let _ = deliver(ctx, tx, Err(e)).await;
            Err(())
        }
    }
}

/// Hands one item to the subscriber's stream; Err when the subscriber went away or the server is
/// stopping. A subscriber that stopped reading must not keep this task (and the server's
/// shutdown) waiting in a full channel.
async fn deliver(
    ctx: &Context,
    tx: &tokio::sync::mpsc::Sender<Result<WatchItem>>,
    item: Result<WatchItem>,
) -> std::result::Result<(), ()> {
    tokio::select! {
        biased;
        _ = ctx.closing.cancelled() => Err(()),
        sent = tx.send(item) => sent.map_err(|_| ()),
    }
}

/// Streams alert changes to `tx` until the subscriber goes away or the server stops. Subscribes
/// before reading the open alerts, so nothing between the two is lost.
pub async fn watch(ctx: Context, f: WatchFilter, tx: tokio::sync::mpsc::Sender<Result<WatchItem>>) {
    let mut rx = ctx.alert_feed.subscribe();
    if f.send_initial && send_open(&ctx, &f, &tx).await.is_err() {
        return;
    }
    loop {
        let item = tokio::select! {
            _ = ctx.closing.cancelled() => break,
            _ = tx.closed() => break,
            r = rx.recv() => r,
        };
        match item {
            Ok(Change::Event(b)) => {
                if f.passes(&b.1) && deliver(&ctx, &tx, Ok(WatchItem::Event(b))).await.is_err() {
                    break;
                }
            }
            Ok(Change::Resync) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "an alert watcher fell behind; resyncing it");
                // The changes still queued for this subscriber are older than the snapshot that
                // follows: start again from now (before reading the snapshot, so nothing after it
                // is lost) rather than replay them after it.
                rx = rx.resubscribe();
                if deliver(&ctx, &tx, Ok(WatchItem::Resync)).await.is_err() || send_open(&ctx, &f, &tx).await.is_err() {
                    break;
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// A factor of the health score.
#[derive(Debug, Clone)]
pub struct Factor {
    /// Name.
    pub name: &'static str,
    /// Points taken off (0 when fine).
    pub penalty: u32,
    /// The numbers behind it.
    pub detail: String,
}

/// The health report.
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// 0–100.
    pub score: u32,
    /// healthy (≥ 80), degraded (≥ 50), critical.
    pub status: &'static str,
    /// Every factor, penalised or not.
    pub factors: Vec<Factor>,
}

/// The health score: 100 minus the penalties below (at least 0); 0 outright when the primary is
/// unreachable. Documented in docs/api.md ("Health score").
pub async fn health_report(ctx: &Context) -> Result<HealthReport> {
    let mut factors = Vec::new();
    let nodes = ctx.db.nodes();
    let primary_up = nodes.iter().any(|n| n.role == db::Role::Primary && n.health.healthy);
    factors.push(Factor {
        name: "primary",
        penalty: if primary_up { 0 } else { 100 },
        detail: if primary_up { "reachable".into() } else { "unreachable".into() },
    });
    if !primary_up {
        return Ok(HealthReport { score: 0, status: "critical", factors });
    }
    let (open, _) = list_alerts(
        ctx,
        &AlertFilter { states: vec![FIRING.into(), ACKNOWLEDGED.into()], ..Default::default() },
        10_000,
        None,
    )
    .await?;
    let count = |sev: &str, state: &str| open.iter().filter(|a| a.severity == sev && a.state == state).count() as u32;
    let (cf, ca, wf, wa) = (
        count("critical", FIRING),
        count("critical", ACKNOWLEDGED),
        count("warning", FIRING),
        count("warning", ACKNOWLEDGED),
    );
    factors.push(Factor {
        name: "critical_alerts",
        penalty: (cf * 25 + ca * 10).min(60),
        detail: format!("{cf} firing, {ca} acknowledged (25 and 10 points each, at most 60)"),
    });
    factors.push(Factor {
        name: "warning_alerts",
        penalty: (wf * 8 + wa * 3).min(30),
        detail: format!("{wf} firing, {wa} acknowledged (8 and 3 points each, at most 30)"),
    });
    let lagging: Vec<String> =
        nodes.iter().filter(|n| n.role == db::Role::Replica && !n.serving_reads).map(|n| n.name.clone()).collect();
    factors.push(Factor {
        name: "replicas",
        penalty: if lagging.is_empty() { 0 } else { 10 },
        detail: if lagging.is_empty() {
            format!("{} replica(s) serving reads", nodes.iter().filter(|n| n.role == db::Role::Replica).count())
        } else {
            format!("not serving reads: {}", lagging.join(", "))
        },
    });
    let pool_wait = ctx
        .db
        .pool_stats()
        .iter()
        .map(|p| {
            let total = p.gets_direct + p.gets_waited + p.gets_timed_out;
            if total == 0 { 0.0 } else { (p.gets_waited + p.gets_timed_out) as f64 / total as f64 }
        })
        .fold(0.0, f64::max);
    factors.push(Factor {
        name: "pool_saturation",
        penalty: if pool_wait > 0.2 { 10 } else { 0 },
        detail: format!(
            "{:.0} % of checkouts waited or timed out on the busiest pool (over 20 % costs 10)",
            pool_wait * 100.0
        ),
    });
    let failed: Vec<String> = super::scheduler::list_jobs(ctx)
        .await?
        .into_iter()
        .filter(|j| {
            j.row.enabled
                && j.last_run
                    .as_ref()
                    .is_some_and(|r| r.state == super::scheduler::FAILED || r.state == super::scheduler::TIMED_OUT)
        })
        .map(|j| j.row.name)
        .collect();
    factors.push(Factor {
        name: "failed_jobs",
        penalty: (failed.len() as u32 * 5).min(15),
        detail: if failed.is_empty() {
            "none".into()
        } else {
            format!("{} (5 points each, at most 15)", failed.join(", "))
        },
    });
    // Days until the disk (or the database's file system) is full at the current growth.
    let mut cache = Cache::default();
    let capacity = local_paths(ctx).first().and_then(|p| disk_space(p)).map(|(total, _)| total as i64);
    let days = match capacity {
        Some(c) => cache.growth(ctx, Some(c)).await.ok().and_then(|g| g.database.days_until_target),
        None => None,
    };
    factors.push(Factor {
        name: "capacity_forecast",
        penalty: match days {
            Some(d) if d < 7.0 => 30,
            Some(d) if d < 30.0 => 15,
            _ => 0,
        },
        detail: match (capacity, days) {
            (None, _) => "no local disk to forecast against (PostgreSQL): see days_until_full rules".into(),
            (Some(c), None) => format!("not growing toward {c} bytes"),
            (Some(c), Some(d)) => format!("{d:.1} days until {c} bytes (under 30 costs 15, under 7 costs 30)"),
        },
    });
    let penalty: u32 = factors.iter().map(|f| f.penalty).sum();
    let score = 100u32.saturating_sub(penalty);
    let status = if score >= 80 {
        "healthy"
    } else if score >= 50 {
        "degraded"
    } else {
        "critical"
    };
    Ok(HealthReport { score, status, factors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(metric: Metric, warning: Option<f64>, critical: Option<f64>) -> RuleSpec {
        RuleSpec {
            name: "r".into(),
            metric,
            table: String::new(),
            comparison: None,
            warning,
            critical,
            for_duration: Duration::ZERO,
            capacity_bytes: 0,
            labels: BTreeMap::new(),
            enabled: true,
        }
    }

    #[test]
    fn levels_follow_thresholds_and_direction() {
        let r = rule(Metric::DatabaseSize, Some(100.0), Some(200.0)).validate().unwrap();
        assert_eq!(level(&r, 99.0), None);
        assert_eq!(level(&r, 100.0), Some((Severity::Warning, 100.0)));
        assert_eq!(level(&r, 250.0), Some((Severity::Critical, 200.0)));
        let r = rule(Metric::DaysUntilFull, Some(30.0), Some(7.0)).validate().unwrap();
        assert_eq!(r.comparison, Some(Comparison::Below));
        assert_eq!(level(&r, 45.0), None);
        assert_eq!(level(&r, 20.0), Some((Severity::Warning, 30.0)));
        assert_eq!(level(&r, 3.0), Some((Severity::Critical, 7.0)));
    }

    #[test]
    fn rules_are_checked() {
        let bad = |r: RuleSpec| matches!(r.validate(), Err(Error::InvalidArgument(_)));
        assert!(bad(rule(Metric::DatabaseSize, None, None)));
        assert!(bad(rule(Metric::DatabaseSize, Some(200.0), Some(100.0))), "critical below warning");
        assert!(bad(rule(Metric::DaysUntilFull, Some(7.0), Some(30.0))), "critical above warning for a below rule");
        assert!(bad(rule(Metric::DatabaseSize, Some(f64::NAN), None)));
        assert!(bad(RuleSpec { table: "t".into(), ..rule(Metric::DatabaseSize, Some(1.0), None) }));
        assert!(bad(rule(Metric::DefaultPartitionRows, Some(1.0), None)), "needs a table");
        assert!(bad(RuleSpec { name: "a b".into(), ..rule(Metric::DatabaseSize, Some(1.0), None) }));
        assert!(bad(RuleSpec {
            labels: [("table".to_string(), "x".to_string())].into(),
            ..rule(Metric::DatabaseSize, Some(1.0), None)
        }));
        assert!(bad(RuleSpec { capacity_bytes: 5, ..rule(Metric::DatabaseSize, Some(1.0), None) }));
        assert!(rule(Metric::TableSize, Some(1.0), None).validate().is_ok());
        for b in builtin_rules() {
            assert!(b.validate().is_ok());
        }
    }

    #[test]
    fn webhook_signatures_are_hmac_sha256_of_timestamp_and_body() {
        // Computed independently: Python's hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).
        assert_eq!(
            sign("secret", 1_700_000_000, "{}"),
            "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn retries_back_off_exponentially_to_five_minutes() {
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(3), Duration::from_secs(8));
        assert_eq!(retry_delay(20), Duration::from_secs(300));
    }
}
