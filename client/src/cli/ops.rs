//! `strata ops …`, and following an operation that another command started (`--wait`).

use std::{io::Write, time::Duration};

use clap::Subcommand;

use super::output::{bytes, print_json, when};
use crate::{
    Client,
    operations::{ItemKind, Operation, OperationItem, OperationKind, OperationResult, OperationState},
};

/// `strata ops …`.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Operations, newest first.
    Ls {
        /// Only this kind: maintenance, reconcile or rescue.
        #[arg(long)]
        kind: Option<OperationKind>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One operation and its progress.
    Status {
        /// Operation id.
        id: String,
    },
    /// Follow an operation until it ends (exit code 1 unless it succeeded).
    Wait {
        /// Operation id.
        id: String,
    },
    /// Ask an operation to stop (operator).
    Cancel {
        /// Operation id.
        id: String,
    },
    /// An operation's results (orphan keys, tables, partitions), a page at a time.
    Items {
        /// Operation id.
        id: String,
        /// Start after this item (the last seq seen).
        #[arg(long, default_value = "")]
        page_token: String,
        /// Items per page.
        #[arg(long, default_value_t = 100)]
        limit: i32,
        /// Every page.
        #[arg(long)]
        all: bool,
    },
}

/// Runs one `strata ops …` command; `false` when an operation it waited for did not succeed.
pub(super) async fn run(client: &Client, cmd: OpsCommand, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    match cmd {
        OpsCommand::Ls { kind, limit } => {
            let ops = client.list_operations(kind, limit).await?;
            if json {
                print_json(out, &ops)?;
            } else {
                let mut t = super::output::table(&["id", "kind", "state", "target", "progress", "started"]);
                for o in &ops {
                    t.add_row(vec![
                        o.id.clone(),
                        kind_name(o),
                        o.state.to_string(),
                        o.target.clone(),
                        progress(o),
                        when(o.started_at),
                    ]);
                }
                writeln!(out, "{t}")?;
            }
            Ok(true)
        }
        OpsCommand::Status { id } => {
            let o = client.operation(&id).await?;
            if json {
                print_json(out, &o)?
            } else {
                print_operation(out, &o)?
            }
            Ok(true)
        }
        OpsCommand::Wait { id } => {
            let o = client.operation(&id).await?;
            let o = follow(client, o, json, out).await?;
            Ok(o.state == OperationState::Succeeded)
        }
        OpsCommand::Cancel { id } => {
            let o = client.cancel_operation(&id).await?;
            if json {
                print_json(out, &o)?;
            } else if o.state == OperationState::Running {
                writeln!(out, "cancel of {} requested; it stops at its next step", o.id)?;
            } else {
                writeln!(out, "operation {} {}", o.id, o.state)?;
            }
            Ok(true)
        }
        OpsCommand::Items { id, page_token, limit, all } => {
            if all {
                let items = client.all_operation_items(&id).await?;
                if json {
                    print_json(out, &items)?
                } else {
                    print_items(out, &items)?
                }
                return Ok(true);
            }
            let page = client.operation_items(&id, &page_token, limit).await?;
            if json {
                print_json(out, &page)?;
            } else {
                print_items(out, &page.items)?;
                if !page.next_page_token.is_empty() {
                    writeln!(out, "more: --page-token {}", page.next_page_token)?;
                }
            }
            Ok(true)
        }
    }
}

fn kind_name(o: &Operation) -> String {
    match o.kind {
        Some(OperationKind::Maintenance) => "maintenance",
        Some(OperationKind::Reconcile) => "reconcile",
        Some(OperationKind::Rescue) => "rescue",
        None => "unknown",
    }
    .into()
}

fn progress(o: &Operation) -> String {
    if o.total > 0 { format!("{}/{}", o.done, o.total) } else { o.done.to_string() }
}

/// What a command that starts an operation prints when it does not wait for it.
pub(super) fn started(out: &mut dyn Write, o: &Operation, json: bool) -> anyhow::Result<bool> {
    if json {
        print_json(out, o)?;
    } else {
        writeln!(out, "started operation {} (follow it with `strata ops wait {}`)", o.id, o.id)?;
    }
    Ok(true)
}

/// Polls `o` until it ends, printing each new phase (not with `--json`, whose output is the ended
/// operation alone); then prints the ended operation unless `json` (the caller prints its items).
pub(super) async fn follow(
    client: &Client,
    o: Operation,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Operation> {
    let mut seen = String::new();
    let mut o = o;
    while o.state == OperationState::Running {
        if !json && o.phase != seen {
            writeln!(out, "{}: {} ({})", o.id, o.phase, progress(&o))?;
            seen = o.phase.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        o = client.operation(&o.id).await?;
    }
    if json {
        print_json(out, &o)?;
    } else {
        print_operation(out, &o)?;
    }
    Ok(o)
}

/// An operation as lines of `field: value`.
pub(super) fn print_operation(out: &mut dyn Write, o: &Operation) -> anyhow::Result<()> {
    writeln!(out, "operation {} ({}) {}", o.id, kind_name(o), o.state)?;
    writeln!(out, "  target:   {}", o.target)?;
    writeln!(out, "  phase:    {}", o.phase)?;
    writeln!(out, "  progress: {}", progress(o))?;
    match &o.result {
        OperationResult::Maintenance { tables_done, reclaimed_bytes } => {
            writeln!(out, "  result:   {tables_done} table(s), {} reclaimed", bytes(*reclaimed_bytes))?
        }
        OperationResult::Reconcile { objects_scanned, blobs_scanned, orphans, deleted, lost_content, lost_files } => {
            writeln!(
                out,
                "  result:   scanned {objects_scanned} objects and {blobs_scanned} blobs: {orphans} orphan(s), {deleted} deleted, {lost_content} lost content(s) in {lost_files} file(s)"
            )?
        }
        OperationResult::Rescue { rows_moved, partitions_created, rows_left } => writeln!(
            out,
            "  result:   {rows_moved} row(s) into {partitions_created} partition(s); {rows_left} left in the default partition"
        )?,
        OperationResult::None => {}
    }
    writeln!(out, "  items:    {}", o.item_count)?;
    writeln!(out, "  started:  {}   ended: {}", when(o.started_at), when(o.finished_at))?;
    if !o.instance.is_empty() {
        writeln!(out, "  instance: {}", o.instance)?;
    }
    if let Some(e) = &o.error {
        writeln!(out, "  error:    {e}")?;
    }
    Ok(())
}

/// Items as one line each: kind and value (and a table's or partition's figures).
pub(super) fn print_items(out: &mut dyn Write, items: &[OperationItem]) -> anyhow::Result<()> {
    for i in items {
        let kind = serde_json::to_value(i.kind)?.as_str().unwrap_or("item").replace('_', " ");
        match (&i.kind, &i.table) {
            (ItemKind::Table, Some(t)) => writeln!(
                out,
                "{:>6} table {}: {} → {} ({} reclaimed, {:.2} s)",
                i.seq,
                i.value,
                bytes(t.size_before_bytes),
                bytes(t.size_after_bytes),
                bytes(t.reclaimed_bytes),
                t.duration.as_secs_f64()
            )?,
            (ItemKind::Partition, _) => writeln!(out, "{:>6} partition {}: {} row(s)", i.seq, i.value, i.rows)?,
            _ => writeln!(out, "{:>6} {kind} {}", i.seq, i.value)?,
        }
    }
    Ok(())
}
