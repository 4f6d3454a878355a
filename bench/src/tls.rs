//! TLS on the gRPC port vs plaintext, both served by strata in this process (SQLite and a
//! `file://` object folder each), certificates from a throw-away CA:
//!
//! - 1 GiB uploads through the SDK over TLS vs plaintext (target ≥ 0.7×);
//! - unary GetInfo with `h2load` over TLS vs plaintext, same flags both sides, connections reused
//!   (target ≥ 0.8×).
//!
//! Rounds alternate which side goes first; the median ratio is judged.

use std::time::Duration;

use strata_client::{Client, TlsOptions};
use strata_tests::{TestServer, pki::Pki, server::test_config};

use crate::fleet::{alternating, h2load, median, pass, timed_upload};

async fn server(dir: &std::path::Path, tls: Option<&strata_tests::pki::Issued>) -> anyhow::Result<TestServer> {
    let mut config =
        test_config(format!("sqlite://{}", dir.join("strata.db").display()), Vec::new(), &dir.join("objects"));
    // h2load is one caller: measure TLS, not the per-caller limits.
    (config.rate_limit, config.max_calls_per_caller) = (0, 0);
    if let Some(t) = tls {
        config.tls_cert = Some(t.cert.clone());
        config.tls_key = Some(t.key.clone());
    }
    TestServer::start(config).await
}

pub(crate) async fn run(size_mib: u64, rounds: usize, calls: u64) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let pki = Pki::new(&work.path().join("pki"), "bench")?;
    let cert = pki.server("server")?;
    let (tls_dir, plain_dir) = (work.path().join("tls"), work.path().join("plain"));
    let secure = server(&tls_dir, Some(&cert)).await?;
    let plain = server(&plain_dir, None).await?;
    let trust = TlsOptions::from_files(Some(&pki.ca), None, None)?;
    let (over_tls, in_clear) = (Client::connect_with(secure.https_url(), &trust).await?, plain.client().await);

    // --- 1 GiB uploads ---
    let src = work.path().join("source.bin");
    crate::files::make_file(&src, size_mib << 20, 0x7157)?;
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let time = async |c: &Client| timed_upload(c, &src).await;
        let (t, p) = if round % 2 == 0 {
            let t = time(&over_tls).await?;
            (t, time(&in_clear).await?)
        } else {
            let p = time(&in_clear).await?;
            (time(&over_tls).await?, p)
        };
        let gbps = |d: Duration| (size_mib << 20) as f64 / d.as_secs_f64() / 1e9;
        let r = p.as_secs_f64() / t.as_secs_f64();
        println!(
            "  upload, round {}: TLS {:.2}s ({:.2} GB/s) vs plaintext {:.2}s ({:.2} GB/s) → {r:.2}",
            round + 1,
            t.as_secs_f64(),
            gbps(t),
            p.as_secs_f64(),
            gbps(p)
        );
        ratios.push(r);
    }
    let r = median(ratios);
    println!(
        "{size_mib} MiB upload over TLS: median ratio {r:.2} over {rounds} rounds (target ≥ 0.7) {}",
        pass(r >= 0.7)
    );

    // --- unary calls with h2load ---
    let body = work.path().join("getinfo.bin");
    std::fs::write(&body, [0u8, 0, 0, 0, 0])?;
    let (tls_url, plain_url) = (secure.https_url(), plain.url());
    let (b, n) = (body.clone(), calls);
    tokio::task::spawn_blocking(move || {
        let mut ratios = Vec::new();
        // Warm-up on both.
        h2load(&tls_url, &b, n / 10)?;
        h2load(&plain_url, &b, n / 10)?;
        let runs = alternating(rounds, || h2load(&tls_url, &b, n), || h2load(&plain_url, &b, n))?;
        for (round, (t, p)) in runs.into_iter().enumerate() {
            println!("  GetInfo, round {}: TLS {t:.0} calls/s vs plaintext {p:.0} calls/s → {:.2}", round + 1, t / p);
            ratios.push(t / p);
        }
        let r = median(ratios);
        println!(
            "unary GetInfo over TLS (h2load, 8 connections × 16 streams): median ratio {r:.2} over {rounds} rounds (target ≥ 0.8) {}",
            pass(r >= 0.8)
        );
        anyhow::Ok(())
    })
    .await??;
    secure.stop().await?;
    plain.stop().await?;
    Ok(())
}
