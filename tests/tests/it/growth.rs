//! GetGrowth fits stored snapshots; RecordSnapshot / ListSnapshots store and page them.

use std::time::Duration;

use diesel::RunQueryDsl as _;
use strata_client::types::{GrowthQuery, GrowthWindow};
use strata_tests::TestServer;

use crate::support::{PgFixture, eventually};

/// Samples every 6 hours for 3 days: the database grows 1 MiB/day; `orders` 100 000 bytes and
/// 1 000 rows a day; `archive` shrinks. One sample older than a week must be ignored.
fn synthetic_samples(ts: impl Fn(&str) -> String) -> Vec<String> {
    let mut sql = Vec::new();
    for i in 0..=12i64 {
        let hours_ago = 72 - 6 * i;
        let days = i as f64 * 0.25;
        let at = ts(&format!("{hours_ago} hours"));
        sql.push(format!(
            "INSERT INTO {{snapshots}} (id, taken_at, database_size_bytes) VALUES ({id}, {at}, {db})",
            id = 100 + i,
            db = 10_000_000 + (days * 1_048_576.0) as i64
        ));
        sql.push(format!(
            "INSERT INTO {{snapshot_tables}} (snapshot_id, schema_name, table_name, total_size_bytes, estimated_rows) VALUES ({id}, 'public', 'orders', {b}, {r})",
            id = 100 + i,
            b = 2_000_000 + (days * 100_000.0) as i64,
            r = 50_000 + (days * 1_000.0) as i64
        ));
        sql.push(format!(
            "INSERT INTO {{snapshot_tables}} (snapshot_id, schema_name, table_name, total_size_bytes, estimated_rows) VALUES ({id}, 'public', 'archive', {b}, 10)",
            id = 100 + i,
            b = 900_000 - (days * 10_000.0) as i64
        ));
    }
    // Ten days old: outside the week window.
    sql.push(format!(
        "INSERT INTO {{snapshots}} (id, taken_at, database_size_bytes) VALUES (99, {}, 1)",
        ts("240 hours")
    ));
    sql
}

fn check(g: &strata_client::types::Growth) {
    assert_eq!(g.window, GrowthWindow::Week);
    assert_eq!(g.database.sample_count, 13);
    assert!((g.database.bytes_per_day - 1_048_576.0).abs() < 5.0, "{}", g.database.bytes_per_day);
    assert_eq!(g.database.current_size_bytes, 10_000_000 + 3 * 1_048_576);
    // 20 MB target: (20_000_000 - 13_145_728) / 1 MiB per day ≈ 6.54 days.
    let days = g.database.days_until_target.unwrap();
    assert!((days - (20_000_000.0 - 13_145_728.0) / 1_048_576.0).abs() < 0.01, "{days}");
    let orders = g.table("orders").unwrap();
    assert!((orders.bytes_per_day - 100_000.0).abs() < 1.0);
    assert!((orders.rows_per_day - 1_000.0).abs() < 0.01);
    assert_eq!(orders.current_rows, 53_000);
    let archive = g.table("archive").unwrap();
    assert!((archive.bytes_per_day + 10_000.0).abs() < 1.0);
    assert_eq!(archive.days_until_target, None, "a shrinking table never reaches the target");
    // Fastest growing first.
    assert_eq!(g.tables[0].table_name, "orders");
}

