//! `strata archive …`: policies, plans, runs, restore, read and retention.

use std::{io::Write, time::Duration};

use chrono::{DateTime, Utc};
use clap::Subcommand;

use super::output::{bytes, print_json, table};
use crate::{
    Client,
    archive::{ArchivePolicy, ArchiveRun, Filter, FilterOp, PolicyMode, RunState, SegmentSelection},
};

/// `strata archive …`.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// List policies.
    Policies,
    /// Create a policy (operator). Every identifier is checked against the live schema.
    Create {
        /// Unique policy name.
        name: String,
        /// Table to archive from.
        #[arg(long)]
        table: String,
        /// Schema of the table (default: public on PostgreSQL, main on SQLite).
        #[arg(long, default_value = "")]
        schema: String,
        /// Column holding each row's time.
        #[arg(long)]
        time_column: String,
        /// Key column (repeat for a composite key).
        #[arg(long = "key-column", default_value = "id")]
        keys: Vec<String>,
        /// Rows older than this are due, e.g. 90d or 1y.
        #[arg(long, value_parser = humantime::parse_duration)]
        after: Duration,
        /// Condition a due row must meet: `COLUMN OP VALUE`, OP one of = != < <= > >= in not-in
        /// (comma-separated values) is-null is-not-null; e.g. `--filter "status = COMPLETED"`.
        #[arg(long = "filter")]
        filters: Vec<String>,
        /// Delete archived segments older than this (retention), e.g. 7y.
        #[arg(long, value_parser = humantime::parse_duration)]
        delete_after: Option<Duration>,
        /// Rows per batch (one segment and one transaction each).
        #[arg(long, default_value_t = 0)]
        batch_size: i32,
        /// Delete due rows without archiving them.
        #[arg(long)]
        purge: bool,
    },
    /// Delete a policy that has no segments left (operator).
    Rm {
        /// Policy name or id.
        policy: String,
    },
    /// What a run would move now (dry run).
    Plan {
        /// Policy name or id.
        policy: String,
    },
    /// Start a run (operator).
    Run {
        /// Policy name or id.
        policy: String,
        /// Wait for the run to end and print its figures.
        #[arg(long)]
        wait: bool,
    },
    /// A run's progress, or the latest runs.
    Status {
        /// Run id (default: list the latest runs).
        run: Option<String>,
        /// Only runs of this policy.
        #[arg(long)]
        policy: Option<String>,
        /// How many runs to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Ask a run to stop after its current batch (operator).
    Cancel {
        /// Run id.
        run: String,
    },
    /// Archived segments of a policy.
    Segments {
        /// Policy name or id.
        policy: String,
    },
    /// Put archived rows back into the table (operator); existing keys are skipped.
    Restore {
        /// Policy name or id.
        policy: String,
        /// Segments with rows at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// Segments with rows before this time (RFC 3339).
        #[arg(long)]
        to: Option<DateTime<Utc>>,
        /// Exactly this segment (repeatable; instead of a time range).
        #[arg(long = "segment")]
        segments: Vec<String>,
        /// Wait for the restore to end.
        #[arg(long)]
        wait: bool,
    },
    /// Print archived rows as JSON Lines without restoring them (operator).
    Read {
        /// Policy name or id.
        policy: String,
        /// Segments with rows at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// Segments with rows before this time (RFC 3339).
        #[arg(long)]
        to: Option<DateTime<Utc>>,
        /// Exactly this segment (repeatable).
        #[arg(long = "segment")]
        segments: Vec<String>,
    },
    /// Delete segments older than the policy's delete_after (operator).
    Retention {
        /// Policy name or id.
        policy: String,
        /// Wait for the run to end.
        #[arg(long)]
        wait: bool,
    },
}

