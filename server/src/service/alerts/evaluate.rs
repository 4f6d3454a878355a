//! Evaluation: reads each enabled rule's metric (its series), and opens, fires, escalates and
//! resolves the rules' alerts; run once per tick by the `alert-evaluation` job.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;

use super::{
    AlertState, Comparison, Context, EventKind, Metric, Result, Rule, RuleSpec, Severity, close, list_rules,
    notify::notifications,
};
use crate::{
    db::{
        self,
        alerts::{self as store, AlertRow, NewEvent, Saved},
    },
    service::{admin, maintenance, metrics, partitions, scheduler},
};

/// Whether a job's run counts as failed (the `failed_job` metric, the health score).
pub(super) fn failed_run(state: scheduler::JobRunState) -> bool {
    matches!(state, scheduler::JobRunState::Failed | scheduler::JobRunState::TimedOut)
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
pub(super) fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let total = fs4::total_space(path).ok()?;
    let free = fs4::available_space(path).ok()?;
    Some((total, free))
}

/// Local paths strata writes to: the SQLite file and a `file://` object store, one per file
/// system (a disk holding both is reported once).
pub(super) fn local_paths(ctx: &Context) -> Vec<std::path::PathBuf> {
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
        Metric::ProbeLatency => admin::test_connection(ctx)
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
            let (schema, table) = maintenance::parse_table(&rule.table)?;
            let t = partitions::resolve_table(ctx, &schema, &table).await?;
            let health = partitions::health_any(ctx, t).await?;
            vec![labelled("table", rule.table.clone(), health.default_rows() as f64)]
        }
        Metric::FailedJob => scheduler::list_jobs(ctx)
            .await?
            .into_iter()
            .filter(|j| j.spec.enabled)
            .map(|j| {
                let failed = j.last_run.as_ref().is_some_and(|r| failed_run(r.state));
                labelled("job", j.spec.name, if failed { 1.0 } else { 0.0 })
            })
            .collect(),
    })
}

/// Figures read once per evaluation.
#[derive(Default)]
pub(super) struct Cache {
    storage: Option<metrics::StorageMetrics>,
    growth: BTreeMap<Option<i64>, metrics::Growth>,
}

impl Cache {
    async fn storage(&mut self, ctx: &Context) -> Result<&metrics::StorageMetrics> {
        if self.storage.is_none() {
            let prefix = metrics::TablePrefix::parse("")?;
            self.storage = Some(metrics::storage_metrics(ctx, &prefix).await?);
        }
        Ok(self.storage.as_ref().expect("just set"))
    }

    pub(super) async fn growth(&mut self, ctx: &Context, target: Option<i64>) -> Result<&metrics::Growth> {
        if let std::collections::btree_map::Entry::Vacant(e) = self.growth.entry(target) {
            let q = metrics::GrowthQuery {
                window: metrics::Window::Week,
                target_size_bytes: target,
                prefix: metrics::TablePrefix::parse("")?,
            };
            e.insert(metrics::growth(ctx, &q).await?);
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
    let rules: Vec<Rule> = list_rules(ctx).await?;
    let mut conn = ctx.db.write().await?;
    let open = store::open_alerts(&mut conn).await?;
    drop(conn);
    let mut open_by: BTreeMap<(String, String), AlertRow> =
        open.into_iter().map(|a| ((a.rule_name.clone(), a.labels_key.clone()), a)).collect();
    for rule in rules {
        let rule = rule.spec;
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
    let t = ctx.now();
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
                state: if firing { AlertState::Firing } else { AlertState::Pending },
                severity: sev,
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
                let ev = NewEvent {
                    kind: EventKind::Firing,
                    value: Some(value),
                    actor: "strata".into(),
                    note: String::new(),
                };
                let notify = notifications(ctx, &a, EventKind::Firing, "");
                if let Saved::Done(_) = store::save(&mut conn, &a, None, Some(&ev), &notify).await? {
                    out.fired += 1;
                }
            } else {
                store::save(&mut conn, &a, None, None, &[]).await?;
            }
        }
        Some(a) => {
            let previous = a.updated_at;
            let old = a.severity;
            let (next, kind) = if a.state == AlertState::Pending {
                if held(a.started_at) {
                    (AlertRow { state: AlertState::Firing, fired_at: Some(t), ..a.clone() }, Some(EventKind::Firing))
                } else {
                    (a.clone(), None)
                }
            } else if sev > old {
                // Escalation fires again, also when someone had acknowledged the lesser alert.
                (
                    AlertRow { state: AlertState::Firing, acknowledged_at: None, acknowledged_by: None, ..a.clone() },
                    Some(EventKind::Escalated),
                )
            } else if sev < old {
                (a.clone(), Some(EventKind::Deescalated))
            } else {
                (a.clone(), None)
            };
            if kind.is_none() && a.value == value && a.severity == sev {
                return Ok(());
            }
            let next = AlertRow { severity: sev, value, threshold, summary: text, updated_at: t, ..next };
            let ev =
                kind.map(|k| NewEvent { kind: k, value: Some(value), actor: "strata".into(), note: String::new() });
            let notify = match kind {
                Some(k @ (EventKind::Firing | EventKind::Escalated)) => notifications(ctx, &next, k, ""),
                _ => Vec::new(),
            };
            if let Saved::Done(_) = store::save(&mut conn, &next, Some(previous), ev.as_ref(), &notify).await? {
                match kind {
                    Some(EventKind::Firing) => out.fired += 1,
                    Some(EventKind::Escalated) => out.escalated += 1,
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::alerts::rules::tests::rule;

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
}