#[tokio::test(flavor = "multi_thread")]
async fn growth_on_postgres_reads_fitted_trends() {
    let f = PgFixture::new("growth").await;
    let stmts = synthetic_samples(|ago| format!("(now() AT TIME ZONE 'utc') - interval '{ago}'"));
    let sql = stmts
        .join(";\n")
        .replace("{snapshots}", "strata.snapshots")
        .replace("{snapshot_tables}", "strata.snapshot_tables");
    f.sql(&sql).await;
    let client = f.server.client().await;
    let q = GrowthQuery { window: GrowthWindow::Week, target_size_bytes: Some(20_000_000), table_prefix: None };
    // Reads go to the replica: wait until it has replayed the inserts.
    let g = eventually("samples on the replica", Duration::from_secs(10), || {
        let (client, q) = (client.clone(), q.clone());
        async move { client.growth(q).await.ok().filter(|g| g.database.sample_count == 13) }
    })
    .await;
    check(&g);
    let only = client.growth(GrowthQuery { table_prefix: Some("ord".into()), ..q }).await.unwrap();
    assert_eq!(only.tables.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn growth_on_sqlite_reads_fitted_trends() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let mut c = crate::support::sqlite_sync(&dir.path().join("strata.db"));
    for s in synthetic_samples(|ago| format!("datetime('now', '-{ago}')")) {
        let s = s.replace("{snapshots}", "strata_snapshots").replace("{snapshot_tables}", "strata_snapshot_tables");
        diesel::sql_query(&s).execute(&mut c).unwrap();
    }
    let g = server
        .client()
        .await
        .growth(GrowthQuery { window: GrowthWindow::Week, target_size_bytes: Some(20_000_000), table_prefix: None })
        .await
        .unwrap();
    check(&g);
    // A month window sees the ten-day-old sample as well.
    let month =
        server.client().await.growth(GrowthQuery { window: GrowthWindow::Month, ..Default::default() }).await.unwrap();
    assert_eq!(month.database.sample_count, 14);
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_record_real_growth_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let client = server.client().await;
    let mut c = crate::support::sqlite_sync(&dir.path().join("strata.db"));
    diesel::sql_query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)").execute(&mut c).unwrap();
    let first = client.record_snapshot().await.unwrap();
    assert_eq!(first.table_count, 1);
    diesel::sql_query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO notes (body) SELECT printf('%0500d', i) FROM n",
    )
    .execute(&mut c)
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = client.record_snapshot().await.unwrap();
    assert!(second.database_size_bytes > first.database_size_bytes + 1_000_000);
    let third = client.record_snapshot().await.unwrap();

    let g = client.growth(GrowthQuery { window: GrowthWindow::Day, ..Default::default() }).await.unwrap();
    assert_eq!(g.database.sample_count, 3);
    assert!(g.database.bytes_per_day > 0.0);
    let notes = g.table("notes").unwrap();
    assert_eq!(notes.current_rows, 2000);
    assert!(notes.rows_per_day > 0.0);

    // Pages of one, newest first, then done.
    let p1 = client.list_snapshots(1, "").await.unwrap();
    assert_eq!(p1.snapshots.iter().map(|s| s.id).collect::<Vec<_>>(), [third.id]);
    assert_eq!(p1.snapshots[0].taken_at, third.taken_at);
    let p2 = client.list_snapshots(1, &p1.next_page_token).await.unwrap();
    assert_eq!(p2.snapshots[0].id, second.id);
    let p3 = client.list_snapshots(5, &p2.next_page_token).await.unwrap();
    assert_eq!(p3.snapshots.iter().map(|s| s.id).collect::<Vec<_>>(), [first.id]);
    assert!(p3.next_page_token.is_empty());
    let all = client.list_snapshots(0, "").await.unwrap();
    assert_eq!(all.snapshots.len(), 3);
    assert_eq!(all.snapshots[0].table_count, 1);
    let bad = client.list_snapshots(1, "garbage").await.unwrap_err();
    assert_eq!(bad.code(), Some(tonic::Code::InvalidArgument));
    let bad = client.list_snapshots(-1, "").await.unwrap_err();
    assert_eq!(bad.code(), Some(tonic::Code::InvalidArgument));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sampling_job_stores_snapshots_on_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = strata_tests::server::test_config(
        format!("sqlite://{}", dir.path().join("strata.db").display()),
        vec![],
        dir.path(),
    );
    config.run_scheduler = true;
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    let job = client.job("metrics-sample").await.unwrap();
    assert!(job.builtin && job.spec.enabled && job.spec.schedule == "*/5 * * * *", "{job:?}");
    let every_second =
        strata_client::scheduler::JobChanges { schedule: Some("* * * * * *".into()), ..Default::default() };
    client.update_job("metrics-sample", every_second).await.unwrap();
    let page = eventually("three sampled snapshots", Duration::from_secs(10), || {
        let c = client.clone();
        async move { c.list_snapshots(10, "").await.ok().filter(|p| p.snapshots.len() >= 3) }
    })
    .await;
    // Newest first, strictly increasing ids and times.
    for pair in page.snapshots.windows(2) {
        assert!(pair[0].id > pair[1].id && pair[0].taken_at > pair[1].taken_at);
    }
    server.stop().await.unwrap();
}