/// Parses `COLUMN OP VALUE…` into a structured filter (no SQL is sent).
fn parse_filter(s: &str) -> anyhow::Result<Filter> {
    let mut parts = s.trim().splitn(3, char::is_whitespace);
    let column = parts.next().filter(|c| !c.is_empty()).ok_or_else(|| anyhow::anyhow!("empty filter"))?;
    let op = parts.next().ok_or_else(|| anyhow::anyhow!("filter {s:?}: missing operator"))?;
    let rest = parts.next().unwrap_or("").trim();
    let op = match op.to_ascii_lowercase().as_str() {
        "=" | "==" => FilterOp::Eq,
        "!=" | "<>" => FilterOp::Ne,
        "<" => FilterOp::Lt,
        "<=" => FilterOp::Le,
        ">" => FilterOp::Gt,
        ">=" => FilterOp::Ge,
        "in" => FilterOp::In,
        "not-in" => FilterOp::NotIn,
        "is-null" => FilterOp::IsNull,
        "is-not-null" => FilterOp::IsNotNull,
        other => anyhow::bail!("filter {s:?}: unknown operator {other:?}"),
    };
    let values: Vec<String> = match op {
        FilterOp::IsNull | FilterOp::IsNotNull => Vec::new(),
        FilterOp::In | FilterOp::NotIn => rest.split(',').map(|v| v.trim().to_owned()).collect(),
        _ => vec![rest.to_owned()],
    };
    Ok(Filter { column: column.to_owned(), op, values })
}

fn print_run(out: &mut dyn Write, r: &ArchiveRun) -> anyhow::Result<()> {
    writeln!(
        out,
        "run {} ({:?}, {:?}): {} row(s), {} segment(s), {} → {} ({:.2}×), {:.0} rows/s, longest transaction {:.3} s{}{}",
        r.id,
        r.kind,
        r.state,
        r.rows_done,
        r.segments_done,
        bytes(r.raw_bytes),
        bytes(r.compressed_bytes),
        r.compression_ratio,
        r.rows_per_second,
        r.longest_transaction.as_secs_f64(),
        if r.rows_skipped > 0 { format!(", {} skipped (key existed)", r.rows_skipped) } else { String::new() },
        if r.error.is_empty() { String::new() } else { format!(" — {}", r.error) }
    )?;
    Ok(())
}

async fn finish(client: &Client, run: ArchiveRun, wait: bool) -> anyhow::Result<ArchiveRun> {
    if wait { Ok(client.wait_archive_run(&run.id, Duration::from_millis(200)).await?) } else { Ok(run) }
}

fn selection(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>, ids: Vec<String>) -> SegmentSelection {
    SegmentSelection { start: from, end: to, ids }
}

