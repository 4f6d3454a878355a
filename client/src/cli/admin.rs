//! `strata info`, `strata test-connection` and `strata health`: the server itself.

use std::io::Write;

use super::output::{print_json, table};
use crate::{Client, HealthStatus};

/// `strata info`.
pub(super) async fn info(client: &Client, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    let i = client.info().await?;
    if json {
        print_json(out, &i)?;
    } else {
        writeln!(
            out,
            "strata {}  backend {:?}  routing {:?}  uptime {:.0}s  replica fallbacks {}",
            i.version,
            i.backend,
            i.routing_state,
            i.uptime.as_secs_f64(),
            i.replica_fallbacks
        )?;
        let mut t = table(&["node", "role", "address", "healthy", "reads", "lag", "last error"]);
        for n in &i.nodes {
            t.add_row(vec![
                n.name.clone(),
                format!("{:?}", n.role).to_lowercase(),
                n.address.clone(),
                n.healthy.to_string(),
                n.serving_reads.to_string(),
                n.replication_lag.map_or("-".into(), |d| format!("{:.3}s", d.as_secs_f64())),
                n.last_error.clone(),
            ]);
        }
        writeln!(out, "{t}")?;
        if let Some(c) = &i.config {
            writeln!(
                out,
                "listen {}  objects {}  pool {} (acquire {:?})  statement timeout {:?}  max replica lag {:?}  scheduler {}  tokens {}{}",
                c.listen_address,
                c.object_store_url,
                c.pool_max_size,
                c.pool_acquire_timeout,
                c.statement_timeout,
                c.max_replica_lag,
                if c.run_scheduler { "on" } else { "off" },
                c.auth_token_count,
                if c.loopback_only { " (loopback only)" } else { "" }
            )?;
        }
    }
    Ok(true)
}

/// `strata test-connection`: fails unless every node answered.
pub(super) async fn test_connection(client: &Client, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    let probes = client.test_connection().await?;
    let failed = probes.iter().any(|p| !p.ok);
    if json {
        print_json(out, &probes)?;
    } else {
        let mut t = table(&["node", "role", "ok", "round trip", "error"]);
        for p in &probes {
            t.add_row(vec![
                p.name.clone(),
                format!("{:?}", p.role).to_lowercase(),
                p.ok.to_string(),
                p.round_trip.map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3)),
                p.error.clone(),
            ]);
        }
        writeln!(out, "{t}")?;
    }
    Ok(!failed)
}

/// `strata health`: fails unless the service is SERVING.
pub(super) async fn health(client: &Client, service: &str, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    let s = client.health(service).await?;
    if json {
        print_json(out, &serde_json::json!({ "service": service, "status": s }))?;
    } else {
        writeln!(out, "{s:?}")?;
    }
    Ok(s == HealthStatus::Serving)
}
