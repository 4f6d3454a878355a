//! VACUUM reclaims space after a mass delete; recommendations appear for a crafted
//! sequential-scan-heavy table, an unused index, dead-row bloat and a large table without policy.

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use strata_client::archive::ArchivePolicy;
use strata_tests::{PgCluster, TestServer};
use tonic::Code;

use crate::support::eventually;

#[tokio::test(flavor = "multi_thread")]
async fn vacuum_reclaims_and_recommendations_have_evidence() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("maint").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE bulk (id bigint PRIMARY KEY, pad text) WITH (autovacuum_enabled = off);
         INSERT INTO bulk SELECT i, repeat('x', 200) FROM generate_series(1, 100000) i;
         CREATE TABLE scanned (id bigint PRIMARY KEY, room int, at timestamptz, body text);
         INSERT INTO scanned SELECT i, i % 100, now(), md5(i::text) FROM generate_series(1, 30000) i;
         CREATE INDEX scanned_body_unused ON scanned (body);
         CREATE TABLE bloated (id bigint PRIMARY KEY, v text) WITH (autovacuum_enabled = off);
         INSERT INTO bloated SELECT i, 'v' FROM generate_series(1, 5000) i;
         DELETE FROM bloated WHERE id > 1000;
         DELETE FROM bulk WHERE id > 10000;",
    )
    .await
    .unwrap();
    c.batch_execute("ANALYZE scanned").await.unwrap();
    for _ in 0..15 {
        c.batch_execute("SELECT count(*) FROM scanned WHERE room = 5").await.unwrap();
    }
    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;

    // Recommendations (statistics reach the views within a second or so).
    let recs = eventually("recommendations", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let r = client.recommendations(1 << 20, 10_000).await.ok()?;
            let has = |kind: &str, target: &str| r.iter().any(|x| x.kind == kind && x.target == target);
            (has("index_candidate", "public.scanned")
                && has("unused_index", "public.scanned_body_unused")
                && has("vacuum", "public.bloated")
                && has("archive_or_partition", "public.scanned"))
            .then_some(r)
        }
    })
    .await;
    let idx = recs.iter().find(|r| r.kind == "index_candidate" && r.target == "public.scanned").unwrap();
    assert!(idx.evidence["seq_scan"].parse::<i64>().unwrap() >= 15, "{idx:?}");
    // The statistics views' own counters (they may count a load and an ANALYZE both).
    assert!(idx.evidence["live_rows"].parse::<i64>().unwrap() >= 30_000, "{idx:?}");
    let bloat = recs.iter().find(|r| r.kind == "vacuum" && r.target == "public.bloated").unwrap();
    assert_eq!(bloat.evidence["dead_rows"], "4000", "{bloat:?}");
    // The primary key is never "unused": it enforces uniqueness.
    assert!(!recs.iter().any(|r| r.kind == "unused_index" && r.target.ends_with("_pkey")), "{recs:?}");
    // A policy on the table answers the archive advice.
    client
        .create_policy(&ArchivePolicy {
            name: "scanned".into(),
            table_name: "scanned".into(),
            time_column: "at".into(),
            key_columns: vec!["id".into()],
            archive_after: Duration::from_secs(86_400),
            ..Default::default()
        })
        .await
        .unwrap();
    let recs = client.recommendations(1 << 20, 10_000).await.unwrap();
    assert!(!recs.iter().any(|r| r.kind == "archive_or_partition" && r.target == "public.scanned"), "{recs:?}");

    // VACUUM after deleting 90 % of a table's tail gives the space back.
    let e = client.run_maintenance(&["nope".into()], false, false).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    let done = client.run_maintenance(&["public.bulk".into()], false, false).await.unwrap();
    assert_eq!(done.len(), 1);
    let m = &done[0];
    assert_eq!(m.table_name, "bulk");
    assert!(m.reclaimed_bytes > m.size_before_bytes / 2, "{m:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_vacuum_shrinks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let mut c = crate::support::sqlite(&dir.path().join("strata.db")).await;
    c.batch_execute(
        "CREATE TABLE junk (id INTEGER PRIMARY KEY, pad TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)
         INSERT INTO junk SELECT i, hex(randomblob(100)) FROM s;
         DELETE FROM junk WHERE id > 1000;",
    )
    .await
    .unwrap();
    let done = server.client().await.run_maintenance(&[], false, false).await.unwrap();
    assert_eq!(done.len(), 1);
    assert!(done[0].reclaimed_bytes > 2_000_000, "{:?}", done[0]);
    server.stop().await.unwrap();
}

async fn count(
    c: &mut diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    sql: &str,
) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel_async::RunQueryDsl::get_result::<N>(diesel::sql_query(sql), c).await.unwrap().n
}

