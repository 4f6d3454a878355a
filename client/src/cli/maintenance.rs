//! `strata maintenance` and `strata recommend`.

use std::io::Write;

use super::output::{bytes, print_json, table};
use crate::Client;

/// `strata maintenance`: VACUUM (and ANALYZE), or with `emergency` the purge and retention runs first.
pub(super) async fn maintenance(
    client: &Client,
    tables: &[String],
    full: bool,
    skip_analyze: bool,
    emergency: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let done = if emergency {
        let report = client.emergency_maintenance().await?;
        for id in &report.started_runs {
            writeln!(out, "started run {id} (follow it with `strata archive status {id}`)")?;
        }
        for s in &report.skipped_policies {
            writeln!(out, "not started: {s}")?;
        }
        report.tables
    } else {
        client.run_maintenance(tables, full, skip_analyze).await?
    };
    if json {
        print_json(out, &done)?;
    } else {
        let mut t = table(&["table", "before", "after", "reclaimed", "dead rows", "time"]);
        for m in &done {
            t.add_row(vec![
                if m.schema_name.is_empty() {
                    m.table_name.clone()
                } else {
                    format!("{}.{}", m.schema_name, m.table_name)
                },
                bytes(m.size_before_bytes),
                bytes(m.size_after_bytes),
                bytes(m.reclaimed_bytes),
                m.dead_rows_before.to_string(),
                format!("{:.2} s", m.duration.as_secs_f64()),
            ]);
        }
        writeln!(out, "{t}")?;
    }
    Ok(true)
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
