//! The health score (GetHealthReport): 100 minus penalties for open alerts, lagging replicas,
//! pool saturation, failed jobs and the capacity forecast.

use super::{
    AlertFilter, AlertState, Context, Result, Severity,
    evaluate::{Cache, disk_space, failed_run, local_paths},
    list_alerts,
};
use crate::{db, service::scheduler};

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
    /// When it was computed (the database's time).
    pub at: chrono::DateTime<chrono::Utc>,
    /// Days until the disk holding the database is full at the current growth, when known (a
    /// local disk, growing).
    pub days_until_full: Option<f64>,
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
        return Ok(HealthReport { score: 0, status: "critical", factors, at: ctx.now_utc(), days_until_full: None });
    }
    let (open, _) = list_alerts(
        ctx,
        &AlertFilter { states: vec![AlertState::Firing, AlertState::Acknowledged], ..Default::default() },
        10_000,
        None,
    )
    .await?;
    let count =
        |sev: Severity, state: AlertState| open.iter().filter(|a| a.severity == sev && a.state == state).count() as u32;
    let (cf, ca, wf, wa) = (
        count(Severity::Critical, AlertState::Firing),
        count(Severity::Critical, AlertState::Acknowledged),
        count(Severity::Warning, AlertState::Firing),
        count(Severity::Warning, AlertState::Acknowledged),
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
    let failed: Vec<String> = scheduler::list_jobs(ctx)
        .await?
        .into_iter()
        .filter(|j| j.spec.enabled && j.last_run.as_ref().is_some_and(|r| failed_run(r.state)))
        .map(|j| j.spec.name)
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
            (Some(c), None) => format!("not growing toward {}", size(c)),
            (Some(c), Some(d)) => format!("{d:.1} days until {} (under 30 costs 15, under 7 costs 30)", size(c)),
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
    Ok(HealthReport { score, status, factors, at: ctx.now_utc(), days_until_full: days })
}

/// A size for people to read (`252.0 GiB`), in the units the CLI prints.
fn size(bytes: i64) -> String {
    bytesize::ByteSize::b(bytes.unsigned_abs()).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn capacity_is_shown_in_binary_units() {
        assert_eq!(super::size(270_553_174_016), "252.0 GiB");
        assert_eq!(super::size(524_288_000), "500.0 MiB");
    }
}