#[tokio::test(flavor = "multi_thread")]
async fn emergency_mode_starts_purges_and_retention_now() {
    use strata_client::archive::{PolicyMode, RunState};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let mut c = crate::support::sqlite(&dir.path().join("strata.db")).await;
    c.batch_execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT);
         CREATE TABLE logs (id INTEGER PRIMARY KEY, created_at TEXT, msg TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
         INSERT INTO events SELECT i, datetime('now', '-' || i || ' days') FROM s;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
         INSERT INTO logs SELECT i, datetime('now', '-' || i || ' days'), 'm' || i FROM s;",
    )
    .await
    .unwrap();
    let client = server.client().await;
    let base = |name: &str, table: &str, days: u64| ArchivePolicy {
        name: name.into(),
        table_name: table.into(),
        time_column: "created_at".into(),
        key_columns: vec!["id".into()],
        archive_after: Duration::from_secs(days * 86_400),
        ..Default::default()
    };
    client
        .create_policy(&ArchivePolicy { mode: PolicyMode::Purge, ..base("purge-events", "events", 100) })
        .await
        .unwrap();
    client
        .create_policy(&ArchivePolicy {
            delete_after: Some(Duration::from_secs(10 * 86_400)),
            ..base("logs", "logs", 200)
        })
        .await
        .unwrap();
    // Archive logs older than 200 days: their segments are then older than delete_after.
    let r = client.run_archive("logs").await.unwrap();
    assert_eq!(client.wait_archive_run(&r.id, Duration::from_millis(20)).await.unwrap().state, RunState::Succeeded);
    assert!(!client.list_segments("logs").await.unwrap().is_empty());

    let report = client.emergency_maintenance().await.unwrap();
    assert_eq!(report.started_runs.len(), 2, "{report:?}");
    assert!(report.skipped_policies.is_empty(), "{report:?}");
    for id in &report.started_runs {
        let r = client.wait_archive_run(id, Duration::from_millis(20)).await.unwrap();
        assert_eq!(r.state, RunState::Succeeded, "{r:?}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM events").await, 99, "rows 100 days and older purged");
    assert!(client.list_segments("logs").await.unwrap().is_empty(), "expired segments deleted");
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM logs").await,
        199,
        "archived rows stay archived, the rest in place"
    );
    server.stop().await.unwrap();
}

/// VACUUM takes as long as the table needs, not the pooled `statement_timeout`: with a pooled
/// timeout of 1 s, a VACUUM that needs longer (here it waits 2.5 s for a lock another session
/// holds, which counts against a statement timeout just as work does) succeeds under
/// `maintenance_timeout`, and fails when `maintenance_timeout` is shorter than it needs.
#[tokio::test(flavor = "multi_thread")]
async fn vacuum_runs_under_the_maintenance_timeout_not_the_pooled_one() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("maint_timeout").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute("CREATE TABLE slow (id bigint PRIMARY KEY, pad text); INSERT INTO slow SELECT i, 'x' FROM generate_series(1, 1000) i;")
        .await
        .unwrap();
    let config = |maintenance: Duration| {
        let mut config = strata_tests::server::test_config(cluster.primary_url(&db), vec![], dir.path());
        config.statement_timeout = Duration::from_secs(1);
        config.maintenance_timeout = maintenance;
        config
    };

    // Shorter than it needs: the statement is cancelled, said so, and nothing else is harmed.
    let server = TestServer::start(config(Duration::from_millis(1000))).await.unwrap();
    let client = server.client().await;
    let released = hold_vacuum_lock(cluster, &db).await;
    let e = client.run_maintenance(&["public.slow".into()], false, false).await.unwrap_err();
    // The operation fails with the statement timeout as its error.
    assert!(
        matches!(&e, strata_client::Error::Operation { state, message, .. } if state == "failed" && message.contains("statement timeout")),
        "{e}"
    );
    released.await.unwrap();
    server.stop().await.unwrap();

    // The default (hours): it waits for the lock, then vacuums, although the pooled timeout is 1 s.
    let server = TestServer::start(config(Duration::from_secs(6 * 3600))).await.unwrap();
    let client = server.client().await;
    let released = hold_vacuum_lock(cluster, &db).await;
    let done = client.run_maintenance(&["public.slow".into()], false, false).await.unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].duration >= Duration::from_secs(1), "it did wait for the lock: {done:?}");
    released.await.unwrap();
    server.stop().await.unwrap();
}

/// Holds the lock VACUUM needs on `slow` for 2.5 s (from now), then lets go: the handle ends then.
async fn hold_vacuum_lock(cluster: &PgCluster, db: &str) -> tokio::task::JoinHandle<()> {
    let mut h = cluster.connect(db).await.unwrap();
    h.batch_execute("BEGIN; LOCK TABLE slow IN SHARE UPDATE EXCLUSIVE MODE").await.unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        h.batch_execute("COMMIT").await.unwrap();
    })
}
