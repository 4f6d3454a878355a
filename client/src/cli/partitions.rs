//! `strata partitions …` (PostgreSQL).

use std::io::Write;

use clap::Subcommand;

use super::output::{bytes, print_json, table};
use crate::Client;

/// `strata partitions …` (PostgreSQL).
#[derive(Debug, Subcommand)]
pub enum PartitionsCommand {
    /// Create missing partitions ahead of time (operator).
    Ensure {
        /// The partitioned table.
        table: String,
        /// Schema.
        #[arg(long, default_value = "public")]
        schema: String,
        /// Partition length.
        #[arg(long, value_enum, default_value_t = crate::partitions::PartitionInterval::Monthly)]
        interval: crate::partitions::PartitionInterval,
        /// Periods ahead of the current one.
        #[arg(long, default_value_t = 3)]
        premake: i32,
        /// Periods before the current one.
        #[arg(long, default_value_t = 0)]
        past: i32,
    },
    /// Partitions, gaps, coverage and default-partition rows.
    Health {
        /// The partitioned table.
        table: String,
        /// Schema.
        #[arg(long, default_value = "public")]
        schema: String,
    },
    /// Drop partitions whose whole range is older than --older-than (operator; their rows are gone).
    Drop {
        /// The partitioned table.
        table: String,
        /// Schema.
        #[arg(long, default_value = "public")]
        schema: String,
        /// Age, e.g. 365d.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Only list them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Archive whole partitions older than an archive policy's cutoff into segments, then drop
    /// them (operator).
    Archive {
        /// Archive policy (its table is the partitioned parent).
        policy: String,
        /// Wait for the run to end.
        #[arg(long)]
        wait: bool,
    },
    /// Move rows out of the default partition into proper partitions (operator).
    Rescue {
        /// The partitioned table.
        table: String,
        /// Schema.
        #[arg(long, default_value = "public")]
        schema: String,
        /// Length of the partitions created for them.
        #[arg(long, value_enum, default_value_t = crate::partitions::PartitionInterval::Monthly)]
        interval: crate::partitions::PartitionInterval,
        /// Only count.
        #[arg(long)]
        dry_run: bool,
        /// Follow the operation until it ends and print each partition (exit code 1 unless it
        /// succeeded); without it, print the operation's id and return.
        #[arg(long)]
        wait: bool,
    },
}

/// Runs one `strata partitions …` command; `false` when a run it waited for failed.
pub(super) async fn run(
    client: &Client,
    cmd: PartitionsCommand,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    match cmd {
        PartitionsCommand::Ensure { table: t, schema, interval, premake, past } => {
            let (created, skipped) = client.ensure_partitions(&schema, &t, interval, premake, past).await?;
            if json {
                print_json(out, &created)?;
            } else {
                writeln!(out, "{} partition(s) created, {skipped} period(s) already covered", created.len())?;
                print_partitions(out, &created)?;
            }
        }
        PartitionsCommand::Health { table: t, schema } => {
            let h = client.partition_health(&schema, &t).await?;
            if json {
                print_json(out, &h)?;
            } else {
                writeln!(
                    out,
                    "{schema}.{t} by {} ({}): {} partition(s), {} gap(s), {} row(s) in the default partition, covered {} ahead",
                    h.key_column,
                    h.key_type,
                    h.partitions.len(),
                    h.gaps.len(),
                    h.default_rows,
                    humantime::format_duration(std::time::Duration::from_secs(h.coverage_ahead.as_secs()))
                )?;
                print_partitions(out, &h.partitions)?;
            }
        }
        PartitionsCommand::Drop { table: t, schema, older_than, dry_run } => {
            let dropped = client.drop_partitions(&schema, &t, older_than, dry_run).await?;
            if json {
                print_json(out, &dropped)?;
            } else {
                writeln!(
                    out,
                    "{} partition(s) {}",
                    dropped.len(),
                    if dry_run { "would be dropped" } else { "dropped" }
                )?;
                print_partitions(out, &dropped)?;
            }
        }
        PartitionsCommand::Archive { policy, wait } => {
            let mut r = client.archive_partitions(&policy).await?;
            if wait {
                r = client.wait_archive_run(&r.id, std::time::Duration::from_millis(200)).await?;
            }
            if json {
                print_json(out, &r)?;
            } else {
                writeln!(
                    out,
                    "run {} {:?}: {} row(s) in {} segment(s){}",
                    r.id,
                    r.state,
                    r.rows_done,
                    r.segments_done,
                    if r.error.is_empty() { String::new() } else { format!(" — {}", r.error) }
                )?;
            }
            if r.state == crate::archive::RunState::Failed {
                return Ok(false);
            }
        }
        PartitionsCommand::Rescue { table: t, schema, interval, dry_run, wait } => {
            let op = client.start_rescue(&schema, &t, interval, dry_run).await?;
            if !wait {
                return super::ops::started(out, &op, json);
            }
            let op = super::ops::follow(client, op, json, out).await?;
            let items = client.all_operation_items(&op.id).await?;
            if json {
                print_json(out, &items)?
            } else {
                super::ops::print_items(out, &items)?
            }
            return Ok(op.state == crate::operations::OperationState::Succeeded);
        }
    }
    Ok(true)
}

/// Partitions as a table: range, size and estimated rows.
fn print_partitions(out: &mut dyn Write, parts: &[crate::partitions::PartitionInfo]) -> anyhow::Result<()> {
    let mut t = table(&["partition", "from", "to", "size", "rows (est.)"]);
    for p in parts {
        let when = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
        t.add_row(vec![
            p.name.clone(),
            if p.is_default { "DEFAULT".into() } else { when(p.start) },
            if p.is_default { String::new() } else { when(p.end) },
            bytes(p.total_size_bytes),
            p.estimated_rows.to_string(),
        ]);
    }
    writeln!(out, "{t}")?;
    Ok(())
}
