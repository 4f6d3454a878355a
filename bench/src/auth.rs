//! What authentication and the audit trail cost, and how fast a revocation travels:
//!
//! - GetInfo with an API token (checked through the instance's token cache) vs
//!   `grpc.health.v1.Health/Check` (no credentials) on the same server, `h2load` (target ≥ 0.8×);
//! - a cheap mutating call (PauseJob of an existing job, operator token) with the audit trail on vs
//!   off, two servers on one PostgreSQL (a database each), `h2load` (target ≥ 0.8×); every call's
//!   event is checked to be in the catalog afterwards (h2load counts HTTP statuses only);
//! - printed: the time from RevokeToken on one instance until another refuses the token.
//!
//! Rounds alternate which side goes first; the median ratio is judged.

use std::time::{Duration, Instant};

use strata_client::{
    pb,
    tokens::{AuditQuery, Role},
};
use strata_tests::{
    PgCluster, TestServer,
    server::{ADMIN_TOKEN, OPERATOR_TOKEN, test_config, test_tokens},
};

use crate::fleet::{alternating, framed, h2load_call, median, pass};

async fn server(cluster: &PgCluster, db: &str, dir: &std::path::Path, audit: bool) -> anyhow::Result<TestServer> {
    let mut config = test_config(cluster.primary_url(db), Vec::new(), &dir.join("objects"));
    config.tokens = test_tokens();
    config.audit = audit;
    config.pool_max_size = 16;
    // Limits on but set high: their cost is measured, h2load (one caller) is not held back.
    (config.rate_limit, config.rate_burst, config.max_calls_per_caller) = (100_000_000, 100_000_000, 100_000);
    TestServer::start(config).await
}

pub(crate) async fn run(rounds: usize, calls: u64) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await??;
    let (db_on, db_off) =
        (cluster.create_database("bench_audit_on").await?, cluster.create_database("bench_audit_off").await?);
    let on = server(&cluster, &db_on, &work.path().join("on"), true).await?;
    let off = server(&cluster, &db_off, &work.path().join("off"), false).await?;
    let admin = on.client_with(ADMIN_TOKEN).await;
    let (_, secret) = admin.create_token("bench", Role::Viewer, &[], None).await?;

    // --- GetInfo with an API token vs Health/Check ---
    let empty = work.path().join("empty.bin");
    std::fs::write(&empty, [0u8; 5])?;
    let url = on.url();
    let bearer = format!("authorization: Bearer {secret}");
    let (b, u, n) = (empty.clone(), url.clone(), calls);
    tokio::task::spawn_blocking(move || {
        let info = |n| h2load_call(&u, "/strata.v1.AdminService/GetInfo", &b, &[bearer.as_str()], n);
        let health = |n| h2load_call(&u, "/grpc.health.v1.Health/Check", &b, &[], n);
        info(n / 10)?;
        health(n / 10)?;
        let mut ratios = Vec::new();
        for (round, (i, h)) in alternating(rounds, || info(n), || health(n))?.into_iter().enumerate() {
            println!("  round {}: GetInfo with an API token {i:.0} calls/s vs Health/Check {h:.0} calls/s → {:.2}", round + 1, i / h);
            ratios.push(i / h);
        }
        let r = median(ratios);
        println!(
            "GetInfo with an API token vs Health/Check (h2load, 8 connections × 16 streams): median ratio {r:.2} over {rounds} rounds (target ≥ 0.8) {}",
            pass(r >= 0.8)
        );
        anyhow::Ok(())
    })
    .await??;

    // --- PauseJob with the audit trail on vs off ---
    let pause = work.path().join("pause.bin");
    std::fs::write(&pause, framed(&pb::PauseJobRequest { name: "metrics-sample".into() }))?;
    let (url_on, url_off) = (on.url(), off.url());
    let (p, n) = (pause.clone(), calls / 4);
    let total = tokio::task::spawn_blocking(move || {
        let op = format!("authorization: Bearer {OPERATOR_TOKEN}");
        let call = |u: &str, n| h2load_call(u, "/strata.v1.SchedulerService/PauseJob", &p, &[op.as_str()], n);
        call(&url_on, n / 10)?;
        call(&url_off, n / 10)?;
        let mut ratios = Vec::new();
        for (round, (a, o)) in alternating(rounds, || call(&url_on, n), || call(&url_off, n))?.into_iter().enumerate() {
            println!("  round {}: PauseJob with audit {a:.0} calls/s vs without {o:.0} calls/s → {:.2}", round + 1, a / o);
            ratios.push(a / o);
        }
        let r = median(ratios);
        println!(
            "PauseJob with the audit trail on vs off (PostgreSQL, h2load, 8 connections × 16 streams): median ratio {r:.2} over {rounds} rounds (target ≥ 0.8) {}",
            pass(r >= 0.8)
        );
        anyhow::Ok(n / 10 + n * rounds as u64)
    })
    .await??;
    // Every call succeeded and left its event (the calls answered before their event committed).
    let q = AuditQuery { method: Some("/strata.v1.SchedulerService/PauseJob".into()), ..Default::default() };
    let events = admin.audit_events(&q, total as usize + 10).await?;
    let ok = events.iter().filter(|e| e.code == "OK" && e.caller == "test-operator").count() as u64;
    anyhow::ensure!(ok == total, "{ok} audit events of PauseJob answered OK for {total} calls");
    println!("  audit events: {ok} of {total} PauseJob calls recorded OK");

    // --- revocation on one instance, refused on another ---
    let other_dir = work.path().join("other");
    let other = server(&cluster, &db_on, &other_dir, true).await?;
    let mut took = Vec::new();
    for _ in 0..rounds {
        let (t, secret) = admin.create_token("bench-revoke", Role::Viewer, &[], None).await?;
        let elsewhere = other.client_with(&secret).await;
        elsewhere.info().await?;
        let start = Instant::now();
        admin.revoke_token(&t.id).await?;
        while elsewhere.info().await.is_ok() {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "still accepted after 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took.push(start.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "revocation on one instance until another refuses the token: {} ms (token_cache_ttl 2 s)",
        took.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(" / ")
    );
    other.stop().await?;
    on.stop().await?;
    off.stop().await?;
    Ok(())
}