/// Runs one `strata archive` command; returns whether it succeeded.
pub(super) async fn run(client: &Client, cmd: ArchiveCommand, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    match cmd {
        ArchiveCommand::Policies => {
            let all = client.list_policies().await?;
            if json {
                print_json(out, &all)?;
            } else {
                let mut t = table(&["name", "table", "time column", "after", "filters", "mode", "delete after"]);
                for p in all {
                    t.add_row(vec![
                        p.name,
                        format!("{}.{}", p.schema_name, p.table_name),
                        p.time_column,
                        humantime::format_duration(p.archive_after).to_string(),
                        p.filters
                            .iter()
                            .map(|f| format!("{} {:?} {}", f.column, f.op, f.values.join(",")))
                            .collect::<Vec<_>>()
                            .join("; "),
                        format!("{:?}", p.mode).to_lowercase(),
                        p.delete_after.map(|d| humantime::format_duration(d).to_string()).unwrap_or_else(|| "-".into()),
                    ]);
                }
                writeln!(out, "{t}")?;
            }
        }
        ArchiveCommand::Create {
            name,
            table: tbl,
            schema,
            time_column,
            keys,
            after,
            filters,
            delete_after,
            batch_size,
            purge,
        } => {
            let policy = ArchivePolicy {
                name,
                schema_name: schema,
                table_name: tbl,
                time_column,
                key_columns: keys,
                archive_after: after,
                filters: filters.iter().map(|f| parse_filter(f)).collect::<anyhow::Result<_>>()?,
                delete_after,
                batch_size,
                mode: if purge { PolicyMode::Purge } else { PolicyMode::Archive },
                ..Default::default()
            };
            let p = client.create_policy(&policy).await?;
            if json {
                print_json(out, &p)?;
            } else {
                writeln!(out, "policy {} created ({})", p.name, p.id)?;
            }
        }
        ArchiveCommand::Rm { policy } => {
            client.delete_policy(&policy).await?;
            writeln!(out, "policy {policy} deleted")?;
        }
        ArchiveCommand::Plan { policy } => {
            let p = client.plan_archive(&policy).await?;
            if json {
                print_json(out, &p)?;
            } else {
                writeln!(
                    out,
                    "{} row(s) due ({}), {} batch(es); oldest {}, newest {}",
                    p.rows,
                    bytes(p.estimated_bytes),
                    p.batches,
                    p.oldest.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()),
                    p.newest.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
                )?;
            }
        }
        ArchiveCommand::Run { policy, wait } => {
            let r = finish(client, client.run_archive(&policy).await?, wait).await?;
            if json {
                print_json(out, &r)?
            } else {
                print_run(out, &r)?
            }
            return Ok(r.state != RunState::Failed);
        }
        ArchiveCommand::Status { run: Some(id), .. } => {
            let r = client.archive_run(&id).await?;
            if json { print_json(out, &r)? } else { print_run(out, &r)? }
        }
        ArchiveCommand::Status { run: None, policy, limit } => {
            let runs = client.list_archive_runs(policy.as_deref(), limit).await?;
            if json {
                print_json(out, &runs)?;
            } else {
                for r in &runs {
                    print_run(out, r)?;
                }
            }
        }
        ArchiveCommand::Cancel { run } => {
            let r = client.cancel_archive_run(&run).await?;
            if json { print_json(out, &r)? } else { print_run(out, &r)? }
        }
        ArchiveCommand::Segments { policy } => {
            let segs = client.list_segments(&policy).await?;
            if json {
                print_json(out, &segs)?;
            } else {
                let mut t = table(&["id", "rows", "raw", "stored", "from", "to", "state"]);
                for s in segs {
                    t.add_row(vec![
                        s.id,
                        s.row_count.to_string(),
                        bytes(s.raw_bytes),
                        bytes(s.compressed_bytes),
                        s.min_time.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        s.max_time.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        if s.restored { "restored" } else { "archived" }.into(),
                    ]);
                }
                writeln!(out, "{t}")?;
            }
        }
        ArchiveCommand::Restore { policy, from, to, segments, wait } => {
            let r = client.restore_archive(&policy, &selection(from, to, segments)).await?;
            let r = finish(client, r, wait).await?;
            if json {
                print_json(out, &r)?
            } else {
                print_run(out, &r)?
            }
            return Ok(r.state != RunState::Failed);
        }
        ArchiveCommand::Read { policy, from, to, segments } => {
            client
                .read_archive(&policy, &selection(from, to, segments), |_, rows| {
                    for r in rows {
                        writeln!(out, "{r}").map_err(|e| crate::Error::Io(e.to_string()))?;
                    }
                    Ok(())
                })
                .await?;
        }
        ArchiveCommand::Retention { policy, wait } => {
            let r = finish(client, client.apply_retention(&policy).await?, wait).await?;
            if json {
                print_json(out, &r)?
            } else {
                print_run(out, &r)?
            }
            return Ok(r.state != RunState::Failed);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_into_structure() {
        assert_eq!(parse_filter("status = COMPLETED").unwrap(), Filter::new("status", FilterOp::Eq, &["COMPLETED"]));
        assert_eq!(parse_filter("kind in a, b,c").unwrap(), Filter::new("kind", FilterOp::In, &["a", "b", "c"]));
        assert_eq!(parse_filter("deleted_at is-null").unwrap(), Filter::new("deleted_at", FilterOp::IsNull, &[]));
        // A value may hold spaces and SQL-looking text: it stays one value.
        assert_eq!(
            parse_filter("title = x'); DROP TABLE t; --").unwrap(),
            Filter::new("title", FilterOp::Eq, &["x'); DROP TABLE t; --"])
        );
        assert!(parse_filter("status ~ x").is_err());
        assert!(parse_filter("status").is_err());
    }
}
