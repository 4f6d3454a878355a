//! `strata partitions …` (PostgreSQL).

use std::io::Write;

use clap::Subcommand;

use super::output::{bytes, print_json, table};
use crate::{
    Client,
    partitions::{PartitionHealth, PartitionInfo, PartitionKind},
};

/// `strata partitions …` (PostgreSQL).
#[derive(Debug, Subcommand)]
pub enum PartitionsCommand {
    /// Create missing partitions ahead of time (operator): periods of a time-range table
    /// (--interval), ranges of an integer-range table (--width), missing remainders of a
    /// hash-partitioned table (--hash).
    Ensure {
        /// The partitioned table.
        table: String,
        /// Schema.
        #[arg(long, default_value = "public")]
        schema: String,
        /// Partition length of a time-range table [default: monthly].
        #[arg(long, value_enum, conflicts_with_all = ["width", "hash"])]
        interval: Option<crate::partitions::PartitionInterval>,
        /// Range width in keys of an integer-range table.
        #[arg(long, conflicts_with = "hash", value_parser = clap::value_parser!(i64).range(1..))]
        width: Option<i64>,
        /// Create the missing remainders of a hash-partitioned table.
        #[arg(long, conflicts_with_all = ["premake", "past"])]
        hash: bool,
        /// Periods (or integer ranges) ahead of the current one [default: 3 periods; integer
        /// ranges: the server's partition_premake_ranges].
        #[arg(long)]
        premake: Option<i32>,
        /// Periods (or integer ranges) before the current one.
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
        PartitionsCommand::Ensure { table: t, schema, interval, width, hash, premake, past } => {
            let (created, skipped, what) = if hash {
                let (c, s) = client.ensure_hash_partitions(&schema, &t).await?;
                (c, s, "remainder(s)")
            } else if let Some(width) = width {
                let (c, s) = client.ensure_integer_ranges(&schema, &t, width, premake.unwrap_or(0), past).await?;
                (c, s, "range(s)")
            } else {
                let interval = interval.unwrap_or(crate::partitions::PartitionInterval::Monthly);
                let (c, s) = client.ensure_partitions(&schema, &t, interval, premake.unwrap_or(3), past).await?;
                (c, s, "period(s)")
            };
            if json {
                print_json(out, &created)?;
            } else {
                writeln!(out, "{} partition(s) created, {skipped} {what} already covered", created.len())?;
                print_partitions(out, &created)?;
            }
        }
        PartitionsCommand::Health { table: t, schema } => {
            let h = client.partition_health(&schema, &t).await?;
            if json {
                print_json(out, &h)?;
            } else {
                print_health(out, &format!("{schema}.{t}"), &h)?;
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

/// The health summary line of the table's kind, then its partitions.
fn print_health(out: &mut dyn Write, name: &str, h: &PartitionHealth) -> anyhow::Result<()> {
    let by = format!("{name} by {} ({})", h.key_column, h.key_type);
    match (h.kind, &h.integer_range, &h.hash) {
        (PartitionKind::IntegerRange, Some(r), _) => writeln!(
            out,
            "{by}, integer ranges: {} partition(s), {} gap(s){}, {} row(s) in the default partition, max key {}, {} key(s) ahead",
            h.partitions.len(),
            h.key_gaps.len(),
            h.key_gaps.iter().map(|(a, b)| format!(" [{a}, {b})")).collect::<String>(),
            h.default_rows,
            r.max_key.map_or_else(|| "- (empty)".into(), |m| m.to_string()),
            if r.keys_ahead == i64::MAX { "unbounded".into() } else { r.keys_ahead.to_string() },
        )?,
        (PartitionKind::Hash, _, Some(x)) => writeln!(
            out,
            "{by}, hash modulus {}: {} partition(s), missing remainders {}, row skew {}, size skew {:.2}",
            x.modulus,
            h.partitions.len(),
            if x.missing_remainders.is_empty() { "none".into() } else { format!("{:?}", x.missing_remainders) },
            if x.row_skew > 0.0 { format!("{:.2}", x.row_skew) } else { "unknown (run ANALYZE)".into() },
            x.size_skew,
        )?,
        _ => writeln!(
            out,
            "{by}: {} partition(s), {} gap(s), {} row(s) in the default partition, covered {} ahead",
            h.partitions.len(),
            h.gaps.len(),
            h.default_rows,
            humantime::format_duration(std::time::Duration::from_secs(h.coverage_ahead.as_secs()))
        )?,
    }
    print_partitions(out, &h.partitions)
}

/// Partitions as a table: range (or hash modulus and remainder), size and estimated rows.
fn print_partitions(out: &mut dyn Write, parts: &[PartitionInfo]) -> anyhow::Result<()> {
    if parts.iter().any(|p| p.hash.is_some()) {
        let mut t = table(&["partition", "modulus", "remainder", "size", "rows (est.)"]);
        for p in parts {
            let (m, r) =
                p.hash.map_or((String::new(), String::new()), |h| (h.modulus.to_string(), h.remainder.to_string()));
            t.add_row(vec![p.name.clone(), m, r, bytes(p.total_size_bytes), p.estimated_rows.to_string()]);
        }
        writeln!(out, "{t}")?;
        return Ok(());
    }
    let mut t = table(&["partition", "from", "to", "size", "rows (est.)"]);
    for p in parts {
        // A time bound, else an integer one; "-" for MINVALUE / MAXVALUE.
        let bound = |t: Option<chrono::DateTime<chrono::Utc>>, k: Option<i64>| {
            t.map(|t| t.to_rfc3339()).or_else(|| k.map(|k| k.to_string())).unwrap_or_else(|| "-".into())
        };
        t.add_row(vec![
            p.name.clone(),
            if p.is_default { "DEFAULT".into() } else { bound(p.start, p.start_key) },
            if p.is_default { String::new() } else { bound(p.end, p.end_key) },
            bytes(p.total_size_bytes),
            p.estimated_rows.to_string(),
        ]);
    }
    writeln!(out, "{t}")?;
    Ok(())
}
