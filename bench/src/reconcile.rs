//! Reconciliation of a `file://` store of many objects against its catalog: strata's
//! ReconcileObjects operation (a `strata-server` process on SQLite) vs the naive program that
//! holds everything — a bare directory walk plus one catalog query of the same keys, compared in
//! memory — measured in the same run, and the server's peak RSS growth during it; then, on the S3
//! server, the memory bound alone.

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use diesel::{Connection, RunQueryDsl, SqliteConnection, sql_types::Text};
use strata_client::{
    Client,
    operations::{OperationResult, OperationState},
};

use strata_tests::S3Server;

use crate::files::{RssSampler, ServerProcess, rss};

/// Objects that are in the store but not the catalog, and the reverse: a few, so that both
/// sides find something without the findings' own work dominating.
const ANOMALIES: usize = 10;

/// The key of object `i` (sorted like `i`).
fn key(i: usize) -> String {
    format!("blobs/obj-{i:08}")
}

#[derive(diesel::QueryableByName)]
struct Key {
    #[diesel(sql_type = Text)]
    object_key: String,
}

/// The catalog: a blob row for every object but the first ANOMALIES, plus ANOMALIES rows whose
/// object is missing. Written behind strata's back (the server has migrated the catalog already).
fn write_catalog(db: &Path, n: usize) -> anyhow::Result<()> {
    let mut c = SqliteConnection::establish(&db.display().to_string())?;
    c.transaction(|c| {
        for i in ANOMALIES..n + ANOMALIES {
            let k = if i < n { key(i) } else { format!("blobs/missing-{i:08}") };
            diesel::sql_query(
                "INSERT INTO strata_blobs (blake3, object_key, size_bytes, ref_count, created_at)
                 VALUES (printf('%064x', ?2), ?1, 1, 1, CURRENT_TIMESTAMP)",
            )
            .bind::<Text, _>(&k)
            .bind::<diesel::sql_types::BigInt, _>(i as i64)
            .execute(c)?;
        }
        Ok::<_, diesel::result::Error>(())
    })?;
    Ok(())
}

/// Runs one reconciliation and checks what it found; returns its time and the server's peak RSS
/// growth during it.
async fn reconcile_once(client: &Client, server: &ServerProcess, n: usize) -> anyhow::Result<(Duration, u64)> {
    let before = rss(server.pid());
    let sampler = RssSampler::start(server.pid());
    let t = Instant::now();
    let op = client.start_reconcile(false, Duration::from_secs(3600)).await?;
    let done = client.wait_operation(&op.id, Duration::from_millis(5)).await?;
    let took = t.elapsed();
    let peak = sampler.finish();
    anyhow::ensure!(done.state == OperationState::Succeeded, "reconcile ended {:?}", done);
    match done.result {
        OperationResult::Reconcile { objects_scanned, orphans, lost_content, .. }
            if objects_scanned == n as i64 && orphans == ANOMALIES as i64 && lost_content == ANOMALIES as i64 => {}
        other => anyhow::bail!("strata found {other:?}"),
    }
    Ok((took, peak.saturating_sub(before)))
}

/// What the naive program finds: (orphans, lost).
fn baseline(objects: &Path, db: &Path) -> anyhow::Result<(usize, usize)> {
    let mut listed = HashSet::new();
    for e in std::fs::read_dir(objects.join("blobs"))? {
        listed.insert(format!("blobs/{}", e?.file_name().to_string_lossy()));
    }
    let mut c = SqliteConnection::establish(&db.display().to_string())?;
    let catalog: HashSet<String> = diesel::sql_query("SELECT object_key FROM strata_blobs")
        .load::<Key>(&mut c)?
        .into_iter()
        .map(|k| k.object_key)
        .collect();
    Ok((listed.difference(&catalog).count(), catalog.difference(&listed).count()))
}

