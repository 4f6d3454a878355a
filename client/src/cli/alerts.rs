//! `strata alerts …` and `strata health-report`.

use std::{io::Write, time::Duration};

use clap::Subcommand;
use futures::StreamExt;

use super::{
    key_value,
    output::{bytes, print_json, table, when},
};
use crate::{
    Client,
    alerts::{AlertChange, AlertMetric, AlertQuery, AlertRule, AlertSeverity, AlertState},
};

/// `strata alerts …`.
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alerts, newest first (default: every state but pending).
    Ls {
        /// Only these states (repeat).
        #[arg(long = "state", value_enum)]
        states: Vec<AlertState>,
        /// Only this severity.
        #[arg(long, value_enum)]
        severity: Option<AlertSeverity>,
        /// Only this rule's.
        #[arg(long)]
        rule: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One alert with its timeline and notifications.
    Show {
        /// Alert id.
        id: String,
    },
    /// Acknowledge a firing alert (operator).
    Ack {
        /// Alert id.
        id: String,
        /// Note, e.g. "on it".
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Resolve an open alert by hand (operator).
    Resolve {
        /// Alert id.
        id: String,
        /// Note.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Print alert changes as they happen (Ctrl-C to stop).
    Watch {
        /// Skip the open alerts at start.
        #[arg(long)]
        no_initial: bool,
        /// Only this severity and worse.
        #[arg(long, value_enum)]
        min_severity: Option<AlertSeverity>,
        /// Only this rule's.
        #[arg(long)]
        rule: Option<String>,
    },
    /// Alert rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

/// `strata alerts rules …`.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// List rules.
    Ls,
    /// Create a rule (operator).
    Create {
        /// Unique name.
        name: String,
        /// What it watches.
        #[arg(long, value_enum)]
        metric: AlertMetric,
        /// Warning threshold (bytes, seconds, percent, days… by metric).
        #[arg(long)]
        warning: Option<f64>,
        /// Critical threshold.
        #[arg(long)]
        critical: Option<f64>,
        /// For table metrics: the table (default: every table).
        #[arg(long, default_value = "")]
        table: String,
        /// How long the condition must hold before firing.
        #[arg(long = "for", value_parser = humantime::parse_duration, default_value = "0s")]
        for_duration: Duration,
        /// days_until_full: the size that counts as full (default: the disk's).
        #[arg(long, default_value_t = 0)]
        capacity_bytes: i64,
        /// Label KEY=VALUE copied onto alerts (repeat).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
    /// Change a rule's thresholds, for-duration or enabled flag (operator).
    Update {
        /// Rule name.
        name: String,
        /// New warning threshold.
        #[arg(long)]
        warning: Option<f64>,
        /// New critical threshold.
        #[arg(long)]
        critical: Option<f64>,
        /// New for-duration.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        for_duration: Option<Duration>,
        /// Enable or disable.
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Delete a rule; its open alerts are resolved (operator).
    Rm {
        /// Rule name.
        name: String,
    },
}

fn name<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// A rule's threshold in its metric's unit: sizes (bytes, bytes per day) human-readable, other
/// metrics (seconds, percent, days, rows, failing jobs) as the number they are.
fn threshold(metric: AlertMetric, v: Option<f64>) -> String {
    let size = matches!(metric, AlertMetric::DatabaseSize | AlertMetric::TableSize | AlertMetric::DailyGrowth);
    match v {
        None => "-".into(),
        // Thresholds are whole bytes in practice; a fraction of a byte is not worth showing.
        Some(v) if size => bytes(v as i64),
        Some(v) => v.to_string(),
    }
}

pub(super) async fn run(client: &Client, cmd: AlertsCommand, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    match cmd {
        AlertsCommand::Ls { states, severity, rule, limit } => {
            let all = client.list_alerts(&AlertQuery { states, severity, rule, since: None }, limit).await?;
            if json {
                return print_json(out, &all).map(|_| true);
            }
            let mut t = table(&["id", "state", "severity", "rule", "summary", "since"]);
            for a in all {
                t.add_row(vec![
                    a.id,
                    name(a.state),
                    name(a.severity),
                    a.rule,
                    a.summary,
                    when(a.fired_at.or(a.started_at)),
                ]);
            }
            writeln!(out, "{t}")?;
        }
        AlertsCommand::Show { id } => {
            let d = client.alert(&id).await?;
            if json {
                return print_json(out, &d).map(|_| true);
            }
            writeln!(out, "{} {} {}: {}", d.alert.id, name(d.alert.state), name(d.alert.severity), d.alert.summary)?;
            let mut t = table(&["time", "event", "state", "by", "note"]);
            for e in d.events {
                t.add_row(vec![when(e.at), e.kind, name(e.state), e.actor, e.note]);
            }
            writeln!(out, "{t}")?;
            for n in d.notifications {
                writeln!(
                    out,
                    "notification {} {} to {}: {} after {} attempt(s){}",
                    n.id,
                    n.channel,
                    n.target,
                    n.state,
                    n.attempts,
                    if n.last_error.is_empty() { String::new() } else { format!(" — {}", n.last_error) }
                )?;
            }
        }
        AlertsCommand::Ack { id, note } => {
            let a = client.acknowledge_alert(&id, &note).await?;
            writeln!(out, "alert {} acknowledged by {}", a.id, a.acknowledged_by)?;
        }
        AlertsCommand::Resolve { id, note } => {
            let a = client.resolve_alert(&id, &note).await?;
            writeln!(out, "alert {} resolved by {}", a.id, a.resolved_by)?;
        }
        AlertsCommand::Watch { no_initial, min_severity, rule } => {
            let mut s = Box::pin(client.watch_alerts(!no_initial, min_severity, rule.as_deref()).await?);
            while let Some(c) = s.next().await {
                let c = c?;
                if json {
                    writeln!(out, "{}", serde_json::to_string(&c)?)?;
                } else {
                    match c {
                        AlertChange::Snapshot { alert } => writeln!(
                            out,
                            "open      {} {} {}: {}",
                            alert.id,
                            name(alert.state),
                            name(alert.severity),
                            alert.summary
                        )?,
                        AlertChange::Event { event, alert } => writeln!(
                            out,
                            "{} {:<12} {} {}: {}{}",
                            when(event.at),
                            event.kind,
                            alert.id,
                            name(alert.severity),
                            alert.summary,
                            if event.note.is_empty() { String::new() } else { format!(" — {}", event.note) }
                        )?,
                        AlertChange::Resync => writeln!(out, "(fell behind: open alerts follow)")?,
                    }
                }
                out.flush()?;
            }
        }
        AlertsCommand::Rules { command } => match command {
            RulesCommand::Ls => {
                let rules = client.list_rules().await?;
                if json {
                    return print_json(out, &rules).map(|_| true);
                }
                let mut t = table(&["name", "metric", "table", "warning", "critical", "for", "enabled"]);
                for r in rules {
                    t.add_row(vec![
                        format!("{}{}", r.name, if r.builtin { " (built in)" } else { "" }),
                        format!("{}{}", name(r.metric), if r.below { " (below)" } else { "" }),
                        r.table,
                        threshold(r.metric, r.warning),
                        threshold(r.metric, r.critical),
                        humantime::format_duration(r.for_duration).to_string(),
                        if r.enabled { "yes" } else { "no" }.into(),
                    ]);
                }
                writeln!(out, "{t}")?;
            }
            RulesCommand::Create {
                name: n,
                metric,
                warning,
                critical,
                table: tbl,
                for_duration,
                capacity_bytes,
                labels,
            } => {
                let r = client
                    .create_rule(&AlertRule {
                        table: tbl,
                        for_duration,
                        capacity_bytes,
                        labels: labels.into_iter().collect(),
                        ..AlertRule::new(&n, metric, warning, critical)
                    })
                    .await?;
                writeln!(out, "rule {} created", r.name)?;
            }
            RulesCommand::Update { name: n, warning, critical, for_duration, enabled } => {
                let mut r = client.rule(&n).await?;
                let mut fields = Vec::new();
                if warning.is_some() {
                    r.warning = warning;
                    fields.push("warning_threshold");
                }
                if critical.is_some() {
                    r.critical = critical;
                    fields.push("critical_threshold");
                }
                if let Some(d) = for_duration {
                    r.for_duration = d;
                    fields.push("for_duration");
                }
                if let Some(e) = enabled {
                    r.enabled = e;
                    fields.push("enabled");
                }
                if fields.is_empty() {
                    anyhow::bail!("nothing to change: give --warning, --critical, --for or --enabled");
                }
                let r = client.update_rule(&r, &fields).await?;
                writeln!(out, "rule {} updated", r.name)?;
            }
            RulesCommand::Rm { name: n } => {
                client.delete_rule(&n).await?;
                writeln!(out, "rule {n} deleted")?;
            }
        },
    }
    Ok(true)
}

pub(super) async fn health(client: &Client, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    let h = client.health_report().await?;
    if json {
        print_json(out, &h)?;
    } else {
        writeln!(out, "health {} / 100: {}", h.score, h.status)?;
        let mut t = table(&["factor", "penalty", "detail"]);
        for f in &h.factors {
            t.add_row(vec![f.name.clone(), f.penalty.to_string(), f.detail.clone()]);
        }
        writeln!(out, "{t}")?;
    }
    Ok(true)
}
