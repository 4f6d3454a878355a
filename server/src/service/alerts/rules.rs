//! Alert rules: what they watch and when they fire, checked as a client gives them; the one
//! conversion between a stored rule and its spec; the built-in ones.

use std::{collections::BTreeMap, time::Duration};

use chrono::NaiveDateTime;

use super::{Comparison, Context, Error, Metric, Result, Rule, close};
use crate::{
    db::alerts::{self as store, RuleRow},
    service::{check_name, maintenance},
};

impl Metric {
    pub(super) fn unit(self) -> &'static str {
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

impl Comparison {
    pub(super) fn crosses(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value >= threshold,
            Comparison::Below => value <= threshold,
        }
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
        check_name("rule", &self.name)?;
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
                maintenance::parse_table(&self.table)?;
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
        metric: s.metric,
        table_name: s.table.clone(),
        comparison: s.comparison.unwrap_or(s.metric.default_comparison()),
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
fn spec_of(r: &RuleRow) -> RuleSpec {
    RuleSpec {
        name: r.name.clone(),
        metric: r.metric,
        table: r.table_name.clone(),
        comparison: Some(r.comparison),
        warning: r.warning,
        critical: r.critical,
        for_duration: Duration::from_millis(r.for_ms.max(0) as u64),
        capacity_bytes: r.capacity_bytes,
        labels: serde_json::from_str(&r.labels).unwrap_or_default(),
        enabled: r.enabled,
    }
}

/// A stored rule as the service shows it.
fn rule_of(r: RuleRow) -> Rule {
    Rule { spec: spec_of(&r), builtin: r.builtin, created_at: r.created_at, updated_at: r.updated_at }
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
    let t = ctx.now();
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
pub async fn create_rule(ctx: &Context, spec: RuleSpec) -> Result<Rule> {
    let spec = spec.validate()?;
    let row = rule_row(&spec, false, ctx.now());
    let mut conn = ctx.db.write().await?;
    if !store::insert_rule(&mut conn, &row).await? {
        return Err(Error::AlreadyExists(format!("rule {:?}", spec.name)));
    }
    Ok(rule_of(row))
}

/// A rule.
pub async fn get_rule(ctx: &Context, name: &str) -> Result<Rule> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let row = store::get_rule(&mut conn, name).await?.ok_or_else(|| Error::NotFound(format!("rule {name:?}")))?;
    Ok(rule_of(row))
}

/// Every rule.
pub async fn list_rules(ctx: &Context) -> Result<Vec<Rule>> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    Ok(store::list_rules(&mut conn).await?.into_iter().map(rule_of).collect())
}

/// Replaces a rule's settings (the caller merged the field mask); its open alerts are
/// re-evaluated against the new thresholds at the next evaluation.
pub async fn update_rule(ctx: &Context, spec: RuleSpec) -> Result<Rule> {
    let current = get_rule(ctx, &spec.name).await?;
    let spec = spec.validate()?;
    let mut row = rule_row(&spec, current.builtin, current.created_at);
    row.updated_at = ctx.now();
    let mut conn = ctx.db.write().await?;
    if !store::update_rule(&mut conn, &row).await? {
        return Err(Error::NotFound(format!("rule {:?}", spec.name)));
    }
    Ok(rule_of(row))
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::service::alerts) fn rule(metric: Metric, warning: Option<f64>, critical: Option<f64>) -> RuleSpec {
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
}
