//! `strata jobs …` and `strata scheduler …`.

use std::{collections::BTreeMap, io::Write, time::Duration};

use clap::Subcommand;

use super::{
    key_value,
    output::{print_json, table, when},
};
use crate::{
    Client,
    scheduler::{JobChanges, JobKind, JobRun, JobRunState, JobSpec, SchedulerStatus},
};

/// `strata jobs …`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs with their schedule, next run and last result.
    Ls,
    /// Create a job (operator).
    Create {
        /// Unique name (letters, digits, '.', '_', '-', ':').
        name: String,
        /// What it does.
        #[arg(long, value_enum)]
        kind: JobKind,
        /// Cron expression: 5 fields, or 6 with seconds first (e.g. "0 2 * * *", "*/30 * * * * *").
        #[arg(long)]
        schedule: String,
        /// Policy (archive, retention) or table(s) (maintenance, partition_premake, blob_migration).
        #[arg(long, default_value = "")]
        target: String,
        /// Kind-specific option KEY=VALUE (repeat), e.g. interval=daily, ahead=7, full=true.
        #[arg(long = "option", value_parser = key_value)]
        options: Vec<(String, String)>,
        /// IANA time zone the schedule is read in (default UTC).
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// Stop a run after this long ("0s": no limit).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        timeout: Duration,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// Change a job's schedule, time zone, timeout, target or options (operator).
    Update {
        /// Job name.
        name: String,
        /// New cron expression.
        #[arg(long)]
        schedule: Option<String>,
        /// New time zone.
        #[arg(long)]
        time_zone: Option<String>,
        /// New timeout.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// New target.
        #[arg(long)]
        target: Option<String>,
        /// Replace the options with these KEY=VALUE pairs (repeat).
        #[arg(long = "option", value_parser = key_value)]
        options: Vec<(String, String)>,
    },
    /// Delete a job and its history (operator).
    Rm {
        /// Job name.
        name: String,
    },
    /// Run a job now on the server you talk to (operator).
    Run {
        /// Job name.
        name: String,
        /// Wait until it ends (exit code 1 unless it succeeded).
        #[arg(long)]
        wait: bool,
    },
    /// Pause a job (operator).
    Pause {
        /// Job name.
        name: String,
    },
    /// Resume a paused job from its next occurrence (operator).
    Resume {
        /// Job name.
        name: String,
    },
    /// A job's runs (or every job's), newest first.
    Runs {
        /// Job name (default: all jobs).
        name: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// `strata scheduler …`.
#[derive(Debug, Subcommand)]
pub enum SchedulerCommand {
    /// Whether scheduled jobs run, on which instances, and what runs now.
    Status,
    /// Start scheduled runs on every instance (admin).
    Start,
    /// Stop scheduled runs on every instance; running ones finish (admin).
    Stop,
}

fn state(s: JobRunState) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn run_line(r: &JobRun) -> String {
    format!(
        "run {} of {} {}: {}{}",
        r.id,
        r.job_name,
        state(r.state),
        r.message,
        if r.error.is_empty() { String::new() } else { format!(" — {}", r.error) }
    )
}

fn print_status(s: &SchedulerStatus, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "scheduler {} (since {} by {}); this instance {} {} scheduled jobs",
        if s.running { "running" } else { "stopped" },
        when(s.changed_at),
        s.changed_by,
        s.this_instance,
        if s.this_instance_runs_scheduler { "runs" } else { "does not run" },
    )?;
    let mut t = table(&["instance", "alive", "last seen"]);
    for i in &s.instances {
        t.add_row(vec![i.id.clone(), if i.alive { "yes" } else { "no" }.into(), when(i.last_seen_at)]);
    }
    writeln!(out, "{t}")?;
    for r in &s.running_runs {
        writeln!(out, "running: {} on {} since {}", r.job_name, r.instance, when(r.started_at))?;
    }
    Ok(())
}

pub(super) async fn run_jobs(
    client: &Client,
    cmd: JobsCommand,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    match cmd {
        JobsCommand::Ls => {
            let jobs = client.list_jobs().await?;
            if json {
                return print_json(out, &jobs).map(|_| true);
            }
            let mut t = table(&["name", "kind", "target", "schedule", "next run (UTC)", "last run"]);
            for j in jobs {
                t.add_row(vec![
                    format!("{}{}", j.spec.name, if j.spec.enabled { "" } else { " (paused)" }),
                    serde_json::to_value(j.spec.kind)?.as_str().unwrap_or_default().to_owned(),
                    j.spec.target,
                    if j.spec.time_zone == "UTC" {
                        j.spec.schedule
                    } else {
                        format!("{} {}", j.spec.schedule, j.spec.time_zone)
                    },
                    when(j.next_run_at),
                    j.last_run
                        .map(|r| format!("{} {}", state(r.state), when(r.ended_at.or(r.started_at))))
                        .unwrap_or_default(),
                ]);
            }
            writeln!(out, "{t}")?;
        }
        JobsCommand::Create { name, kind, schedule, target, options, time_zone, timeout, paused } => {
            let job = client
                .create_job(&JobSpec {
                    name,
                    kind,
                    target,
                    options: options.into_iter().collect(),
                    schedule,
                    time_zone,
                    enabled: !paused,
                    timeout,
                })
                .await?;
            if json {
                print_json(out, &job)?;
            } else {
                writeln!(out, "job {} created; next run {}", job.spec.name, when(job.next_run_at))?;
            }
        }
        JobsCommand::Update { name, schedule, time_zone, timeout, target, options } => {
            let job = client
                .update_job(
                    &name,
                    JobChanges {
                        target,
                        options: (!options.is_empty()).then(|| options.into_iter().collect::<BTreeMap<_, _>>()),
                        schedule,
                        time_zone,
                        timeout,
                    },
                )
                .await?;
            if json {
                print_json(out, &job)?;
            } else {
                writeln!(out, "job {} updated; next run {}", job.spec.name, when(job.next_run_at))?;
            }
        }
        JobsCommand::Rm { name } => {
            client.delete_job(&name).await?;
            writeln!(out, "job {name} deleted")?;
        }
        JobsCommand::Run { name, wait } => {
            let mut r = client.run_job_now(&name).await?;
            if wait {
                r = client.wait_job_run(&r.id, Duration::from_millis(200)).await?;
            }
            if json {
                print_json(out, &r)?;
            } else {
                writeln!(out, "{}", run_line(&r))?;
            }
            if wait && r.state != JobRunState::Succeeded {
                return Ok(false);
            }
        }
        JobsCommand::Pause { name } => {
            let j = client.pause_job(&name).await?;
            writeln!(out, "job {} paused", j.spec.name)?;
        }
        JobsCommand::Resume { name } => {
            let j = client.resume_job(&name).await?;
            writeln!(out, "job {} resumed; next run {}", j.spec.name, when(j.next_run_at))?;
        }
        JobsCommand::Runs { name, limit } => {
            let runs = client.list_job_runs(name.as_deref(), limit).await?;
            if json {
                return print_json(out, &runs).map(|_| true);
            }
            let mut t = table(&["run", "job", "for (UTC)", "state", "instance", "took", "result"]);
            for r in runs {
                let took = match (r.started_at, r.ended_at) {
                    (Some(a), Some(b)) => format!("{:.1}s", (b - a).num_milliseconds() as f64 / 1000.0),
                    _ => "-".into(),
                };
                t.add_row(vec![
                    r.id,
                    format!("{}{}", r.job_name, if r.manual { " (manual)" } else { "" }),
                    when(r.scheduled_at),
                    format!(
                        "{}{}",
                        state(r.state),
                        if r.attempt > 1 { format!(" (attempt {})", r.attempt) } else { String::new() }
                    ),
                    r.instance,
                    took,
                    if r.error.is_empty() { r.message } else { r.error },
                ]);
            }
            writeln!(out, "{t}")?;
        }
    }
    Ok(true)
}

pub(super) async fn run_scheduler(
    client: &Client,
    cmd: SchedulerCommand,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let s = match cmd {
        SchedulerCommand::Status => client.scheduler_status().await?,
        SchedulerCommand::Start => client.start_scheduler().await?,
        SchedulerCommand::Stop => client.stop_scheduler().await?,
    };
    if json {
        print_json(out, &s)?
    } else {
        print_status(&s, out)?
    }
    Ok(true)
}
