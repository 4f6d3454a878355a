//! `strata maintenance` and `strata recommend`.

use std::io::Write;

use super::{
    ops::{follow, started},
    output::{bytes, print_json, table},
};
use crate::{
    Client,
    operations::{ItemKind, OperationState},
};

/// `strata maintenance`: starts VACUUM (and ANALYZE), with `emergency` the purge and retention runs
/// first; with `wait`, follows it and prints each table.
#[allow(clippy::too_many_arguments, reason = "one per flag of the command")]
pub(super) async fn maintenance(
    client: &Client,
    tables: &[String],
    full: bool,
    skip_analyze: bool,
    emergency: bool,
    wait: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let op = client.start_maintenance(tables, full, skip_analyze, emergency).await?;
    if !wait {
        return started(out, &op, json);
    }
    let op = follow(client, op, json, out).await?;
    let items = client.all_operation_items(&op.id).await?;
    if json {
        print_json(out, &items)?;
        return Ok(op.state == OperationState::Succeeded);
    }
    for i in &items {
        match i.kind {
            ItemKind::StartedRun => {
                writeln!(out, "started run {} (follow it with `strata archive status {}`)", i.value, i.value)?
            }
            ItemKind::SkippedPolicy => writeln!(out, "not started: {}", i.value)?,
            _ => {}
        }
    }
    let mut t = table(&["table", "before", "after", "reclaimed", "dead rows", "time"]);
    for m in items.iter().filter_map(|i| i.table.as_ref()) {
        t.add_row(vec![
            if m.schema_name.is_empty() { m.table_name.clone() } else { format!("{}.{}", m.schema_name, m.table_name) },
            bytes(m.size_before_bytes),
            bytes(m.size_after_bytes),
            bytes(m.reclaimed_bytes),
            m.dead_rows_before.to_string(),
            format!("{:.2} s", m.duration.as_secs_f64()),
        ]);
    }
    writeln!(out, "{t}")?;
    Ok(op.state == OperationState::Succeeded)
}

/// `strata recommend`.
pub(super) async fn recommend(
    client: &Client,
    large_table_bytes: i64,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let recs = client.recommendations(large_table_bytes, 0).await?;
    if json {
        print_json(out, &recs)?;
    } else if recs.is_empty() {
        writeln!(out, "no recommendations")?;
    } else {
        for r in &recs {
            let ev: Vec<String> = r.evidence.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(out, "[{}] {} ({})", r.kind, r.message, ev.join(", "))?;
        }
    }
    Ok(true)
}