/// Runs the comparison `rounds` times over `n` objects and prints the median ratio.
pub(crate) async fn run(n: usize, rounds: usize) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("strata-bench-").tempdir_in(".")?;
    let w = work.path();
    let objects = w.join("objects");
    let server = ServerProcess::start(w, &format!("file://{}", objects.display()), &[]).await?;
    let client = Client::connect(server.url.clone()).await?;

    // The store: n objects, the first ANOMALIES of them unknown to the catalog; the catalog: a
    // blob row for every other object, plus ANOMALIES rows whose object is missing. Written
    // behind strata's back (the server has migrated the catalog already).
    let t = Instant::now();
    std::fs::create_dir_all(objects.join("blobs"))?;
    for i in 0..n {
        std::fs::write(objects.join(key(i)), b"x")?;
    }
    let db = w.join("strata.db");
    write_catalog(&db, n)?;
    println!("{n} objects and {n} catalog rows written in {:.1} s", t.elapsed().as_secs_f64());
    // Warm the page cache of the directory and the database for both sides alike.
    baseline(&objects, &db)?;

    let (mut ratios, mut growth) = (Vec::new(), 0u64);
    for round in 0..rounds {
        let measure_baseline = || -> anyhow::Result<Duration> {
            let t = Instant::now();
            let found = baseline(&objects, &db)?;
            let took = t.elapsed();
            anyhow::ensure!(found == (ANOMALIES, ANOMALIES), "baseline found {found:?}");
            Ok(took)
        };
        let measure_strata = async || reconcile_once(&client, &server, n).await;
        // Alternate which side goes first.
        let (base, (strata, g)) = if round % 2 == 0 {
            let b = measure_baseline()?;
            (b, measure_strata().await?)
        } else {
            let s = measure_strata().await?;
            (measure_baseline()?, s)
        };
        growth = growth.max(g);
        let ratio = base.as_secs_f64() / strata.as_secs_f64();
        println!(
            "  round {round}: strata {:.0} ms ({:.0} objects/s), baseline {:.0} ms: ratio {ratio:.2}; server RSS growth {:.1} MiB",
            strata.as_secs_f64() * 1e3,
            n as f64 / strata.as_secs_f64(),
            base.as_secs_f64() * 1e3,
            g as f64 / (1 << 20) as f64
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "reconcile {n} objects vs directory walk + one catalog query: median ratio {median:.2} (target ≥ 0.50) {}",
        if median >= 0.5 { "PASS" } else { "FAIL" }
    );
    println!(
        "server peak RSS growth during reconcile: {:.1} MiB (target ≤ 64) {}",
        growth as f64 / (1 << 20) as f64,
        if growth <= 64 << 20 { "PASS" } else { "FAIL" }
    );
    drop(client);
    drop(server);
    s3_memory(w, n).await
}

/// The same reconciliation with the objects in the S3 server (s3s-fs, in this process): its
/// memory bound only. s3s-fs walks and sorts the whole bucket for every page it lists, which would
/// dominate any ratio.
async fn s3_memory(w: &Path, n: usize) -> anyhow::Result<()> {
    let s3 = S3Server::start("reconcile")?;
    let t = Instant::now();
    let blobs = s3.root.join(&s3.bucket).join("blobs");
    std::fs::create_dir_all(&blobs)?;
    for i in 0..n {
        std::fs::write(s3.root.join(&s3.bucket).join(key(i)), b"x")?;
    }
    let dir = w.join("s3");
    std::fs::create_dir_all(&dir)?;
    let server = ServerProcess::start(&dir, &s3.url(), &[]).await?;
    let client = Client::connect(server.url.clone()).await?;
    write_catalog(&dir.join("strata.db"), n)?;
    println!("S3: {n} objects and {n} catalog rows written in {:.1} s", t.elapsed().as_secs_f64());
    let (took, growth) = reconcile_once(&client, &server, n).await?;
    println!(
        "S3: reconcile of {n} objects in {:.1} s; server peak RSS growth {:.1} MiB (target ≤ 64) {}",
        took.as_secs_f64(),
        growth as f64 / (1 << 20) as f64,
        if growth <= 64 << 20 { "PASS" } else { "FAIL" }
    );
    Ok(())
}
