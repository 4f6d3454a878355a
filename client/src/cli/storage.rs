//! `strata metrics`, `strata growth` and `strata snapshot`: storage metrics.

use std::io::Write;

use super::output::{bytes, print_json, table};
use crate::{
    Client,
    types::{GrowthQuery, GrowthWindow, RowCountSource},
};

/// `strata metrics`.
pub(super) async fn metrics(
    client: &Client,
    prefix: Option<String>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let m = client.storage_metrics(prefix.as_deref()).await?;
    if json {
        print_json(out, &m)?;
    } else {
        writeln!(
            out,
            "{} ({:?}, read from {:?}): {}",
            m.database_name,
            m.backend,
            m.served_by,
            bytes(m.database_size_bytes)
        )?;
        let mut t = table(&[
            "table",
            "rows",
            "table",
            "indexes",
            "toast",
            "total",
            "dead rows",
            "seq/idx scans",
            "last vacuum",
        ]);
        for x in &m.tables {
            t.add_row(vec![
                format!("{}.{}", x.schema_name, x.table_name),
                format!(
                    "{}{}",
                    x.estimated_rows,
                    if x.row_count_source == RowCountSource::Statistics { " ~" } else { "" }
                ),
                bytes(x.table_size_bytes),
                bytes(x.index_size_bytes),
                bytes(x.toast_size_bytes),
                bytes(x.total_size_bytes),
                x.dead_rows.map_or("-".into(), |d| d.to_string()),
                match (x.seq_scans, x.index_scans) {
                    (Some(s), Some(i)) => format!("{s}/{i}"),
                    (Some(s), None) => format!("{s}/-"),
                    _ => "-".into(),
                },
                x.last_vacuum.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
            ]);
        }
        writeln!(out, "{t}")?;
        let mut p = table(&["pool", "max", "open", "idle", "in use", "waited", "timed out"]);
        for x in &m.pools {
            p.add_row(vec![
                x.name.clone(),
                x.max_size.to_string(),
                x.connections.to_string(),
                x.idle_connections.to_string(),
                x.in_use_connections.to_string(),
                x.gets_waited.to_string(),
                x.gets_timed_out.to_string(),
            ]);
        }
        writeln!(out, "{p}")?;
        for n in &m.notes {
            writeln!(out, "note: {n}")?;
        }
    }
    Ok(true)
}

/// `strata growth`.
pub(super) async fn growth(
    client: &Client,
    window: GrowthWindow,
    target_bytes: Option<i64>,
    prefix: Option<String>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let g = client.growth(GrowthQuery { window, target_size_bytes: target_bytes, table_prefix: prefix }).await?;
    if json {
        print_json(out, &g)?;
    } else {
        let fmt_days = |d: Option<f64>| d.map_or("-".into(), |d| format!("{d:.1}"));
        let mut t = table(&["scope", "samples", "size", "bytes/day", "rows/day", "days to target"]);
        t.add_row(vec![
            "database".into(),
            g.database.sample_count.to_string(),
            bytes(g.database.current_size_bytes),
            bytes(g.database.bytes_per_day as i64),
            "-".into(),
            fmt_days(g.database.days_until_target),
        ]);
        for x in &g.tables {
            t.add_row(vec![
                format!("{}.{}", x.schema_name, x.table_name),
                x.trend.sample_count.to_string(),
                bytes(x.trend.current_size_bytes),
                bytes(x.trend.bytes_per_day as i64),
                format!("{:.1}", x.trend.rows_per_day),
                fmt_days(x.trend.days_until_target),
            ]);
        }
        writeln!(out, "window {:?}\n{t}", g.window)?;
    }
    Ok(true)
}

/// `strata snapshot`.
pub(super) async fn snapshot(client: &Client, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    let s = client.record_snapshot().await?;
    if json {
        print_json(out, &s)?;
    } else {
        writeln!(
            out,
            "snapshot {} at {}: {} in {} tables",
            s.id,
            s.taken_at,
            bytes(s.database_size_bytes),
            s.table_count
        )?;
    }
    Ok(true)
}
