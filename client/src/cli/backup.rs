//! `strata backup …`.

use std::io::Write;

use clap::Subcommand;

use super::output::{bytes, print_json, table};
use crate::Client;

/// `strata backup …`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Start a backup (operator).
    Run {
        /// Wait until it is written and checked.
        #[arg(long)]
        wait: bool,
    },
    /// List backups, newest first.
    Ls {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// Runs one `strata backup …` command; `false` when a backup it waited for failed.
pub(super) async fn run(client: &Client, cmd: BackupCommand, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    match cmd {
        BackupCommand::Run { wait } => {
            let mut b = client.run_backup().await?;
            if wait {
                b = client.wait_backup(&b.id, std::time::Duration::from_millis(200)).await?;
            }
            if json {
                print_json(out, &b)?;
            } else {
                writeln!(
                    out,
                    "backup {} {:?}: {} {}{}",
                    b.id,
                    b.state,
                    bytes(b.size_bytes),
                    b.verification,
                    if b.error.is_empty() { String::new() } else { format!(" — {}", b.error) }
                )?;
            }
            if b.state == crate::backup::BackupState::Failed {
                return Ok(false);
            }
        }
        BackupCommand::Ls { limit } => {
            let all = client.list_backups(limit).await?;
            if json {
                print_json(out, &all)?;
            } else {
                let mut t = table(&["id", "state", "format", "size", "started", "check"]);
                for b in all {
                    t.add_row(vec![
                        b.id,
                        format!("{:?}", b.state).to_lowercase(),
                        b.format,
                        bytes(b.size_bytes),
                        b.started_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        if b.error.is_empty() { b.verification } else { b.error },
                    ]);
                }
                writeln!(out, "{t}")?;
            }
        }
    }
    Ok(true)
}
